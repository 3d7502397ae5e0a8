//! Request and response bodies of HTTP API v1. Field names and meanings are the protocol: the
//! OpenAPI document is generated from these types, and clients (the trainer) use them as is.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod alerts;

pub use alerts::*;

use crate::hparams::Steerable;
use crate::series::Bucket;
use crate::{MetricName, MetricValue, RuleSetName, RunId, value};

/// The largest step accepted: 2^53 − 1, the largest integer a JSON reader in a browser keeps exact.
pub const MAX_STEP: i64 = (1 << 53) - 1;
/// The most tags a run may carry.
pub const MAX_TAGS: usize = 64;
/// The longest tag, project, run name or signal reason text, in characters.
pub const MAX_TEXT: usize = 256;

/// A request field that failed validation: `field` is a JSON path into the body, such as
/// `steps[3].metrics.loss rate` or `tags[0]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, for people and for programs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_field`, `not_found`, `payload_too_large`.
    pub code: String,
    /// A sentence for people.
    pub message: String,
    /// The offending field as a JSON path, when one field is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

fn check_text(field: &str, s: &str) -> Result<(), FieldError> {
    if s.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    let len = s.chars().count();
    if len > MAX_TEXT {
        return Err(FieldError::new(
            field,
            format!("is {len} characters long; the limit is {MAX_TEXT}"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Refuses a NUL character anywhere in a JSON value, keys included, naming its path. PostgreSQL
/// cannot store one in text or JSON; refusing it here makes both stores answer the same.
fn check_no_nul(path: &str, value: &serde_json::Value) -> Result<(), FieldError> {
    let nul = |field: String| Err(FieldError::new(field, "must not contain a NUL character"));
    match value {
        serde_json::Value::String(s) if s.contains('\0') => nul(path.to_owned()),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_no_nul(&format!("{path}[{i}]"), v)),
        serde_json::Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            let field = format!("{path}.{k}");
            if k.contains('\0') {
                return nul(field.replace('\0', "\\u0000"));
            }
            check_no_nul(&field, v)
        }),
        _ => Ok(()),
    }
}

fn check_optional_text(field: &str, s: Option<&str>) -> Result<(), FieldError> {
    s.map_or(Ok(()), |s| check_text(field, s))
}

fn check_step(field: &str, step: i64) -> Result<(), FieldError> {
    if (0..=MAX_STEP).contains(&step) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("must be between 0 and {MAX_STEP}, got {step}"),
        ))
    }
}

// ---------------------------------------------------------------- runs

/// Lifecycle state of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
    Stopped,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Running, Self::Completed, Self::Failed, Self::Stopped]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// Body of `PUT /api/v1/runs/{run_id}`: creates the run, or resumes it when it exists.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    /// Display name; defaults to the run id.
    #[serde(default)]
    pub name: Option<String>,
    /// Project the run belongs to; defaults to `default`. Resuming under another project is refused.
    #[serde(default)]
    pub project: Option<String>,
    /// Free-form labels, each 1 to 256 characters, at most 64.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The training configuration, any JSON object. Kept from the first create; a resume does not replace it.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub config: Option<serde_json::Value>,
    /// The rule sets watching the run, in order; default `["presets"]`, `[]` for none. Pinned at
    /// their newest versions when the run is created; a resume keeps the pinned ones.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub rules: Option<Vec<RuleSetName>>,
}

/// The project a run lands in when none is given.
pub const DEFAULT_PROJECT: &str = "default";

impl CreateRun {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_optional_text("name", self.name.as_deref())?;
        check_optional_text("project", self.project.as_deref())?;
        check_tags(&self.tags)?;
        match &self.config {
            None => Ok(()),
            Some(config @ serde_json::Value::Object(_)) => check_no_nul("config", config),
            Some(_) => Err(FieldError::new("config", "must be a JSON object")),
        }
    }

    pub fn project_or_default(&self) -> &str {
        self.project.as_deref().unwrap_or(DEFAULT_PROJECT)
    }
}

fn check_tags(tags: &[String]) -> Result<(), FieldError> {
    if tags.len() > MAX_TAGS {
        return Err(FieldError::new(
            "tags",
            format!("has {} tags; the limit is {MAX_TAGS}", tags.len()),
        ));
    }
    for (i, tag) in tags.iter().enumerate() {
        check_text(&format!("tags[{i}]"), tag)?;
    }
    Ok(())
}

