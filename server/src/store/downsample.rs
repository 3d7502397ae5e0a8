//! Downsampled reads. Narrow ranges are bucketed from their points; wide ones from the per-chunk
//! summaries (buckets a whole number of chunks wide), so a million-step series costs ~1,000 rows
//! of 64 bytes instead of 16 MB of points, and a one-step spike still sets its bucket's max.

use redline_core::series::{Bucket, aligned_width, bucket_width, downsample, rebucket};
use redline_core::wire::{DownsampledSeries, MAX_STEP};
use redline_core::{MetricName, RunId};

use super::chunk::CHUNK_STEPS;
use super::{SeriesRange, Store, StoreResult};

/// `metric` of run `id` over `from..=to` (the data's own range where not given), in at most
/// `buckets` buckets.
pub async fn downsampled(
    store: &dyn Store,
    id: &RunId,
    metric: &MetricName,
    from: Option<i64>,
    to: Option<i64>,
    buckets: u32,
) -> StoreResult<DownsampledSeries> {
    let (lo, hi) = (from.unwrap_or(0), to.unwrap_or(MAX_STEP));
    let range = SeriesRange::new(id, metric, lo..=hi);
    let summaries = store.chunk_summaries(&range).await?;
    let empty = |from, to| DownsampledSeries {
        metric: metric.to_string(),
        from,
        to,
        bucket_width: bucket_width(from, to, buckets),
        buckets: Vec::new(),
    };
    // Without an explicit range the buckets span the data, not the whole step space.
    let lo = from.unwrap_or_else(|| summaries.iter().map(|s| s.1.start).min().unwrap_or(lo));
    let hi = to.unwrap_or_else(|| summaries.iter().map(|s| s.1.end).max().unwrap_or(lo));
    if summaries.is_empty() {
        return Ok(empty(lo, hi));
    }
    if bucket_width(lo, hi, buckets) < CHUNK_STEPS {
        let points = store
            .read_series(&range.with_steps(lo..=hi), usize::MAX)
            .await?;
        return Ok(DownsampledSeries {
            buckets: downsample(&points, lo, hi, buckets),
            ..empty(lo, hi)
        });
    }
    let width = aligned_width(lo, hi, buckets, CHUNK_STEPS);
    let whole = |c: i64| c * CHUNK_STEPS >= lo && (c + 1) * CHUNK_STEPS - 1 <= hi;
    // The chunks cut by the range's ends contribute their points within it, one by one.
    let mut parts: Vec<Bucket> = Vec::with_capacity(summaries.len() + 2 * CHUNK_STEPS as usize);
    for (c, summary) in summaries {
        if whole(c) {
            parts.push(summary);
        } else {
            let first = (c * CHUNK_STEPS).max(lo);
            let last = ((c + 1) * CHUNK_STEPS - 1).min(hi);
            let points = store
                .read_series(&range.with_steps(first..=last), usize::MAX)
                .await?;
            parts.extend(points.iter().map(|&(s, v)| Bucket::of_point(s, v)));
        }
    }
    Ok(DownsampledSeries {
        metric: metric.to_string(),
        from: lo,
        to: hi,
        bucket_width: width,
        buckets: rebucket(parts, lo, hi, width),
    })
}
