//! The storage unit of a series: all points of one (run, metric) whose steps share a block of
//! [`CHUNK_STEPS`] consecutive steps, packed as little-endian `(i64 step, f64 value)` pairs sorted
//! by step. One row per chunk instead of one per point is what lets a batch of 100,000 points be
//! stored in about a hundred row writes, and a million-step series be read back from about a
//! thousand rows (docs/storage.md). Both stores use this module; only their SQL differs.

use std::collections::HashMap;
use std::ops::RangeInclusive;

use redline_core::series::Bucket;
use redline_core::wire::PointBatch;

/// log2 of the steps one chunk covers.
pub const CHUNK_SHIFT: u32 = 10;
/// Steps one chunk covers.
pub const CHUNK_STEPS: i64 = 1 << CHUNK_SHIFT;
const POINT_BYTES: usize = 16;

pub type Point = (i64, f64);

/// The chunk number holding `step`.
pub fn chunk_of(step: i64) -> i64 {
    step >> CHUNK_SHIFT
}

/// The first and last chunk numbers holding `steps`.
pub fn chunks_of(steps: &RangeInclusive<i64>) -> (i64, i64) {
    (chunk_of(*steps.start()), chunk_of(*steps.end()))
}

pub fn encode(points: &[Point]) -> Vec<u8> {
    let mut out = Vec::with_capacity(points.len() * POINT_BYTES);
    for &(step, v) in points {
        out.extend_from_slice(&step.to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Appends the points of `data` to `out`. Fails when the length is not a whole number of points.
pub fn decode_into(data: &[u8], out: &mut Vec<Point>) -> Result<(), String> {
    if !data.len().is_multiple_of(POINT_BYTES) {
        return Err(format!(
            "chunk of {} bytes is not a whole number of points",
            data.len()
        ));
    }
    out.reserve(data.len() / POINT_BYTES);
    for p in data.chunks_exact(POINT_BYTES) {
        let (s, v) = p.split_at(8);
        out.push((
            i64::from_le_bytes(s.try_into().expect("8 bytes")),
            f64::from_le_bytes(v.try_into().expect("8 bytes")),
        ));
    }
    Ok(())
}

const SUMMARY_BYTES: usize = 64;

/// A chunk's summary (its points as one [`Bucket`]), stored beside the points so a zoomed-out
/// read folds summaries instead of decoding every point. A missing min/max is stored as NaN
/// (the min and max of a bucket are never NaN).
pub fn encode_summary(b: &Bucket) -> Vec<u8> {
    let words = [
        b.start as u64,
        b.end as u64,
        b.count,
        b.min.unwrap_or(f64::NAN).to_bits(),
        b.max.unwrap_or(f64::NAN).to_bits(),
        b.last_step as u64,
        b.last.to_bits(),
        b.nan_count,
    ];
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

pub fn decode_summary(data: &[u8]) -> Result<Bucket, String> {
    if data.len() != SUMMARY_BYTES {
        return Err(format!(
            "chunk summary of {} bytes, expected {SUMMARY_BYTES}",
            data.len()
        ));
    }
    let w: Vec<u64> = data
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    let finite = |bits: u64| Some(f64::from_bits(bits)).filter(|v| !v.is_nan());
    Ok(Bucket {
        start: w[0] as i64,
        end: w[1] as i64,
        count: w[2],
        min: finite(w[3]),
        max: finite(w[4]),
        last_step: w[5] as i64,
        last: f64::from_bits(w[6]),
        nan_count: w[7],
    })
}

/// The summary of a stored chunk: from its summary column, or from its points for rows written
/// before summaries existed.
pub fn stored_summary(summary: Option<&[u8]>, data: Option<&[u8]>) -> Result<Bucket, String> {
    if let Some(s) = summary {
        return decode_summary(s);
    }
    let mut points = Vec::new();
    decode_into(data.unwrap_or_default(), &mut points)?;
    Bucket::of_points(&points).ok_or_else(|| "empty chunk".to_owned())
}

/// Merges `incoming` into `existing` (both sorted by step, no repeats). A step already stored
/// keeps its value: the first write wins, so a resent batch changes nothing.
/// Returns the merged points and how many of `incoming` were new. Written out rather than with
/// itertools' `merge_join_by`, which moves one point at a time: here the tails are copied whole,
/// so the usual case, a new chunk, is one `memcpy`.
fn merge(existing: &[Point], incoming: &[Point]) -> (Vec<Point>, usize) {
    let mut out = Vec::with_capacity(existing.len() + incoming.len());
    let (mut i, mut j, mut added) = (0, 0, 0);
    while i < existing.len() && j < incoming.len() {
        match existing[i].0.cmp(&incoming[j].0) {
            std::cmp::Ordering::Less => {
                out.push(existing[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(incoming[j]);
                j += 1;
                added += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(existing[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&existing[i..]);
    added += incoming.len() - j;
    out.extend_from_slice(&incoming[j..]);
    (out, added)
}

/// A chunk row to insert or replace.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkWrite {
    pub metric_id: i32,
    pub chunk: i64,
    pub points: i32,
    pub data: Vec<u8>,
    pub summary: Vec<u8>,
}

/// What the ingest of one batch adds to a series' summary row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SummaryUpdate {
    pub metric_id: i32,
    pub added: i64,
    pub last_step: i64,
    pub last_value: f64,
}

/// The writes one batch turns into, and its counts.
#[derive(Debug, Default)]
pub struct IngestPlan {
    pub writes: Vec<ChunkWrite>,
    pub summaries: Vec<SummaryUpdate>,
    pub new_points: u64,
    pub duplicate_points: u64,
}

/// The chunk keys a batch touches, per metric id, to fetch before planning.
pub fn touched_chunks(batch: &PointBatch, ids: &HashMap<String, i32>) -> Vec<(i32, i64)> {
    let mut keys = Vec::new();
    for (name, points) in &batch.series {
        let id = ids[name.as_str()];
        keys.extend(by_chunk(points).map(|(c, _)| (id, c)));
    }
    keys
}

/// A series' points (sorted by step, as a batch holds them) cut at chunk boundaries.
fn by_chunk(points: &[Point]) -> impl Iterator<Item = (i64, &[Point])> {
    points
        .chunk_by(|a, b| chunk_of(a.0) == chunk_of(b.0))
        .map(|c| (chunk_of(c[0].0), c))
}

/// Turns a batch into chunk writes, given the chunks it touches that are already stored.
pub fn plan(
    batch: &PointBatch,
    ids: &HashMap<String, i32>,
    existing: &HashMap<(i32, i64), Vec<u8>>,
) -> Result<IngestPlan, String> {
    let mut plan = IngestPlan {
        duplicate_points: batch.repeated_in_batch,
        ..IngestPlan::default()
    };
    let mut decoded = Vec::new();
    for (name, points) in &batch.series {
        let metric_id = ids[name.as_str()];
        let mut added_total = 0;
        let mut last: Option<Point> = None;
        for (chunk, incoming) in by_chunk(points) {
            decoded.clear();
            if let Some(data) = existing.get(&(metric_id, chunk)) {
                decode_into(data, &mut decoded)?;
            }
            let (merged, added) = merge(&decoded, incoming);
            plan.duplicate_points += (incoming.len() - added) as u64;
            if added > 0 {
                added_total += added;
                last = merged.last().copied();
                plan.writes.push(ChunkWrite {
                    metric_id,
                    chunk,
                    points: merged.len() as i32,
                    data: encode(&merged),
                    summary: encode_summary(
                        &Bucket::of_points(&merged).expect("a merge that added points"),
                    ),
                });
            }
        }
        if let Some((last_step, last_value)) = last {
            plan.new_points += added_total as u64;
            plan.summaries.push(SummaryUpdate {
                metric_id,
                added: added_total as i64,
                last_step,
                last_value,
            });
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redline_core::MetricName;

    #[test]
    fn codec_round_trips_non_finite_values_bit_for_bit() {
        let points = vec![(0, f64::NAN), (5, f64::INFINITY), (1023, -0.0), (7, 1e-310)];
        let mut back = Vec::new();
        decode_into(&encode(&points), &mut back).unwrap();
        for (a, b) in points.iter().zip(&back) {
            assert_eq!((a.0, a.1.to_bits()), (b.0, b.1.to_bits()));
        }
        assert!(decode_into(&[0; 15], &mut back).is_err());
    }

    #[test]
    fn summaries_round_trip_and_match_their_points() {
        let points = [(3, f64::NAN), (9, -2.0), (700, f64::INFINITY), (1000, 0.5)];
        let b = Bucket::of_points(&points).unwrap();
        assert_eq!(decode_summary(&encode_summary(&b)).unwrap(), b);
        assert_eq!(stored_summary(None, Some(&encode(&points))).unwrap(), b);
        let all_nan = Bucket::of_point(4, f64::NAN);
        let back = decode_summary(&encode_summary(&all_nan)).unwrap();
        assert_eq!((back.min, back.max, back.nan_count), (None, None, 1));
        assert!(decode_summary(&[0; 63]).is_err());
    }

    #[test]
    fn merge_keeps_the_first_value_and_counts_new_points() {
        let (merged, added) = merge(&[(1, 1.0), (3, 3.0)], &[(0, 0.0), (3, 99.0), (4, 4.0)]);
        assert_eq!(merged, vec![(0, 0.0), (1, 1.0), (3, 3.0), (4, 4.0)]);
        assert_eq!(added, 2);
    }

    #[test]
    fn a_plan_splits_at_chunk_boundaries_and_skips_unchanged_chunks() {
        let name = MetricName::parse("loss").unwrap();
        let mut batch = PointBatch::default();
        batch.series.insert(
            name,
            vec![(1020, 1.0), (1023, 2.0), (1024, 3.0), (2050, 4.0)],
        );
        let ids = HashMap::from([("loss".to_owned(), 7)]);
        assert_eq!(touched_chunks(&batch, &ids), vec![(7, 0), (7, 1), (7, 2)]);
        let existing = HashMap::from([((7, 0), encode(&[(1020, 9.0), (1023, 9.0)]))]);
        let plan = plan(&batch, &ids, &existing).unwrap();
        assert_eq!((plan.new_points, plan.duplicate_points), (2, 2));
        assert_eq!(
            plan.writes.iter().map(|w| w.chunk).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(
            plan.summaries,
            vec![SummaryUpdate {
                metric_id: 7,
                added: 2,
                last_step: 2050,
                last_value: 4.0
            }]
        );
    }
}
