//! The embedded store: one SQLite file in WAL mode. Writes go through a single connection, which
//! is how SQLite works anyway and spares every writer a busy-retry; reads use a pool of their own.

use std::collections::{HashMap, HashSet};
use std::ops::RangeInclusive;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use redline_core::series::Bucket;
use redline_core::wire::{
    CreateRun, FinishRun, IngestResult, MetricSummary, PointBatch, Run, RunStatus, Signal,
    UpdateRun, ValidSignal,
};
use redline_core::{MetricName, RunId};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Sqlite, Transaction};
use tokio::sync::broadcast;

use super::alerts_sql::alert_store;
use super::rows::{self, MetricRow, RUN_COLUMNS, RunRow, SIGNAL_COLUMNS, SignalRow};
use super::{
    MetricIds, OPS_COUNTS_SQL, OpsCounts, PendingRules, RunFilter, Store, StoreError, StoreResult,
    SummaryRow, TokenInfo, chunk, now, signal_channel, update_run_sql,
};

/// Rows per multi-row INSERT: 5 parameters each, far below SQLite's 32,766-parameter limit.
const ROWS_PER_STATEMENT: usize = 200;

#[derive(Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    metric_ids: MetricIds,
    signal_tx: broadcast::Sender<RunId>,
}

impl SqliteStore {
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
        Ok(Self {
            writer,
            reader,
            metric_ids: MetricIds::default(),
            signal_tx: signal_channel(),
        })
    }

    async fn run_pk(&self, tx: &mut Transaction<'_, Sqlite>, id: &RunId) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT pk FROM runs WHERE run_id = ?")
            .bind(id.as_str())
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::RunNotFound(id.clone()))
    }

    /// The run, read inside a write transaction (the single writer connection serialises it).
    async fn run_in(tx: &mut Transaction<'_, Sqlite>, id: &RunId) -> StoreResult<Run> {
        sqlx::query_as::<_, RunRow>(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?"))
            .bind(id.as_str())
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::RunNotFound(id.clone()))?
            .try_into()
    }

    async fn read_run_pk(&self, id: &RunId) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT pk FROM runs WHERE run_id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.reader)
            .await?
            .ok_or_else(|| StoreError::RunNotFound(id.clone()))
    }

    async fn metric_ids(&self, batch: &PointBatch) -> StoreResult<HashMap<String, i32>> {
        let (mut ids, missing) = self
            .metric_ids
            .split(batch.series.keys().map(MetricName::as_str));
        if missing.is_empty() {
            return Ok(ids);
        }
        let mut found = HashMap::new();
        for name in missing {
            sqlx::query("INSERT INTO metric_names (name) VALUES (?) ON CONFLICT (name) DO NOTHING")
                .bind(&name)
                .execute(&self.writer)
                .await?;
            let id: i32 = sqlx::query_scalar("SELECT id FROM metric_names WHERE name = ?")
                .bind(&name)
                .fetch_one(&self.writer)
                .await?;
            found.insert(name, id);
        }
        self.metric_ids.remember(&found);
        ids.extend(found);
        Ok(ids)
    }

    async fn pending(
        tx: &mut Transaction<'_, Sqlite>,
        pk: i64,
        id: &RunId,
    ) -> StoreResult<Vec<Signal>> {
        let rows: Vec<SignalRow> = sqlx::query_as(&format!(
            "SELECT {SIGNAL_COLUMNS} FROM signals WHERE run_pk = ? AND acked_at IS NULL ORDER BY id"
        ))
        .bind(pk)
        .fetch_all(&mut **tx)
        .await?;
        rows::signals(rows, id)
    }

    /// The run's primary key and the metric's id, or which of them does not exist.
    async fn series_key(&self, id: &RunId, metric: &MetricName) -> StoreResult<(i64, i32)> {
        let pk = self.read_run_pk(id).await?;
        let metric_id = sqlx::query_scalar(
            "SELECT m.metric_id FROM run_metrics m JOIN metric_names n ON n.id = m.metric_id \
             WHERE m.run_pk = ? AND n.name = ?",
        )
        .bind(pk)
        .bind(metric.as_str())
        .fetch_optional(&self.reader)
        .await?
        .ok_or_else(|| StoreError::SeriesNotFound {
            run: id.clone(),
            metric: metric.clone(),
        })?;
        Ok((pk, metric_id))
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn create_or_resume_run(&self, id: &RunId, req: &CreateRun) -> StoreResult<(Run, bool)> {
        let mut tx = self.writer.begin().await?;
        let t = now();
        let inserted: Option<RunRow> = sqlx::query_as(&format!(
            "INSERT INTO runs (run_id, name, project, tags, config, status, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, 'running', ?, ?) ON CONFLICT (run_id) DO NOTHING \
             RETURNING {RUN_COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(req.name.as_deref().unwrap_or(id.as_str()))
        .bind(req.project_or_default())
        .bind(Json(&req.tags))
        .bind(Json(req.config.clone().unwrap_or_else(|| serde_json::json!({}))))
        .bind(t)
        .bind(t)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = inserted {
            let pk = self.run_pk(&mut tx, id).await?;
            Self::pin_rule_sets(&mut tx, pk, req).await?;
            tx.commit().await?;
            return Ok((row.try_into()?, true));
        }
        let existing = Self::run_in(&mut tx, id).await?;
        rows::check_resume(&existing, req.project_or_default())?;
        let row: RunRow = sqlx::query_as(&format!(
            "UPDATE runs SET status = 'running', status_reason = NULL, finished_at = NULL, \
             updated_at = ? WHERE run_id = ? RETURNING {RUN_COLUMNS}"
        ))
        .bind(t)
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((row.try_into()?, false))
    }

    async fn run(&self, id: &RunId) -> StoreResult<Run> {
        sqlx::query_as::<_, RunRow>(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?"))
            .bind(id.as_str())
            .fetch_optional(&self.reader)
            .await?
            .ok_or_else(|| StoreError::RunNotFound(id.clone()))?
            .try_into()
    }

    async fn list_runs(&self, f: &RunFilter) -> StoreResult<Vec<Run>> {
        let rows: Vec<RunRow> = sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE (?1 IS NULL OR project = ?1) \
             AND (?2 IS NULL OR status = ?2) \
             AND (?5 IS NULL OR EXISTS (SELECT 1 FROM json_each(tags) WHERE value = ?5)) \
             ORDER BY {} LIMIT ?3 OFFSET ?4",
            f.sort.order_by()
        ))
        .bind(f.project.as_deref())
        .bind(f.status.map(RunStatus::as_str))
        .bind(i64::from(f.limit))
        .bind(i64::from(f.offset))
        .bind(f.tag.as_deref())
        .fetch_all(&self.reader)
        .await?;
        rows::runs(rows)
    }

    async fn finish_run(&self, id: &RunId, req: &FinishRun) -> StoreResult<Run> {
        let mut tx = self.writer.begin().await?;
        let run = Self::run_in(&mut tx, id).await?;
        let status = RunStatus::from(req.status);
        if !rows::check_finish(&run, status)? {
            return Ok(run);
        }
        let t = now();
        let row: RunRow = sqlx::query_as(&format!(
            "UPDATE runs SET status = ?, status_reason = ?, finished_at = ?, updated_at = ? \
             WHERE run_id = ? RETURNING {RUN_COLUMNS}"
        ))
        .bind(status.as_str())
        .bind(req.reason.as_deref())
        .bind(t)
        .bind(t)
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        row.try_into()
    }

    async fn update_run(&self, id: &RunId, req: &UpdateRun) -> StoreResult<Run> {
        sqlx::query_as::<_, RunRow>(&update_run_sql())
            .bind(id.as_str())
            .bind(req.name.as_deref())
            .bind(req.tags.as_ref().map(Json))
            .bind(now())
            .fetch_optional(&self.writer)
            .await?
            .ok_or_else(|| StoreError::RunNotFound(id.clone()))?
            .try_into()
    }

    async fn delete_run(&self, id: &RunId) -> StoreResult<()> {
        // One statement, so one transaction: the cascades run inside it.
        let gone = sqlx::query("DELETE FROM runs WHERE run_id = ?")
            .bind(id.as_str())
            .execute(&self.writer)
            .await?
            .rows_affected();
        if gone == 0 {
            return Err(StoreError::RunNotFound(id.clone()));
        }
        Ok(())
    }

    async fn ops_counts(&self) -> StoreResult<OpsCounts> {
        Ok(sqlx::query_as(OPS_COUNTS_SQL)
            .fetch_one(&self.reader)
            .await?)
    }

    async fn ingest(
        &self,
        id: &RunId,
        batch: &PointBatch,
        rules: &dyn PendingRules,
    ) -> StoreResult<IngestResult> {
        let ids = self.metric_ids(batch).await?;
        let mut tx = self.writer.begin().await?;
        let pk = self.run_pk(&mut tx, id).await?;
        // Few statements per batch whatever its size: each statement costs a round trip to
        // sqlx's SQLite worker thread, which dominates small batches.
        let touched: HashSet<(i32, i64)> = chunk::touched_chunks(batch, &ids).into_iter().collect();
        let mut existing = HashMap::new();
        if let (Some(lo), Some(hi)) = (
            touched.iter().map(|k| k.1).min(),
            touched.iter().map(|k| k.1).max(),
        ) {
            let metric_ids: Vec<i32> = ids.values().copied().collect();
            let rows = sqlx::query_as::<_, (i32, i64, Vec<u8>)>(
                "SELECT metric_id, chunk, data FROM series_chunks WHERE run_pk = ? \
                 AND metric_id IN (SELECT value FROM json_each(?)) AND chunk BETWEEN ? AND ?",
            )
            .bind(pk)
            .bind(Json(&metric_ids))
            .bind(lo)
            .bind(hi)
            .fetch_all(&mut *tx)
            .await?;
            existing.extend(
                rows.into_iter()
                    .filter(|(m, c, _)| touched.contains(&(*m, *c)))
                    .map(|(m, c, d)| ((m, c), d)),
            );
        }
        let plan = chunk::plan(batch, &ids, &existing).map_err(StoreError::Corrupt)?;
        for rows in plan.writes.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO series_chunks (run_pk, metric_id, chunk, points, data, summary) ",
            );
            q.push_values(rows, |mut b, w| {
                b.push_bind(pk)
                    .push_bind(w.metric_id)
                    .push_bind(w.chunk)
                    .push_bind(w.points)
                    .push_bind(w.data.as_slice())
                    .push_bind(w.summary.as_slice());
            });
            q.push(
                " ON CONFLICT (run_pk, metric_id, chunk) \
                 DO UPDATE SET points = excluded.points, data = excluded.data, \
                 summary = excluded.summary",
            );
            q.build().execute(&mut *tx).await?;
        }
        for rows in plan.summaries.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO run_metrics (run_pk, metric_id, points, last_step, last_value_bits) ",
            );
            q.push_values(rows, |mut b, s| {
                b.push_bind(pk)
                    .push_bind(s.metric_id)
                    .push_bind(s.added)
                    .push_bind(s.last_step)
                    .push_bind(s.last_value.to_bits() as i64);
            });
            q.push(
                " ON CONFLICT (run_pk, metric_id) DO UPDATE SET \
                 points = points + excluded.points, \
                 last_value_bits = CASE WHEN excluded.last_step >= last_step \
                     THEN excluded.last_value_bits ELSE last_value_bits END, \
                 last_step = max(last_step, excluded.last_step)",
            );
            q.build().execute(&mut *tx).await?;
        }
        let last_step = plan.summaries.iter().map(|s| s.last_step).max();
        // Evaluation of a large batch has been running beside the writes above.
        let rules = rules.writes().await?;
        let created = Self::write_rules(&mut tx, pk, &rules, last_step).await?;
        let signals = Self::pending(&mut tx, pk, id).await?;
        tx.commit().await?;
        if created > 0 {
            let _ = self.signal_tx.send(id.clone());
        }
        Ok(IngestResult {
            new_points: plan.new_points,
            duplicate_points: plan.duplicate_points,
            signals,
        })
    }

    async fn metrics(&self, id: &RunId) -> StoreResult<Vec<MetricSummary>> {
        let pk = self.read_run_pk(id).await?;
        let rows: Vec<MetricRow> = sqlx::query_as(
            "SELECT n.name, m.points, m.last_step, m.last_value_bits FROM run_metrics m \
             JOIN metric_names n ON n.id = m.metric_id WHERE m.run_pk = ? ORDER BY n.name",
        )
        .bind(pk)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(MetricSummary::from).collect())
    }

    async fn read_series(
        &self,
        id: &RunId,
        metric: &MetricName,
        from: i64,
        to: i64,
        limit: usize,
    ) -> StoreResult<Vec<chunk::Point>> {
        let (pk, metric_id) = self.series_key(id, metric).await?;
        let mut conn = self.reader.acquire().await?;
        let chunks = sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT data FROM series_chunks WHERE run_pk = ? AND metric_id = ? \
             AND chunk BETWEEN ? AND ? ORDER BY chunk",
        )
        .bind(pk)
        .bind(metric_id)
        .bind(chunk::chunk_of(from))
        .bind(chunk::chunk_of(to))
        .fetch(&mut *conn);
        super::collect_range(chunks, from, to, limit).await
    }

    async fn chunk_summaries(
        &self,
        id: &RunId,
        metric: &MetricName,
        chunks: RangeInclusive<i64>,
    ) -> StoreResult<Vec<(i64, Bucket)>> {
        let (pk, metric_id) = self.series_key(id, metric).await?;
        let rows = sqlx::query_as::<_, SummaryRow>(
            "SELECT chunk, summary, CASE WHEN summary IS NULL THEN data END FROM series_chunks \
             WHERE run_pk = ? AND metric_id = ? AND chunk BETWEEN ? AND ? ORDER BY chunk",
        )
        .bind(pk)
        .bind(metric_id)
        .bind(chunks.start())
        .bind(chunks.end())
        .fetch_all(&self.reader)
        .await?;
        super::summaries_of(rows)
    }

    async fn create_signal(&self, id: &RunId, s: &ValidSignal) -> StoreResult<Signal> {
        let mut tx = self.writer.begin().await?;
        let run = Self::run_in(&mut tx, id).await?;
        rows::check_signal_target(&run)?;
        let row: SignalRow = sqlx::query_as(&format!(
            "INSERT INTO signals (run_pk, kind, name, value, keep_step, reason, source_rule, created_at) \
             VALUES ((SELECT pk FROM runs WHERE run_id = ?), ?, ?, ?, ?, ?, ?, ?) RETURNING {SIGNAL_COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(s.kind.as_str())
        .bind(s.hparam.as_ref().map(|h| h.0.as_str()))
        .bind(s.hparam.as_ref().map(|h| h.1))
        .bind(s.keep_step)
        .bind(&s.reason)
        .bind(s.source_rule.as_deref())
        .bind(now())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        // No receiver just means no stream is open.
        let _ = self.signal_tx.send(id.clone());
        row.into_signal(id)
    }

    async fn signals(
        &self,
        id: &RunId,
        after: i64,
        pending_only: bool,
    ) -> StoreResult<Vec<Signal>> {
        let pk = self.read_run_pk(id).await?;
        let rows: Vec<SignalRow> = sqlx::query_as(&format!(
            "SELECT {SIGNAL_COLUMNS} FROM signals WHERE run_pk = ? AND id > ? \
             AND (? = 0 OR acked_at IS NULL) ORDER BY id"
        ))
        .bind(pk)
        .bind(after)
        .bind(pending_only)
        .fetch_all(&self.reader)
        .await?;
        rows::signals(rows, id)
    }

    async fn ack_signal(
        &self,
        id: &RunId,
        signal: i64,
        step: i64,
        refused: Option<&str>,
    ) -> StoreResult<Signal> {
        let mut tx = self.writer.begin().await?;
        let pk = self.run_pk(&mut tx, id).await?;
        let current = sqlx::query_as::<_, SignalRow>(&format!(
            "SELECT {SIGNAL_COLUMNS} FROM signals WHERE id = ? AND run_pk = ?"
        ))
        .bind(signal)
        .bind(pk)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::SignalNotFound {
            run: id.clone(),
            signal,
        })?
        .into_signal(id)?;
        rows::check_ack(&current, step, refused)?;
        if current.applied_step.is_some() {
            return Ok(current);
        }
        let row: SignalRow = sqlx::query_as(&format!(
            "UPDATE signals SET acked_at = ?, applied_step = ?, refused = ? WHERE id = ? \
             RETURNING {SIGNAL_COLUMNS}"
        ))
        .bind(now())
        .bind(step)
        .bind(refused)
        .bind(signal)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        row.into_signal(id)
    }

    fn signal_events(&self) -> broadcast::Receiver<RunId> {
        self.signal_tx.subscribe()
    }

    async fn create_token(&self, name: &str, token_hash: &str) -> StoreResult<()> {
        let done = sqlx::query(
            "INSERT INTO api_tokens (name, token_hash, created_at) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(token_hash)
        .bind(now())
        .execute(&self.writer)
        .await?;
        rows::check_token_created(done.rows_affected(), name)
    }

    async fn token_is_active(&self, token_hash: &str) -> StoreResult<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM api_tokens WHERE token_hash = ? AND revoked_at IS NULL",
        )
        .bind(token_hash)
        .fetch_optional(&self.reader)
        .await?;
        Ok(found.is_some())
    }

    async fn tokens(&self) -> StoreResult<Vec<TokenInfo>> {
        let rows = sqlx::query_as::<_, rows::TokenRow>(
            "SELECT name, created_at, revoked_at FROM api_tokens ORDER BY name",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.into_iter().map(TokenInfo::from).collect())
    }

    async fn revoke_token(&self, name: &str) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, ?) WHERE name = ?",
        )
        .bind(now())
        .bind(name)
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::TokenNotFound(name.to_owned()));
        }
        Ok(())
    }
}

alert_store!(
    SqliteStore,
    Sqlite,
    writer: writer,
    reader: reader,
    claim: "UPDATE webhook_outbox SET next_attempt_at = $2 WHERE id IN (SELECT id FROM webhook_outbox \
         WHERE state = 'pending' AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT $3) \
         RETURNING id",
    same: "IS",
    greatest: "max"
);
