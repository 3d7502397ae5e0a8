//! Downsampling a series for reading: equal-width step buckets that keep each bucket's minimum,
//! maximum and last value, so a one-step spike (or a NaN) survives any zoom level.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::value;

/// One bucket of a downsampled series, covering steps `start..=end`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Bucket {
    /// First step the bucket covers.
    pub start: i64,
    /// Last step the bucket covers (inclusive).
    pub end: i64,
    /// Points in the bucket.
    pub count: u64,
    /// Smallest non-NaN value (±Infinity included); absent when every value is NaN.
    #[serde(with = "value::option", default)]
    #[schema(value_type = Option<crate::MetricValue>)]
    pub min: Option<f64>,
    /// Largest non-NaN value (±Infinity included); absent when every value is NaN.
    #[serde(with = "value::option", default)]
    #[schema(value_type = Option<crate::MetricValue>)]
    pub max: Option<f64>,
    /// Step of the bucket's last point.
    pub last_step: i64,
    /// Value of the bucket's last point.
    #[schema(value_type = crate::MetricValue)]
    #[serde(with = "value::plain")]
    pub last: f64,
    /// How many values in the bucket are NaN, so a NaN is never averaged or hidden away.
    pub nan_count: u64,
}

/// The step width of each bucket when `from..=to` is cut into `buckets` equal parts.
pub fn bucket_width(from: i64, to: i64, buckets: u32) -> i64 {
    let span = (to - from + 1).max(1);
    let n = i64::from(buckets.max(1));
    (span + n - 1) / n
}

/// Downsamples `points` (sorted by step, all within `from..=to`) into at most `buckets` buckets
/// of equal step width. Empty buckets are left out.
pub fn downsample(points: &[(i64, f64)], from: i64, to: i64, buckets: u32) -> Vec<Bucket> {
    let width = bucket_width(from, to, buckets);
    let mut out: Vec<Bucket> = Vec::new();
    for &(step, v) in points {
        debug_assert!((from..=to).contains(&step), "point outside the range");
        let index = (step - from) / width;
        let start = from + index * width;
        let same_bucket = out.last().is_some_and(|b| b.start == start);
        if !same_bucket {
            out.push(Bucket {
                start,
                end: (start + width - 1).min(to),
                count: 0,
                min: None,
                max: None,
                last_step: step,
                last: v,
                nan_count: 0,
            });
        }
        let b = out.last_mut().expect("a bucket was just pushed");
        b.count += 1;
        b.last_step = step;
        b.last = v;
        if v.is_nan() {
            b.nan_count += 1;
        } else {
            b.min = Some(b.min.map_or(v, |m| m.min(v)));
            b.max = Some(b.max.map_or(v, |m| m.max(v)));
        }
    }
    out
}

impl Bucket {
    /// The bucket of one point; `start` and `end` are the point's step.
    pub fn of_point(step: i64, v: f64) -> Self {
        let finite = (!v.is_nan()).then_some(v);
        Self {
            start: step,
            end: step,
            count: 1,
            min: finite,
            max: finite,
            last_step: step,
            last: v,
            nan_count: u64::from(v.is_nan()),
        }
    }

    /// The summary of `points` (sorted by step), spanning their first to last step.
    pub fn of_points(points: &[(i64, f64)]) -> Option<Self> {
        let (first, rest) = points.split_first()?;
        let mut b = Self::of_point(first.0, first.1);
        for &(step, v) in rest {
            b.absorb(&Self::of_point(step, v));
        }
        Some(b)
    }

    /// Folds `later` (whose steps all come after this bucket's) into this one.
    pub fn absorb(&mut self, later: &Self) {
        let pick = |a: Option<f64>, b: Option<f64>, f: fn(f64, f64) -> f64| match (a, b) {
            (Some(a), Some(b)) => Some(f(a, b)),
            (a, b) => a.or(b),
        };
        self.min = pick(self.min, later.min, f64::min);
        self.max = pick(self.max, later.max, f64::max);
        self.end = self.end.max(later.end);
        self.count += later.count;
        self.nan_count += later.nan_count;
        self.last_step = later.last_step;
        self.last = later.last;
    }
}

