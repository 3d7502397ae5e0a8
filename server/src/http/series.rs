//! Reading series back: the list of a run's series, and one series raw or downsampled, as JSON or CSV.

use std::fmt::Write;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use redline_core::wire::{
    DownsampledSeries, FieldError, MAX_STEP, MetricList, RawSeries, SeriesPoint,
};
use redline_core::{MetricName, MetricValue};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Query, step_range};
use super::run_id;
use crate::error::Result;
use crate::state::AppState;
use crate::store::{SeriesRange, downsampled};
use serde::Deserialize;
use utoipa::ToSchema;

/// Points a raw read returns when no `limit` is given.
const DEFAULT_RAW_LIMIT: usize = 100_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_metrics))
        .routes(routes!(read_series))
}

/// The series of a run, with point counts and last values.
#[utoipa::path(get, path = "/runs/{run_id}/metrics", tag = "series",
    params(("run_id" = String, Path)),
    responses((status = 200, body = MetricList), (status = 404, body = redline_core::wire::ErrorBody)))]
async fn list_metrics(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<MetricList>> {
    Ok(Json(MetricList {
        metrics: state.store.metrics(&run_id(id)?).await?,
    }))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Json,
    Csv,
}

/// Which part of a series to read, and how.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ReadSeries {
    /// Series name; `_time` holds step wall-clock times.
    metric: String,
    /// First step, inclusive.
    #[param(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    // MAX_STEP (a test holds them equal)
    from: Option<i64>,
    /// Last step, inclusive.
    #[param(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    to: Option<i64>,
    /// Downsample to at most this many buckets.
    #[param(minimum = 1, maximum = 10_000)]
    buckets: Option<u32>,
    /// Raw reads: most points returned (default 100000).
    #[param(minimum = 1, maximum = 1_000_000)]
    limit: Option<usize>,
    /// json (default) or csv.
    #[param(inline)]
    format: Option<Format>,
}

/// One series: raw points in a step range (at most `limit`, with `next_from` to page on), or,
/// with `buckets`, downsampled to step buckets keeping min, max and last. Buckets have equal
/// widths; over wide ranges they are whole multiples of the 1,024-step storage chunk, aligned
/// to it, so the first and last may be cut short by the range.
#[utoipa::path(get, path = "/runs/{run_id}/series", tag = "series",
    params(("run_id" = String, Path), ReadSeries),
    responses(
        (status = 200, description = "RawSeries, or DownsampledSeries with `buckets`; text/csv with format=csv", body = RawSeries),
        (status = 400, body = redline_core::wire::ErrorBody),
        (status = 404, body = redline_core::wire::ErrorBody),
    ))]
async fn read_series(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ReadSeries>,
) -> Result<Response> {
    let id = run_id(id)?;
    let metric = MetricName::parse_readable(q.metric)
        .map_err(|e| FieldError::new("metric", format!("metric name {e}")))?;
    let (from, to, format) = (q.from, q.to, q.format.unwrap_or_default());
    step_range(from, to)?;
    let (lo, hi) = (from.unwrap_or(0), to.unwrap_or(MAX_STEP));
    if let Some(buckets) = q.buckets {
        if q.limit.is_some() {
            return Err(
                FieldError::new("limit", "applies to raw reads only, not with buckets").into(),
            );
        }
        let series = downsampled(state.store.as_ref(), &id, &metric, from, to, buckets).await?;
        return Ok(match format {
            Format::Json => Json(series).into_response(),
            Format::Csv => csv(&downsampled_csv(&series)),
        });
    }
    let limit = q.limit.unwrap_or(DEFAULT_RAW_LIMIT);
    let range = SeriesRange::new(&id, &metric, lo..=hi);
    let mut points = state.store.read_series(&range, limit + 1).await?;
    let next_from = (points.len() > limit).then(|| points[limit].0);
    points.truncate(limit);
    let series = RawSeries {
        metric: metric.to_string(),
        points: points
            .into_iter()
            .map(|(step, value)| SeriesPoint { step, value })
            .collect(),
        next_from,
    };
    Ok(match format {
        Format::Json => Json(series).into_response(),
        Format::Csv => csv(&raw_csv(&series)),
    })
}

fn csv(body: &str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
        body.to_owned(),
    )
        .into_response()
}

/// `step,value`, non-finite values spelled as in JSON (`NaN`, `Infinity`, `-Infinity`).
fn raw_csv(s: &RawSeries) -> String {
    let mut out = String::with_capacity(s.points.len() * 24 + 16);
    out.push_str("step,value\n");
    for p in &s.points {
        let _ = writeln!(out, "{},{}", p.step, MetricValue(p.value));
    }
    out
}

fn downsampled_csv(s: &DownsampledSeries) -> String {
    let cell = |v: Option<f64>| v.map(|v| MetricValue(v).to_string()).unwrap_or_default();
    let mut out = String::from("start,end,count,min,max,last_step,last,nan_count\n");
    for b in &s.buckets {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{}",
            b.start,
            b.end,
            b.count,
            cell(b.min),
            cell(b.max),
            b.last_step,
            MetricValue(b.last),
            b.nan_count
        );
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_documented_step_bounds_are_max_step() {
        crate::http::extract::tests::step_bounds_are_max_step::<super::ReadSeries>();
    }
}
