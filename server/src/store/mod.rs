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
pub mod throwaway;

use std::collections::HashMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redline_core::series::Bucket;
use redline_core::wire::{
    CreateRun, FinishRun, IngestResult, MetricSummary, PointBatch, Run, RunStatus, Signal,
    UpdateRun, ValidSignal,
};
use redline_core::{MetricName, RunId};
use tokio::sync::broadcast;

pub use alerts::{AlertStore, PendingRules, RuleWrites};
pub use downsample::downsampled;
pub use sql::SqlStore;

pub type SqliteStore = SqlStore<sqlx::Sqlite>;
pub type PostgresStore = SqlStore<sqlx::Postgres>;

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

/// Where the data lives, parsed from `--database-url`.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err("sqlite URL has no file path: use sqlite://PATH".into());
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        Err(format!(
            "unsupported database URL {url:?}: use postgres://USER@HOST/DB or sqlite://PATH"
        ))
    }
}

impl fmt::Debug for DatabaseUrl {
    /// Never prints a password: neither the URL's own (`user:pw@`) nor a `password=` parameter.
    /// A URL that does not parse is not printed at all, since where its password sits is unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            Self::Postgres(url) => f.write_str(&redact_postgres(url)),
        }
    }
}

fn redact_postgres(raw: &str) -> String {
    const HIDDEN: &str = "***";
    let Ok(mut url) = url::Url::parse(raw) else {
        return "postgres://(a URL that does not parse; not shown)".to_owned();
    };
    if url.password().is_some() {
        // Only fails for URLs that cannot have a password, and this one has one.
        let _ = url.set_password(Some(HIDDEN));
    }
    if url.query_pairs().any(|(k, _)| k == "password") {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" { HIDDEN.into() } else { v };
                (k.into_owned(), v.into_owned())
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.into()
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
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

/// The orders runs can be listed in; every one ends on the insertion order, so pages are stable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Newest => "newest",
            Self::Oldest => "oldest",
            Self::Name => "name",
            Self::Updated => "updated",
            Self::Step => "step",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
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
    /// Points of one series with steps in `from..=to`, at most `limit`, in step order.
    async fn read_series(
        &self,
        id: &RunId,
        metric: &MetricName,
        from: i64,
        to: i64,
        limit: usize,
    ) -> StoreResult<Vec<chunk::Point>>;
    /// The summary of every stored chunk numbered within `chunks`, by chunk number.
    async fn chunk_summaries(
        &self,
        id: &RunId,
        metric: &MetricName,
        chunks: RangeInclusive<i64>,
    ) -> StoreResult<Vec<(i64, Bucket)>>;

    async fn create_signal(&self, id: &RunId, signal: &ValidSignal) -> StoreResult<Signal>;
    /// Signals with id above `after`, oldest first; only unacknowledged ones when `pending_only`.
    async fn signals(&self, id: &RunId, after: i64, pending_only: bool)
    -> StoreResult<Vec<Signal>>;
    /// Acknowledging again with the same step is a no-op; with another step it is a conflict.
    async fn ack_signal(
        &self,
        id: &RunId,
        signal: i64,
        step: i64,
        refused: Option<&str>,
    ) -> StoreResult<Signal>;
    /// Wakes on every new signal, with the run id; peers' signals too where the store can tell.
    fn signal_events(&self) -> broadcast::Receiver<RunId>;

    async fn create_token(&self, name: &str, token_hash: &str) -> StoreResult<()>;
    async fn token_is_active(&self, token_hash: &str) -> StoreResult<bool>;
    async fn tokens(&self) -> StoreResult<Vec<TokenInfo>>;
    async fn revoke_token(&self, name: &str) -> StoreResult<()>;
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
        DatabaseUrl::Sqlite(path) => Arc::new(SqliteStore::open(path).await?),
        DatabaseUrl::Postgres(url) => Arc::new(PostgresStore::connect(url).await?),
    })
}

/// Caches metric-name ids. Names are only ever added to `metric_names`, so a cached id stays right.
#[derive(Debug, Default)]
struct MetricIds(RwLock<HashMap<String, i32>>);

impl MetricIds {
    /// The ids of `names` known so far, and the names still to look up.
    fn split<'a>(
        &self,
        names: impl Iterator<Item = &'a str>,
    ) -> (HashMap<String, i32>, Vec<String>) {
        let cache = self.0.read().expect("metric id cache poisoned");
        let mut known = HashMap::new();
        let mut missing = Vec::new();
        for name in names {
            match cache.get(name) {
                Some(&id) => {
                    known.insert(name.to_owned(), id);
                }
                None => missing.push(name.to_owned()),
            }
        }
        (known, missing)
    }

    fn remember(&self, found: &HashMap<String, i32>) {
        let mut cache = self.0.write().expect("metric id cache poisoned");
        cache.extend(found.iter().map(|(k, v)| (k.clone(), *v)));
    }
}

fn signal_channel() -> broadcast::Sender<RunId> {
    broadcast::channel(1024).0
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

/// Decodes the chunk rows of a read as they arrive, keeping the points within `from..=to`, and
/// stops fetching once `limit` points are in hand.
async fn collect_range(
    mut chunks: impl futures::Stream<Item = Result<Vec<u8>, sqlx::Error>> + Unpin,
    from: i64,
    to: i64,
    limit: usize,
) -> StoreResult<Vec<chunk::Point>> {
    use futures::TryStreamExt;
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    while let Some(data) = chunks.try_next().await? {
        scratch.clear();
        chunk::decode_into(&data, &mut scratch).map_err(StoreError::Corrupt)?;
        out.extend(scratch.iter().filter(|p| (from..=to).contains(&p.0)));
        if out.len() >= limit {
            out.truncate(limit);
            break;
        }
    }
    Ok(out)
}

/// A chunk's number, its stored summary, and its points where it has no summary.
type SummaryRow = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

fn summaries_of(rows: Vec<SummaryRow>) -> StoreResult<Vec<(i64, Bucket)>> {
    rows.into_iter()
        .map(|(c, summary, data)| {
            chunk::stored_summary(summary.as_deref(), data.as_deref())
                .map(|b| (c, b))
                .map_err(StoreError::Corrupt)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::DatabaseUrl;

    #[test]
    fn a_database_url_never_prints_its_password() {
        let shown = |url: &str| DatabaseUrl::parse(url).unwrap().to_string();
        for (url, password) in [
            ("postgres://a:secret@host/db", "secret"),
            ("postgres://redline:pa:ss:word@db.internal:5432/r", "pa"),
            ("postgresql://u:p%40ss@h/db", "p%40ss"),
            (
                "postgres://u@h/db?password=hunter2&sslmode=require",
                "hunter2",
            ),
        ] {
            let s = shown(url);
            assert!(!s.contains(password), "{url} shown as {s}");
            assert!(s.contains("***"), "{s}");
        }
        assert_eq!(shown("postgres://u@h/db"), "postgres://u@h/db");
        assert!(shown("postgres://u@h/db?sslmode=require").contains("sslmode=require"));
    }
}