/// The width of step-aligned buckets (multiples of `align` steps) that cover `from..=to` in at
/// most `buckets` buckets. Aligned buckets can be built from per-chunk summaries without reading
/// the points.
pub fn aligned_width(from: i64, to: i64, buckets: u32, align: i64) -> i64 {
    let span = (to - from + 1).max(1);
    // A range not starting on a bucket boundary needs one bucket more than span / width.
    let n = i64::from(buckets.max(2)) - 1;
    let width = (span + n - 1) / n;
    (width + align - 1) / align * align
}

/// Folds `parts` (sorted by step, each inside one bucket of `width` steps counted from step 0)
/// into those buckets, clipped to `from..=to`.
pub fn rebucket(
    parts: impl IntoIterator<Item = Bucket>,
    from: i64,
    to: i64,
    width: i64,
) -> Vec<Bucket> {
    let mut out: Vec<Bucket> = Vec::new();
    for part in parts {
        let start = (part.start.div_euclid(width) * width).max(from);
        match out.last_mut() {
            Some(b) if b.start == start => b.absorb(&part),
            _ => out.push(Bucket {
                start,
                end: (part.start.div_euclid(width) * width + width - 1).min(to),
                ..part
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebucketing_summaries_matches_summarising_the_points() {
        let points: Vec<(i64, f64)> = (5..5_000)
            .map(|s| {
                (
                    s,
                    if s % 97 == 0 {
                        f64::NAN
                    } else {
                        (s as f64).sin()
                    },
                )
            })
            .collect();
        let width = aligned_width(5, 4_999, 4, 1024);
        assert_eq!(width, 2048);
        // Per-chunk summaries, folded, equal per-point buckets folded.
        let chunks = points
            .chunk_by(|a, b| a.0 / 1024 == b.0 / 1024)
            .filter_map(Bucket::of_points);
        let from_chunks = rebucket(chunks, 5, 4_999, width);
        let from_points = rebucket(
            points.iter().map(|&(s, v)| Bucket::of_point(s, v)),
            5,
            4_999,
            width,
        );
        assert_eq!(from_chunks, from_points);
        assert_eq!(from_chunks.len(), 3);
        assert_eq!((from_chunks[0].start, from_chunks[0].end), (5, 2047));
        assert_eq!((from_chunks[2].start, from_chunks[2].end), (4096, 4999));
        assert_eq!(from_chunks.iter().map(|b| b.count).sum::<u64>(), 4_995);
        assert_eq!(from_chunks[0].nan_count, 21);
    }

    #[test]
    fn a_single_step_spike_survives_downsampling() {
        let mut points: Vec<(i64, f64)> = (0..10_000).map(|s| (s, 1.0)).collect();
        points[4_321].1 = 1e9;
        points[7_000].1 = f64::NAN;
        let buckets = downsample(&points, 0, 9_999, 100);
        assert_eq!(buckets.len(), 100);
        assert!(
            buckets
                .iter()
                .all(|b| b.end - b.start + 1 == 100 && b.count == 100)
        );
        let spike = &buckets[43];
        assert_eq!(spike.max, Some(1e9));
        assert_eq!(spike.min, Some(1.0));
        assert_eq!(buckets[70].nan_count, 1);
        assert_eq!(buckets[70].max, Some(1.0));
        assert_eq!(buckets.iter().map(|b| b.count).sum::<u64>(), 10_000);
    }

    #[test]
    fn buckets_cover_uneven_ranges_and_skip_gaps() {
        let points = [(3, 1.0), (4, 2.0), (20, 3.0)];
        let buckets = downsample(&points, 3, 22, 3);
        assert_eq!(bucket_width(3, 22, 3), 7);
        assert_eq!(buckets.len(), 2);
        assert_eq!(
            (buckets[0].start, buckets[0].end, buckets[0].last),
            (3, 9, 2.0)
        );
        assert_eq!(
            (buckets[1].start, buckets[1].end, buckets[1].last_step),
            (17, 22, 20)
        );
    }

    #[test]
    fn a_bucket_of_only_nan_has_no_min_or_max() {
        let b = &downsample(&[(0, f64::NAN)], 0, 0, 10)[0];
        assert_eq!((b.min, b.max, b.nan_count), (None, None, 1));
    }
}