/// Body of `PATCH /api/v1/runs/{run_id}`: renames the run, replaces its tags, or both.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRun {
    /// The new display name; left as it is when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// The new tags, replacing all the old ones (`[]` removes them); left as they are when absent.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

impl UpdateRun {
    /// The same rules as [`CreateRun`]; and an update must change something.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.name.is_none() && self.tags.is_none() {
            return Err(FieldError::new(
                "name",
                "is required when tags are not given",
            ));
        }
        check_optional_text("name", self.name.as_deref())?;
        self.tags.as_deref().map_or(Ok(()), check_tags)
    }
}

/// A run as stored.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct Run {
    #[schema(value_type = String)]
    #[cfg_attr(feature = "sqlx", sqlx(rename = "run_id", try_from = "String"))]
    pub id: RunId,
    pub name: String,
    pub project: String,
    #[cfg_attr(feature = "sqlx", sqlx(json))]
    pub tags: Vec<String>,
    #[schema(value_type = Object)]
    #[cfg_attr(feature = "sqlx", sqlx(json))]
    pub config: serde_json::Value,
    #[cfg_attr(feature = "sqlx", sqlx(try_from = "String"))]
    pub status: RunStatus,
    /// Why the run ended, as given when it was finished.
    pub status_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Highest step stored for any metric, absent before the first point.
    pub last_step: Option<i64>,
}

/// One page of runs, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunList {
    pub runs: Vec<Run>,
}

/// A status a run can be finished with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinalStatus {
    Completed,
    Failed,
    Stopped,
}

impl From<FinalStatus> for RunStatus {
    fn from(s: FinalStatus) -> Self {
        match s {
            FinalStatus::Completed => Self::Completed,
            FinalStatus::Failed => Self::Failed,
            FinalStatus::Stopped => Self::Stopped,
        }
    }
}

/// Body of `POST /api/v1/runs/{run_id}/finish`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FinishRun {
    pub status: FinalStatus,
    #[serde(default)]
    pub reason: Option<String>,
}

impl FinishRun {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_optional_text("reason", self.reason.as_deref())
    }
}

// ---------------------------------------------------------------- steps

/// Body of `POST /api/v1/runs/{run_id}/steps`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepBatch {
    pub steps: Vec<StepRecord>,
}

/// One training step's metrics.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepRecord {
    /// The step number, 0 to 2^53 − 1.
    pub step: i64,
    /// Wall-clock time of the step, seconds since the Unix epoch; stored as the `_time` series.
    #[serde(
        default,
        with = "value::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<f64>)]
    pub time: Option<f64>,
    /// Metric name → value. Names: 1 to 128 characters of ASCII letters, digits and `_ - . /`,
    /// starting with a letter or digit; each at most once per step.
    #[serde(deserialize_with = "unique_keys")]
    pub metrics: BTreeMap<String, MetricValue>,
}

/// A JSON object whose keys must not repeat: serde keeps the last of `{"m": 1, "m": 2}`
/// silently, and which of the two values the client meant is anybody's guess.
fn unique_keys<'de, D>(de: D) -> Result<BTreeMap<String, MetricValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = BTreeMap<String, MetricValue>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of metric name to value")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = map.next_entry::<String, MetricValue>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!(
                        "metric {k:?} is given twice in one step"
                    )));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    de.deserialize_map(Visitor)
}

/// A validated batch, grouped by metric with each series sorted by step. Within a batch the first
/// value given for a (metric, step) wins, exactly as against values already stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PointBatch {
    pub series: BTreeMap<MetricName, Vec<(i64, f64)>>,
    /// Points dropped because the same batch repeated a (metric, step).
    pub repeated_in_batch: u64,
}

impl PointBatch {
    pub fn len(&self) -> usize {
        self.series.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.series.values().all(Vec::is_empty)
    }

    pub fn max_step(&self) -> Option<i64> {
        self.series
            .values()
            .filter_map(|s| s.last().map(|p| p.0))
            .max()
    }
}

