//! Persistence: one [`Store`] interface, implemented once in SQL ([`sql`], [`alerts_sql`]) over
//! SQLite (the embedded default) and PostgreSQL (the production store), whose differences are
//! the short [`exec::Dialect`]. The series layout both share is in [`chunk`].

pub mod alerts;
mod alerts_sql;
pub mod chunk;
mod downsample;
mod exec;
mod postgres;
mod rows;
mod sql;
mod sqlite;

use std::fmt;
use std::ops::RangeInclusive;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redline_core::series::Bucket;
use redline_core::wire::{
    AckSignal, CreateRun, FinishRun, IngestResult, MetricSummary, PointBatch, Run, RunStatus,
    Signal, UpdateRun, ValidSignal,
};
use redline_core::{MetricName, RunId};
use tokio::sync::broadcast;

pub use alerts::{AlertStore, PendingRules, RuleWrites};
pub use downsample::downsampled;
pub use sql::SqlStore;

use crate::config::DatabaseUrl;
use chunk::Point;

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("run {0} does not exist")]
    RunNotFound(RunId),
    #[error("run {run} has no series named {metric}")]
    SeriesNotFound { run: RunId, metric: MetricName },
    #[error("run {run} has no signal {signal}")]
    SignalNotFound { run: RunId, signal: i64 },
    #[error("no token named {0}")]
    TokenNotFound(String),
    #[error("no rule set named {0}")]
    RuleSetNotFound(String),
    #[error("no webhook named {0}")]
    WebhookNotFound(String),
    /// A field names something that does not exist (e.g. an unknown rule set).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// Another server evaluated this run's rules since this one last did; reload and retry.
    #[error("the run's rules were evaluated elsewhere")]
    RulesMoved,
    /// The request contradicts what is stored; the message says how.
    #[error("{0}")]
    Conflict(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Filters for listing runs.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub project: Option<String>,
    pub status: Option<RunStatus>,
    /// Runs carrying this tag.
    pub tag: Option<String>,
    pub sort: RunSort,
    pub limit: u32,
    pub offset: u32,
}

/// The orders runs can be listed in, newest first by default; every one ends on the insertion
/// order, so pages are stable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunSort {
    #[default]
    Newest,
    Oldest,
    Name,
    /// Most recently written first.
    Updated,
    /// Furthest step first.
    Step,
}

impl RunSort {
    pub const ALL: [Self; 5] = [
        Self::Newest,
        Self::Oldest,
        Self::Name,
        Self::Updated,
        Self::Step,
    ];

    /// The name a query gives it (serde reads the same names: `http::extract`'s tests check).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Newest => "newest",
            Self::Oldest => "oldest",
            Self::Name => "name",
            Self::Updated => "updated",
            Self::Step => "step",
        }
    }

    /// The ORDER BY clause.
    fn order_by(self) -> &'static str {
        match self {
            Self::Newest => "created_at DESC, pk DESC",
            Self::Oldest => "created_at ASC, pk ASC",
            Self::Name => "name ASC, pk DESC",
            Self::Updated => "updated_at DESC, pk DESC",
            Self::Step => "coalesce(last_step, -1) DESC, pk DESC",
        }
    }
}

