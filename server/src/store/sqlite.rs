//! The embedded store: one SQLite file in WAL mode. Writes go through a single connection, which
//! is how SQLite works anyway and spares every writer a busy-retry (and makes row locks
//! needless); reads use a pool of their own.

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use redline_core::RunId;
use sqlx::query_builder::Separated;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Sqlite};

use super::chunk::IngestPlan;
use super::exec::{ChunkKey, ChunkKeys, Dialect};
use super::{SqlStore, StoreError, StoreResult};

/// Rows per multi-row INSERT: 6 parameters each, far below SQLite's 32,766-parameter limit.
const ROWS_PER_STATEMENT: usize = 200;

impl SqlStore<Sqlite> {
    /// Opens the database file at `path`, creating it and its folder when missing, and migrates it.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Database(sqlx::Error::Configuration(
                    format!("cannot create {}: {e}", dir.display()).into(),
                ))
            })?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&writer).await?;
        // Readers map the file: a chart page reads thousands of chunk rows, and a read()
        // system call per page of them cost more than the reading.
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.pragma("mmap_size", "1073741824"))
            .await?;
        Ok(Self::new(writer, reader))
    }
}

impl Dialect for Sqlite {
    const BACKEND: &'static str = "sqlite";
    const LOCK: &'static str = "";
    const HAS_TAG: &'static str = "EXISTS (SELECT 1 FROM json_each(tags) WHERE value = $5)";
    const CLAIM: &'static str = "UPDATE webhook_outbox SET next_attempt_at = $2 WHERE id IN \
         (SELECT id FROM webhook_outbox WHERE state = 'pending' AND next_attempt_at <= $1 \
         ORDER BY next_attempt_at, id LIMIT $3) RETURNING id";

    fn elements(param: &str) -> String {
        format!("SELECT value FROM json_each({param})")
    }

    /// One statement over the batch's metrics and chunk range, filtered here: each statement
    /// costs a round trip to sqlx's SQLite worker thread, which dominates small batches.
    async fn read_chunks(
        c: &mut SqliteConnection,
        pk: i64,
        keys: &[ChunkKey],
    ) -> sqlx::Result<ChunkKeys> {
        let (Some(lo), Some(hi)) = (
            keys.iter().map(|k| k.1).min(),
            keys.iter().map(|k| k.1).max(),
        ) else {
            return Ok(ChunkKeys::new());
        };
        let mut metric_ids: Vec<i32> = keys.iter().map(|k| k.0).collect();
        metric_ids.dedup();
        let rows = sqlx::query_as::<_, (i32, i64, Vec<u8>)>(
            "SELECT metric_id, chunk, data FROM series_chunks WHERE run_pk = $1 \
             AND metric_id IN (SELECT value FROM json_each($2)) AND chunk BETWEEN $3 AND $4",
        )
        .bind(pk)
        .bind(Json(&metric_ids))
        .bind(lo)
        .bind(hi)
        .fetch_all(&mut *c)
        .await?;
        let touched: HashSet<&(i32, i64)> = keys.iter().collect();
        Ok(rows
            .into_iter()
            .filter(|(m, ch, _)| touched.contains(&(*m, *ch)))
            .map(|(m, ch, d)| ((m, ch), d))
            .collect())
    }

    /// Multi-row `INSERT … ON CONFLICT DO UPDATE`s of up to [`ROWS_PER_STATEMENT`] rows.
    async fn write_plan(c: &mut SqliteConnection, pk: i64, plan: &IngestPlan) -> sqlx::Result<()> {
        let chunks = (
            "INSERT INTO series_chunks (run_pk, metric_id, chunk, points, data, summary) ",
            " ON CONFLICT (run_pk, metric_id, chunk) DO UPDATE SET points = excluded.points, \
             data = excluded.data, summary = excluded.summary",
        );
        upsert(c, pk, chunks, &plan.writes, |mut b, w| {
            b.push_bind(w.metric_id)
                .push_bind(w.chunk)
                .push_bind(w.points);
            b.push_bind(w.data.as_slice())
                .push_bind(w.summary.as_slice());
        })
        .await?;
        let summaries = (
            "INSERT INTO run_metrics (run_pk, metric_id, points, last_step, last_value_bits) ",
            " ON CONFLICT (run_pk, metric_id) DO UPDATE SET points = points + excluded.points, \
             last_value_bits = CASE WHEN excluded.last_step >= last_step \
                 THEN excluded.last_value_bits ELSE last_value_bits END, \
             last_step = max(last_step, excluded.last_step)",
        );
        upsert(c, pk, summaries, &plan.summaries, |mut b, s| {
            b.push_bind(s.metric_id).push_bind(s.added);
            b.push_bind(s.last_step)
                .push_bind(s.last_value.to_bits() as i64);
        })
        .await
    }

    /// One server per file: its own broadcast is every listener there is.
    async fn notify(_: &mut SqliteConnection, _: &RunId) -> sqlx::Result<()> {
        Ok(())
    }
}

/// Upserts `rows` of the run `pk`, [`ROWS_PER_STATEMENT`] to a statement: the insert up to its
/// `VALUES`, the run's key, the values `bind` pushes for a row, then the conflict clause.
async fn upsert<'a, T>(
    c: &mut SqliteConnection,
    pk: i64,
    (insert, on_conflict): (&str, &str),
    rows: &'a [T],
    mut bind: impl FnMut(Separated<'_, 'a, Sqlite, &'static str>, &'a T) + Send,
) -> sqlx::Result<()> {
    for rows in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q = QueryBuilder::<Sqlite>::new(insert);
        q.push_values(rows, |mut b, row| {
            b.push_bind(pk);
            bind(b, row);
        });
        q.push(on_conflict);
        q.build().execute(&mut *c).await?;
    }
    Ok(())
}