impl StepBatch {
    /// Validates every step and metric name, naming the first offending field.
    pub fn into_points(self) -> Result<PointBatch, FieldError> {
        let mut series: BTreeMap<MetricName, Vec<(i64, f64)>> = BTreeMap::new();
        for (i, record) in self.steps.into_iter().enumerate() {
            check_step(&format!("steps[{i}].step"), record.step)?;
            if let Some(t) = record.time {
                if !t.is_finite() {
                    return Err(FieldError::new(
                        format!("steps[{i}].time"),
                        "must be a finite number of seconds since the Unix epoch",
                    ));
                }
                series
                    .entry(MetricName::time())
                    .or_default()
                    .push((record.step, t));
            }
            for (name, v) in record.metrics {
                // Names repeat on every step: validate each distinct name once. Reserved
                // names (`_time` is already a key) always take the validating path.
                if !name.starts_with('_')
                    && let Some(points) = series.get_mut(name.as_str())
                {
                    points.push((record.step, v.0));
                    continue;
                }
                let metric = MetricName::parse(name.as_str()).map_err(|e| {
                    FieldError::new(
                        format!("steps[{i}].metrics.{name}"),
                        format!("metric name {e}"),
                    )
                })?;
                series.insert(metric, vec![(record.step, v.0)]);
            }
        }
        let mut repeated_in_batch = 0;
        for points in series.values_mut() {
            // Stable sort keeps the first occurrence of a step first, so dedup keeps it.
            points.sort_by_key(|p| p.0);
            let before = points.len();
            points.dedup_by_key(|p| p.0);
            repeated_in_batch += (before - points.len()) as u64;
        }
        Ok(PointBatch {
            series,
            repeated_in_batch,
        })
    }
}

/// Answer to a step batch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IngestResult {
    /// Points stored by this request.
    pub new_points: u64,
    /// Points already stored (or repeated within the batch) and therefore left unchanged.
    pub duplicate_points: u64,
    /// Signals not yet acknowledged, oldest first: the trainer applies them at its next step boundary.
    pub signals: Vec<Signal>,
}

// ---------------------------------------------------------------- series

/// Summary of one series of a run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MetricSummary {
    pub name: String,
    pub points: u64,
    pub last_step: i64,
    #[serde(with = "value::plain")]
    #[schema(value_type = MetricValue)]
    pub last_value: f64,
}

/// The series a run has.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MetricList {
    pub metrics: Vec<MetricSummary>,
}

/// One stored point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SeriesPoint {
    pub step: i64,
    #[serde(with = "value::plain")]
    #[schema(value_type = MetricValue)]
    pub value: f64,
}

/// A series read back point by point.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RawSeries {
    pub metric: String,
    pub points: Vec<SeriesPoint>,
    /// Present when the answer was cut at `limit`: ask again with `from` set to this step.
    pub next_from: Option<i64>,
}

/// A series read back in equal-width step buckets.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DownsampledSeries {
    pub metric: String,
    pub from: i64,
    pub to: i64,
    pub bucket_width: i64,
    /// Non-empty buckets in step order.
    pub buckets: Vec<Bucket>,
}

// ---------------------------------------------------------------- signals

/// What a signal asks the trainer to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// Stop training; `keep_step`, when given, names the checkpoint to keep as best.
    Stop,
    /// Write a checkpoint now.
    Checkpoint,
    /// Set hyperparameter `name` to `value` (e.g. `beta`, `nll_alpha`).
    SetHparam,
}

impl SignalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Checkpoint => "checkpoint",
            Self::SetHparam => "set_hparam",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Stop, Self::Checkpoint, Self::SetHparam]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// Body of `POST /api/v1/runs/{run_id}/signals`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSignal {
    pub kind: SignalKind,
    /// Hyperparameter name, for `set_hparam` only.
    #[serde(default)]
    pub name: Option<String>,
    /// New hyperparameter value (finite), for `set_hparam` only.
    #[serde(default)]
    pub value: Option<f64>,
    /// For `stop` only: the step whose checkpoint the trainer should keep as best.
    #[serde(default)]
    pub keep_step: Option<i64>,
    /// Why, for people reading the run later.
    pub reason: String,
    /// The rule that raised it, when a rule did.
    #[serde(default)]
    pub source_rule: Option<String>,
}

/// A [`NewSignal`] whose fields agree with its kind.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSignal {
    pub kind: SignalKind,
    pub hparam: Option<(Steerable, f64)>,
    pub keep_step: Option<i64>,
    pub reason: String,
    pub source_rule: Option<String>,
}

