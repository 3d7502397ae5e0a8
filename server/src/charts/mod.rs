//! The dashboard's charts: which ones a run page shows (the metric groups of REFERENCE.md), and
//! turning stored series into a drawn chart. Drawing is CPU work: callers run [`render`] off the
//! async executor.

mod render;

use futures::future::try_join_all;
use redline_core::catalogue::{self, CHARTS, EVAL_PREFIX};
use redline_core::wire::{MetricSummary, Run, Signal, SignalKind};
use redline_core::{MetricName, RunId};

pub use render::{Chart, Line, Marker, MarkerKind, format_value, render};

use crate::store::{Store, StoreError, StoreResult, downsampled};

/// One chart of a page: a group, or a single metric (every `eval/` series gets one).
#[derive(Debug, Clone, PartialEq)]
pub struct ChartKey {
    /// What the chart URL names: the group slug or the metric name.
    pub slug: String,
    pub title: String,
    pub metrics: Vec<MetricName>,
    pub log_y: bool,
}

impl ChartKey {
    fn of_group(g: &catalogue::Chart, stored: &[&str]) -> Option<Self> {
        let metrics: Vec<MetricName> = g
            .metrics()
            .filter(|m| stored.contains(&m.name))
            .filter_map(|m| MetricName::parse(m.name).ok())
            .collect();
        (!metrics.is_empty()).then(|| Self {
            slug: g.slug.to_owned(),
            title: g.heading(),
            metrics,
            log_y: g.log_y,
        })
    }

    /// One series' chart, titled with its unit when the catalogue knows the metric.
    pub fn of_metric(metric: MetricName) -> Self {
        let unit = catalogue::lookup(metric.as_str()).and_then(|m| m.unit.label());
        Self {
            slug: metric.to_string(),
            title: unit.map_or_else(|| metric.to_string(), |u| format!("{metric} ({u})")),
            metrics: vec![metric],
            log_y: false,
        }
    }
}

const HELD_OUT_SCORE: &str = catalogue::EVAL_SCORE.name;

/// The charts a run with these series shows, and the series no chart shows.
pub fn page_charts(metrics: &[MetricSummary]) -> (Vec<ChartKey>, Vec<String>) {
    let stored: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
    // The held-out score, when the task has one, is what the run is for: it comes first.
    let score = stored
        .contains(&HELD_OUT_SCORE)
        .then(|| MetricName::parse(HELD_OUT_SCORE).ok())
        .flatten()
        .map(ChartKey::of_metric);
    let mut charts: Vec<ChartKey> = score
        .into_iter()
        .chain(CHARTS.iter().filter_map(|g| ChartKey::of_group(g, &stored)))
        .collect();
    charts.extend(
        stored
            .iter()
            .filter(|m| m.starts_with(EVAL_PREFIX) && **m != HELD_OUT_SCORE)
            .filter_map(|m| MetricName::parse(*m).ok())
            .map(ChartKey::of_metric),
    );
    let charted = |m: &&str| {
        charts
            .iter()
            .any(|c| c.metrics.iter().any(|n| n.as_str() == *m))
    };
    let rest = stored
        .iter()
        .filter(|m| !charted(m))
        .map(|m| (*m).to_owned())
        .collect();
    (charts, rest)
}

/// The chart a URL names: a group of the run's series, or one series.
pub fn resolve(slug: &str, metrics: &[MetricSummary]) -> Option<ChartKey> {
    let stored: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
    if let Some(g) = CHARTS.iter().find(|g| g.slug == slug) {
        return ChartKey::of_group(g, &stored);
    }
    let metric = MetricName::parse_readable(slug).ok()?;
    stored.contains(&slug).then(|| ChartKey::of_metric(metric))
}

/// Draws charts on the blocking pool, all at once: drawing is CPU work and must not hold up the
/// async executor.
pub async fn draw(charts: Vec<Chart>) -> Result<Vec<String>, tokio::task::JoinError> {
    try_join_all(
        charts
            .into_iter()
            .map(|c| tokio::task::spawn_blocking(move || render(&c))),
    )
    .await
}

/// How a chart is drawn: step range, smoothing, axis, size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct View {
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub smoothing: f64,
    /// Overrides the chart's own choice of axis.
    pub log_y: Option<bool>,
    pub width: u32,
    pub height: u32,
}

impl Default for View {
    fn default() -> Self {
        Self {
            from: None,
            to: None,
            smoothing: 0.0,
            log_y: None,
            width: 460,
            height: 230,
        }
    }
}

impl View {
    /// One bucket per horizontal pixel of the plotting area.
    fn buckets(&self) -> u32 {
        self.width.saturating_sub(70).max(10)
    }

    fn steps(&self, last_step: Option<i64>) -> (i64, i64) {
        let from = self.from.unwrap_or(0);
        (from, self.to.unwrap_or(last_step.unwrap_or(0)).max(from))
    }
}