/// A stored API token, without its secret.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct TokenInfo {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Everything Redline keeps. Implementations must make each call atomic: a failed call leaves
/// nothing half-written.
#[async_trait]
pub trait Store: AlertStore + Send + Sync + fmt::Debug + 'static {
    /// `sqlite` or `postgres`, for logs and benchmarks.
    fn backend(&self) -> &'static str;
    async fn ping(&self) -> StoreResult<()>;

    /// Creates the run, or resumes it (status back to running) when the id exists.
    /// Returns the run and whether it was created. A new run pins the newest versions of the
    /// rule sets `req.rules` names (default [`redline_core::rules::PRESETS_NAME`]).
    async fn create_or_resume_run(&self, id: &RunId, req: &CreateRun) -> StoreResult<(Run, bool)>;
    async fn run(&self, id: &RunId) -> StoreResult<Run>;
    async fn list_runs(&self, filter: &RunFilter) -> StoreResult<Vec<Run>>;
    /// For pages that list runs: the summaries of the series named in `metrics` and the signals
    /// of each of `ids`, in their order (empty for a run that does not exist), in a fixed number
    /// of statements however many runs.
    async fn run_details(&self, ids: &[RunId], metrics: &[&str]) -> StoreResult<Vec<RunDetails>>;
    /// Finishing again with the same status is a no-op; with another status it is a conflict.
    async fn finish_run(&self, id: &RunId, req: &FinishRun) -> StoreResult<Run>;
    /// Renames the run and/or replaces its tags, as `req` (validated) says.
    async fn update_run(&self, id: &RunId, req: &UpdateRun) -> StoreResult<Run>;
    /// Deletes the run and everything keyed to it, in one transaction: its series and their
    /// summaries, signals, pinned rule sets, rule events, and its alerts' queued messages and
    /// delivery log. The schema says what that is (every such table references `runs`, or a row
    /// that does, with `ON DELETE CASCADE`): a table added later cascades too, or makes the
    /// delete fail, and never leaves rows behind.
    async fn delete_run(&self, id: &RunId) -> StoreResult<()>;
    /// Store-wide figures for `/metrics`, read at scrape time.
    async fn ops_counts(&self) -> StoreResult<OpsCounts>;

    /// Stores the points not already stored and what the rules concluded about them, in one
    /// transaction, and returns the pending signals.
    async fn ingest(
        &self,
        id: &RunId,
        batch: &PointBatch,
        rules: &dyn PendingRules,
    ) -> StoreResult<IngestResult>;
    async fn metrics(&self, id: &RunId) -> StoreResult<Vec<MetricSummary>>;
    /// The points of the range, at most `limit`, in step order.
    async fn read_series(&self, range: &SeriesRange<'_>, limit: usize) -> StoreResult<Vec<Point>>;
    /// The summary of every stored chunk holding steps of the range, by chunk number.
    async fn chunk_summaries(&self, range: &SeriesRange<'_>) -> StoreResult<Vec<(i64, Bucket)>>;

    async fn create_signal(&self, id: &RunId, signal: &ValidSignal) -> StoreResult<Signal>;
    /// Signals with id above `after`, oldest first; only unacknowledged ones when `pending_only`.
    async fn signals(&self, id: &RunId, after: i64, pending_only: bool)
    -> StoreResult<Vec<Signal>>;
    /// Acknowledging again with the same step is a no-op; with another step it is a conflict.
    async fn ack_signal(&self, id: &RunId, signal: i64, ack: &AckSignal) -> StoreResult<Signal>;
    /// Wakes on every new signal, with the run id; peers' signals too where the store can tell.
    fn signal_events(&self) -> broadcast::Receiver<RunId>;

    async fn create_token(&self, name: &str, token_hash: &str) -> StoreResult<()>;
    async fn token_is_active(&self, token_hash: &str) -> StoreResult<bool>;
    async fn tokens(&self) -> StoreResult<Vec<TokenInfo>>;
    async fn revoke_token(&self, name: &str) -> StoreResult<()>;
}

/// Some steps of one series of a run.
#[derive(Debug, Clone)]
pub struct SeriesRange<'a> {
    pub run: &'a RunId,
    pub metric: &'a MetricName,
    pub steps: RangeInclusive<i64>,
}

impl<'a> SeriesRange<'a> {
    pub fn new(run: &'a RunId, metric: &'a MetricName, steps: RangeInclusive<i64>) -> Self {
        Self { run, metric, steps }
    }

    /// The same series over other steps.
    #[must_use]
    pub fn with_steps(&self, steps: RangeInclusive<i64>) -> Self {
        Self { steps, ..*self }
    }
}

/// Some of a run's series summaries, and its signals, as a page listing runs shows them.
#[derive(Debug, Default)]
pub struct RunDetails {
    pub metrics: Vec<MetricSummary>,
    pub signals: Vec<Signal>,
}

/// What `/metrics` reports from the store: shared by every server on the same database, so
/// these are read, not counted in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct OpsCounts {
    /// Unanswered signals of running runs (those of finished runs will never be answered).
    pub signals_pending: i64,
    /// Webhook messages waiting for a first or further attempt.
    pub outbox_pending: i64,
    /// Delivery attempts that failed and were to be retried.
    pub attempts_retried: i64,
    /// Delivery attempts that failed and were the message's last.
    pub attempts_failed: i64,
}

/// Opens (creating where needed) and migrates the store at `url`.
pub async fn connect(url: &DatabaseUrl) -> StoreResult<Arc<dyn Store>> {
    Ok(match url {
        DatabaseUrl::Sqlite(path) => Arc::new(SqlStore::<sqlx::Sqlite>::open(path).await?),
        DatabaseUrl::Postgres(url) => Arc::new(SqlStore::<sqlx::Postgres>::connect(url).await?),
    })
}