impl NewSignal {
    pub fn validate(self) -> Result<ValidSignal, FieldError> {
        check_text("reason", &self.reason)?;
        check_optional_text("source_rule", self.source_rule.as_deref())?;
        let only_for = |field: &str, kind: &str| {
            FieldError::new(field, format!("is only allowed for kind {kind}"))
        };
        let hparam = if self.kind == SignalKind::SetHparam {
            let name = self
                .name
                .ok_or_else(|| FieldError::new("name", "is required for kind set_hparam"))?;
            let name = Steerable::parse(&name).map_err(|e| FieldError::new("name", e))?;
            let value = self
                .value
                .ok_or_else(|| FieldError::new("value", "is required for kind set_hparam"))?;
            let value = name.check(value).map_err(|e| FieldError::new("value", e))?;
            Some((name, value))
        } else {
            if self.name.is_some() {
                return Err(only_for("name", "set_hparam"));
            }
            if self.value.is_some() {
                return Err(only_for("value", "set_hparam"));
            }
            None
        };
        if let Some(step) = self.keep_step {
            if self.kind != SignalKind::Stop {
                return Err(only_for("keep_step", "stop"));
            }
            check_step("keep_step", step)?;
        }
        Ok(ValidSignal {
            kind: self.kind,
            hparam,
            keep_step: self.keep_step,
            reason: self.reason,
            source_rule: self.source_rule,
        })
    }
}

/// A signal as stored and delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct Signal {
    /// Increasing id; also the SSE event id, so `Last-Event-ID` resumes after it.
    pub id: i64,
    #[schema(value_type = String)]
    #[cfg_attr(feature = "sqlx", sqlx(try_from = "String"))]
    pub run_id: RunId,
    #[cfg_attr(feature = "sqlx", sqlx(try_from = "String"))]
    pub kind: SignalKind,
    pub name: Option<String>,
    pub value: Option<f64>,
    pub keep_step: Option<i64>,
    pub reason: String,
    pub source_rule: Option<String>,
    pub created_at: DateTime<Utc>,
    pub acked_at: Option<DateTime<Utc>>,
    /// The step at which the trainer applied it (or refused it, when `refused` is set).
    pub applied_step: Option<i64>,
    /// Why the trainer refused it; `null` while pending and when applied.
    pub refused: Option<String>,
}

/// The signals of a run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SignalList {
    pub signals: Vec<Signal>,
}

/// Body of `POST /api/v1/runs/{run_id}/signals/{signal_id}/ack`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckSignal {
    /// The training step at which the signal took effect, or at which the trainer refused it.
    pub step: i64,
    /// Set when the trainer could not apply the signal: why. The signal is then recorded as
    /// refused, not applied, and no chart marks it.
    #[serde(default)]
    pub refused: Option<String>,
}

