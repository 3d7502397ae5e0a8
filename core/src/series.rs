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

#[cfg(test)]
mod tests {
    use super::*;

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