/// Signal markers: applied signals at the step they were applied (not those the trainer
/// refused), and the step a stop kept.
pub fn markers(signals: &[Signal]) -> Vec<Marker> {
    let mut out = Vec::new();
    for s in signals {
        if let Some(step) = s.applied_step.filter(|_| s.refused.is_none()) {
            let kind = if s.kind == SignalKind::Stop {
                MarkerKind::Stop
            } else {
                MarkerKind::Signal
            };
            out.push(Marker { step, kind });
        }
        if let Some(step) = s.keep_step {
            out.push(Marker {
                step,
                kind: MarkerKind::Best,
            });
        }
    }
    out
}

async fn line(
    store: &dyn Store,
    run: &RunId,
    metric: &MetricName,
    steps: (i64, i64),
    buckets: u32,
    label: String,
) -> StoreResult<Line> {
    let series = downsampled(store, run, metric, Some(steps.0), Some(steps.1), buckets).await;
    match series {
        Ok(s) => Ok(Line {
            label,
            buckets: s.buckets,
        }),
        // A compared run may lack the metric: it draws nothing.
        Err(StoreError::SeriesNotFound { .. }) => Ok(Line {
            label,
            buckets: Vec::new(),
        }),
        Err(e) => Err(e),
    }
}

/// A run page chart, with the run's markers.
pub async fn run_chart(
    store: &dyn Store,
    run: &Run,
    key: &ChartKey,
    view: &View,
    markers: Vec<Marker>,
) -> StoreResult<Chart> {
    let steps = view.steps(run.last_step);
    let legend = key.metrics.len() > 1;
    let lines = key
        .metrics
        .iter()
        .map(|m| line(store, &run.id, m, steps, view.buckets(), m.to_string()));
    Ok(Chart {
        title: key.title.clone(),
        lines: try_join_all(lines).await?,
        markers,
        steps,
        log_y: view.log_y.unwrap_or(key.log_y),
        smoothing: view.smoothing,
        size: (view.width, view.height),
        legend,
    })
}

/// One metric of several runs overlaid, labelled by run name.
pub async fn compare_chart(
    store: &dyn Store,
    runs: &[Run],
    metric: &MetricName,
    view: &View,
) -> StoreResult<Chart> {
    let steps = view.steps(runs.iter().filter_map(|r| r.last_step).max());
    let lines = runs.iter().map(|r| {
        let label = format!("{} ({})", r.name, r.id);
        line(store, &r.id, metric, steps, view.buckets(), label)
    });
    Ok(Chart {
        title: metric.to_string(),
        lines: try_join_all(lines).await?,
        markers: Vec::new(),
        steps,
        log_y: view.log_y.unwrap_or(false),
        smoothing: view.smoothing,
        size: (view.width, view.height),
        legend: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(name: &str) -> MetricSummary {
        MetricSummary {
            name: name.into(),
            points: 1,
            last_step: 0,
            last_value: 0.0,
        }
    }

    #[test]
    fn only_signals_the_trainer_applied_are_marked() {
        let signal = |id: i64, applied: Option<i64>, refused: Option<&str>| Signal {
            id,
            run_id: RunId::parse("r".to_owned()).unwrap(),
            kind: SignalKind::SetHparam,
            name: Some("beta".into()),
            value: Some(0.2),
            keep_step: None,
            reason: "r".into(),
            source_rule: None,
            created_at: chrono::Utc::now(),
            acked_at: applied.map(|_| chrono::Utc::now()),
            applied_step: applied,
            refused: refused.map(str::to_owned),
        };
        let marked = markers(&[
            signal(1, Some(5), None),
            signal(2, Some(7), Some("cannot")),
            signal(3, None, None),
        ]);
        let steps: Vec<i64> = marked.iter().map(|m| m.step).collect();
        assert_eq!(steps, [5]);
    }

    #[test]
    fn a_page_groups_what_the_run_has_and_lists_the_rest() {
        let stored: Vec<_> = [
            "loss",
            "rewards/chosen",
            "eval/score",
            "time/step_seconds",
            "grad_norm",
        ]
        .map(summary)
        .into();
        let (charts, rest) = page_charts(&stored);
        let slugs: Vec<&str> = charts.iter().map(|c| c.slug.as_str()).collect();
        assert_eq!(
            slugs,
            ["eval/score", "loss", "rewards", "grad_norm"],
            "the held-out score first"
        );
        assert_eq!(
            charts[2].metrics.len(),
            1,
            "only the stored members of a group"
        );
        assert!(charts[3].log_y);
        assert_eq!(rest, ["time/step_seconds"]);
        assert_eq!(resolve("rewards", &stored), Some(charts[2].clone()));
        assert_eq!(resolve("eval/score", &stored), Some(charts[0].clone()));
        assert_eq!(resolve("kl", &stored), None);
        assert_eq!(resolve("nope", &stored), None);
    }
}