impl AckSignal {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_step("step", self.step)?;
        check_optional_text("refused", self.refused.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(json: &str) -> Result<PointBatch, FieldError> {
        serde_json::from_str::<StepBatch>(json)
            .unwrap()
            .into_points()
    }

    #[test]
    fn updates_change_something_and_name_the_bad_field() {
        let u = |json: &str| serde_json::from_str::<UpdateRun>(json).unwrap().validate();
        assert!(u(r#"{"name":"b"}"#).is_ok());
        assert!(u(r#"{"tags":[]}"#).is_ok());
        assert_eq!(u("{}").unwrap_err().field, "name");
        assert_eq!(u(r#"{"name":" "}"#).unwrap_err().field, "name");
        assert_eq!(u(r#"{"tags":["a",""]}"#).unwrap_err().field, "tags[1]");
        let many = format!(r#"{{"tags":{:?}}}"#, vec!["t"; MAX_TAGS + 1]);
        assert_eq!(u(&many).unwrap_err().field, "tags");
    }

    #[test]
    fn batches_group_by_metric_and_keep_the_first_repeat() {
        let b = batch(
            r#"{"steps":[{"step":2,"time":10.5,"metrics":{"loss":1,"kl":"NaN"}},
                         {"step":1,"metrics":{"loss":2}},
                         {"step":2,"metrics":{"loss":3}}]}"#,
        )
        .unwrap();
        let loss = &b.series[&MetricName::parse("loss").unwrap()];
        assert_eq!(loss, &vec![(1, 2.0), (2, 1.0)]);
        assert!(b.series[&MetricName::parse("kl").unwrap()][0].1.is_nan());
        assert_eq!(b.series[&MetricName::time()], vec![(2, 10.5)]);
        assert_eq!(
            (b.repeated_in_batch, b.len(), b.max_step()),
            (1, 4, Some(2))
        );
    }

    #[test]
    fn bad_steps_and_names_are_named() {
        let e =
            batch(r#"{"steps":[{"step":0,"metrics":{}},{"step":-1,"metrics":{}}]}"#).unwrap_err();
        assert_eq!(e.field, "steps[1].step");
        let e = batch(r#"{"steps":[{"step":0,"metrics":{"bad name":1}}]}"#).unwrap_err();
        assert_eq!(e.field, "steps[0].metrics.bad name");
        assert!(e.message.contains("allowed are"), "{}", e.message);
        let e = batch(r#"{"steps":[{"step":0,"metrics":{"_time":1}}]}"#).unwrap_err();
        assert!(e.message.contains("reserved"));
        let e = batch(r#"{"steps":[{"step":0,"time":5,"metrics":{"_time":1}}]}"#).unwrap_err();
        assert!(
            e.message.contains("reserved"),
            "a client cannot write the time series through metrics"
        );
    }

    #[test]
    fn a_metric_given_twice_in_one_step_is_refused_not_overwritten() {
        let e =
            serde_json::from_str::<StepBatch>(r#"{"steps":[{"step":0,"metrics":{"m":1,"m":2}}]}"#)
                .unwrap_err();
        assert!(
            e.to_string().contains(r#"metric "m" is given twice"#),
            "{e}"
        );
        assert!(
            serde_json::from_str::<StepBatch>(r#"{"steps":[{"step":0,"metrics":{"m":1,"n":2}}]}"#)
                .is_ok()
        );
    }

    #[test]
    fn nul_characters_in_a_config_are_refused_with_their_path() {
        let create = |json: &str| serde_json::from_str::<CreateRun>(json).unwrap().validate();
        assert!(create(r#"{"config":{"a":{"b":["x"]}}}"#).is_ok());
        let e = create(r#"{"config":{"a":{"b":["x","y\u0000"]}}}"#).unwrap_err();
        assert_eq!(e.field, "config.a.b[1]");
        let e = create(r#"{"config":{"k\u0000":1}}"#).unwrap_err();
        assert_eq!(e.field, "config.k\\u0000");
        assert!(e.message.contains("NUL"), "{e:?}");
    }

    #[test]
    fn signals_must_agree_with_their_kind() {
        let s = |json: &str| serde_json::from_str::<NewSignal>(json).unwrap().validate();
        assert!(s(r#"{"kind":"set_hparam","name":"beta","value":0.2,"reason":"r"}"#).is_ok());
        assert!(s(r#"{"kind":"set_hparam","name":"lr_scale","value":0.5,"reason":"r"}"#).is_ok());
        // What the trainer cannot apply is refused here, naming the field, not acked later.
        let e = s(r#"{"kind":"set_hparam","name":"learning_rate","value":1e-4,"reason":"r"}"#)
            .unwrap_err();
        assert_eq!(e.field, "name");
        assert!(e.message.contains("beta, nll_alpha, lr_scale"), "{e:?}");
        let e = s(r#"{"kind":"set_hparam","name":"beta","value":-1,"reason":"r"}"#).unwrap_err();
        assert_eq!(e.field, "value");
        assert!(e.message.contains("greater than 0"), "{e:?}");
        assert_eq!(
            s(r#"{"kind":"set_hparam","name":"beta","reason":"r"}"#)
                .unwrap_err()
                .field,
            "value"
        );
        assert_eq!(
            s(r#"{"kind":"stop","name":"beta","reason":"r"}"#)
                .unwrap_err()
                .field,
            "name"
        );
        assert_eq!(
            s(r#"{"kind":"checkpoint","keep_step":3,"reason":"r"}"#)
                .unwrap_err()
                .field,
            "keep_step"
        );
        assert_eq!(
            s(r#"{"kind":"stop","reason":" "}"#).unwrap_err().field,
            "reason"
        );
        assert!(s(r#"{"kind":"stop","keep_step":40,"reason":"entropy turned"}"#).is_ok());
    }
}
