//! The production store. Each batch is a handful of statements whatever its size: chunk rows are
//! read and written with `UNNEST` arrays. Ingest into one run is serialised by a row lock on the
//! run, so concurrent resends cannot both count a point as new. New signals are announced with
//! `NOTIFY`, so every server sharing the database wakes its open event streams.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::time::Duration;

use async_trait::async_trait;
use redline_core::series::Bucket;
use redline_core::wire::{
    CreateRun, FinishRun, IngestResult, MetricSummary, PointBatch, Run, RunStatus, Signal,
    UpdateRun, ValidSignal,
};
use redline_core::{MetricName, RunId};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};
use tokio::sync::broadcast;

use super::alerts_sql::alert_store;
use super::rows::{self, MetricRow, RUN_COLUMNS, RunRow, SIGNAL_COLUMNS, SignalRow};
use super::{
    MetricIds, OPS_COUNTS_SQL, OpsCounts, PendingRules, RunFilter, Store, StoreError, StoreResult,
    SummaryRow, TokenInfo, chunk, now, signal_channel, update_run_sql,
};

const SIGNAL_CHANNEL: &str = "redline_signals";

#[derive(Debug)]
pub struct PostgresStore {
    pool: PgPool,
    metric_ids: MetricIds,
    signal_tx: broadcast::Sender<RunId>,
}

impl PostgresStore {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        let signal_tx = signal_channel();
        tokio::spawn(relay_notifications(pool.clone(), signal_tx.clone()));
        Ok(Self {
            pool,
            metric_ids: MetricIds::default(),
            signal_tx,
        })
    }

    async fn run_pk(
        tx: &mut Transaction<'_, Postgres>,
        id: &RunId,
        lock: bool,
    ) -> StoreResult<i64> {
        let sql = if lock {
            "SELECT pk FROM runs WHERE run_id = $1 FOR UPDATE"
        } else {
            "SELECT pk FROM runs WHERE run_id = $1"
        };
        sqlx::query_scalar(sql)
            .bind(id.as_str())
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::RunNotFound(id.clone()))
    }

    async fn read_run_pk(&self, id: &RunId) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT pk FROM runs WHERE run_id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::RunNotFound(id.clone()))
    }

    /// The run's primary key and the metric's id, or which of them does not exist.
    async fn series_key(&self, id: &RunId, metric: &MetricName) -> StoreResult<(i64, i32)> {
        let pk = self.read_run_pk(id).await?;
        let metric_id = sqlx::query_scalar(
            "SELECT m.metric_id FROM run_metrics m JOIN metric_names n ON n.id = m.metric_id \
             WHERE m.run_pk = $1 AND n.name = $2",
        )
        .bind(pk)
        .bind(metric.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::SeriesNotFound {
            run: id.clone(),
            metric: metric.clone(),
        })?;
        Ok((pk, metric_id))
    }

    async fn locked_run(tx: &mut Transaction<'_, Postgres>, id: &RunId) -> StoreResult<Run> {
        sqlx::query_as::<_, RunRow>(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1 FOR UPDATE"
        ))
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::RunNotFound(id.clone()))?
        .try_into()
    }

    async fn metric_ids(&self, batch: &PointBatch) -> StoreResult<HashMap<String, i32>> {
        let (mut ids, missing) = self
            .metric_ids
            .split(batch.series.keys().map(MetricName::as_str));
        if missing.is_empty() {
            return Ok(ids);
        }
        sqlx::query(
            "INSERT INTO metric_names (name) SELECT * FROM UNNEST($1::text[]) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&missing)
        .execute(&self.pool)
        .await?;
        let found: HashMap<String, i32> = sqlx::query_as::<_, (String, i32)>(
            "SELECT name, id FROM metric_names WHERE name = ANY($1)",
        )
        .bind(&missing)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();
        self.metric_ids.remember(&found);
        ids.extend(found);
        Ok(ids)
    }
}

/// Forwards `NOTIFY redline_signals` from any server to this server's streams; reconnects on error.
async fn relay_notifications(pool: PgPool, tx: broadcast::Sender<RunId>) {
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(SIGNAL_CHANNEL).await?;
            loop {
                let n = l.recv().await?;
                if let Ok(run) = RunId::parse(n.payload()) {
                    let _ = tx.send(run);
                }
            }
            #[expect(unreachable_code, reason = "gives the async block its error type")]
            Ok::<(), sqlx::Error>(())
        };
        if let Err(e) = listener.await {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "signal listener lost its connection; reconnecting");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_or_resume_run(&self, id: &RunId, req: &CreateRun) -> StoreResult<(Run, bool)> {
        let mut tx = self.pool.begin().await?;
        let t = now();
        let inserted: Option<RunRow> = sqlx::query_as(&format!(
            "INSERT INTO runs (run_id, name, project, tags, config, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 'running', $6, $6) ON CONFLICT (run_id) DO NOTHING \
             RETURNING {RUN_COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(req.name.as_deref().unwrap_or(id.as_str()))
        .bind(req.project_or_default())
        .bind(Json(&req.tags))
        .bind(Json(req.config.clone().unwrap_or_else(|| serde_json::json!({}))))
        .bind(t)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = inserted {
            let pk = Self::run_pk(&mut tx, id, false).await?;
            Self::pin_rule_sets(&mut tx, pk, req).await?;
            tx.commit().await?;
            return Ok((row.try_into()?, true));
        }
        let existing = Self::locked_run(&mut tx, id).await?;
        rows::check_resume(&existing, req.project_or_default())?;
        let row: RunRow = sqlx::query_as(&format!(
            "UPDATE runs SET status = 'running', status_reason = NULL, finished_at = NULL, \
             updated_at = $1 WHERE run_id = $2 RETURNING {RUN_COLUMNS}"
        ))
        .bind(t)
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((row.try_into()?, false))
    }

    async fn run(&self, id: &RunId) -> StoreResult<Run> {
        sqlx::query_as::<_, RunRow>(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::RunNotFound(id.clone()))?
            .try_into()
    }

    async fn list_runs(&self, f: &RunFilter) -> StoreResult<Vec<Run>> {
        let rows: Vec<RunRow> = sqlx::query_as(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE ($1::text IS NULL OR project = $1) \
             AND ($2::text IS NULL OR status = $2) \
             AND ($5::text IS NULL OR tags @> jsonb_build_array($5::text)) \
             ORDER BY {} LIMIT $3 OFFSET $4",
            f.sort.order_by()
        ))
        .bind(f.project.as_deref())
        .bind(f.status.map(RunStatus::as_str))
        .bind(i64::from(f.limit))
        .bind(i64::from(f.offset))
        .bind(f.tag.as_deref())
        .fetch_all(&self.pool)
        .await?;
        rows::runs(rows)
    }

    async fn finish_run(&self, id: &RunId, req: &FinishRun) -> StoreResult<Run> {
        let mut tx = self.pool.begin().await?;
        let run = Self::locked_run(&mut tx, id).await?;
        let status = RunStatus::from(req.status);
        if !rows::check_finish(&run, status)? {
            return Ok(run);
        }
        let row: RunRow = sqlx::query_as(&format!(
            "UPDATE runs SET status = $1, status_reason = $2, finished_at = $3, updated_at = $3 \
             WHERE run_id = $4 RETURNING {RUN_COLUMNS}"
        ))
        .bind(status.as_str())
        .bind(req.reason.as_deref())
        .bind(now())
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
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::RunNotFound(id.clone()))?
            .try_into()
    }

    async fn delete_run(&self, id: &RunId) -> StoreResult<()> {
        // One statement, so one transaction: the cascades run inside it.
        let gone = sqlx::query("DELETE FROM runs WHERE run_id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?
            .rows_affected();
        if gone == 0 {
            return Err(StoreError::RunNotFound(id.clone()));
        }
        Ok(())
    }

    async fn ops_counts(&self) -> StoreResult<OpsCounts> {
        Ok(sqlx::query_as(OPS_COUNTS_SQL).fetch_one(&self.pool).await?)
    }

    async fn ingest(
        &self,
        id: &RunId,
        batch: &PointBatch,
        rules: &dyn PendingRules,
    ) -> StoreResult<IngestResult> {
        let ids = self.metric_ids(batch).await?;
        let mut tx = self.pool.begin().await?;
        let pk = Self::run_pk(&mut tx, id, true).await?;
        let (key_metrics, key_chunks): (Vec<i32>, Vec<i64>) =
            chunk::touched_chunks(batch, &ids).into_iter().unzip();
        let existing: HashMap<(i32, i64), Vec<u8>> = sqlx::query_as::<_, (i32, i64, Vec<u8>)>(
            "SELECT c.metric_id, c.chunk, c.data FROM series_chunks c \
                 JOIN UNNEST($2::int[], $3::bigint[]) AS k (metric_id, chunk) \
                 ON c.metric_id = k.metric_id AND c.chunk = k.chunk WHERE c.run_pk = $1",
        )
        .bind(pk)
        .bind(&key_metrics)
        .bind(&key_chunks)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(m, c, d)| ((m, c), d))
        .collect();
        let plan = chunk::plan(batch, &ids, &existing).map_err(StoreError::Corrupt)?;
        if !plan.writes.is_empty() {
            let metric_ids: Vec<i32> = plan.writes.iter().map(|w| w.metric_id).collect();
            let chunks: Vec<i64> = plan.writes.iter().map(|w| w.chunk).collect();
            let counts: Vec<i32> = plan.writes.iter().map(|w| w.points).collect();
            let data: Vec<&[u8]> = plan.writes.iter().map(|w| w.data.as_slice()).collect();
            let summaries: Vec<&[u8]> = plan.writes.iter().map(|w| w.summary.as_slice()).collect();
            sqlx::query(
                "INSERT INTO series_chunks (run_pk, metric_id, chunk, points, data, summary) \
                 SELECT $1, * FROM UNNEST($2::int[], $3::bigint[], $4::int[], $5::bytea[], $6::bytea[]) \
                 ON CONFLICT (run_pk, metric_id, chunk) \
                 DO UPDATE SET points = EXCLUDED.points, data = EXCLUDED.data, summary = EXCLUDED.summary",
            )
            .bind(pk)
            .bind(&metric_ids)
            .bind(&chunks)
            .bind(&counts)
            .bind(&data)
            .bind(&summaries)
            .execute(&mut *tx)
            .await?;

            let s = &plan.summaries;
            let metric_ids: Vec<i32> = s.iter().map(|s| s.metric_id).collect();
            let added: Vec<i64> = s.iter().map(|s| s.added).collect();
            let last_steps: Vec<i64> = s.iter().map(|s| s.last_step).collect();
            let last_bits: Vec<i64> = s.iter().map(|s| s.last_value.to_bits() as i64).collect();
            sqlx::query(
                "INSERT INTO run_metrics AS m (run_pk, metric_id, points, last_step, last_value_bits) \
                 SELECT $1, * FROM UNNEST($2::int[], $3::bigint[], $4::bigint[], $5::bigint[]) \
                 ON CONFLICT (run_pk, metric_id) DO UPDATE SET \
                 points = m.points + EXCLUDED.points, \
                 last_value_bits = CASE WHEN EXCLUDED.last_step >= m.last_step \
                     THEN EXCLUDED.last_value_bits ELSE m.last_value_bits END, \
                 last_step = GREATEST(m.last_step, EXCLUDED.last_step)",
            )
            .bind(pk)
            .bind(&metric_ids)
            .bind(&added)
            .bind(&last_steps)
            .bind(&last_bits)
            .execute(&mut *tx)
            .await?;
        }
        let last_step = plan.summaries.iter().map(|s| s.last_step).max();
        // Evaluation of a large batch has been running beside the writes above.
        let rules = rules.writes().await?;
        let created = Self::write_rules(&mut tx, pk, &rules, last_step).await?;
        if created > 0 {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(SIGNAL_CHANNEL)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        let pending: Vec<SignalRow> = sqlx::query_as(&format!(
            "SELECT {SIGNAL_COLUMNS} FROM signals WHERE run_pk = $1 AND acked_at IS NULL ORDER BY id"
        ))
        .bind(pk)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        if created > 0 {
            let _ = self.signal_tx.send(id.clone());
        }
        Ok(IngestResult {
            new_points: plan.new_points,
            duplicate_points: plan.duplicate_points,
            signals: rows::signals(pending, id)?,
        })
    }

    async fn metrics(&self, id: &RunId) -> StoreResult<Vec<MetricSummary>> {
        let pk = self.read_run_pk(id).await?;
        let rows: Vec<MetricRow> = sqlx::query_as(
            "SELECT n.name, m.points, m.last_step, m.last_value_bits FROM run_metrics m \
             JOIN metric_names n ON n.id = m.metric_id WHERE m.run_pk = $1 ORDER BY n.name",
        )
        .bind(pk)
        .fetch_all(&self.pool)
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
        let chunks = sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT data FROM series_chunks WHERE run_pk = $1 AND metric_id = $2 \
             AND chunk BETWEEN $3 AND $4 ORDER BY chunk",
        )
        .bind(pk)
        .bind(metric_id)
        .bind(chunk::chunk_of(from))
        .bind(chunk::chunk_of(to))
        .fetch(&self.pool);
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
             WHERE run_pk = $1 AND metric_id = $2 AND chunk BETWEEN $3 AND $4 ORDER BY chunk",
        )
        .bind(pk)
        .bind(metric_id)
        .bind(chunks.start())
        .bind(chunks.end())
        .fetch_all(&self.pool)
        .await?;
        super::summaries_of(rows)
    }

    async fn create_signal(&self, id: &RunId, s: &ValidSignal) -> StoreResult<Signal> {
        let mut tx = self.pool.begin().await?;
        let run = Self::locked_run(&mut tx, id).await?;
        rows::check_signal_target(&run)?;
        let row: SignalRow = sqlx::query_as(&format!(
            "INSERT INTO signals (run_pk, kind, name, value, keep_step, reason, source_rule, created_at) \
             VALUES ((SELECT pk FROM runs WHERE run_id = $1), $2, $3, $4, $5, $6, $7, $8) \
             RETURNING {SIGNAL_COLUMNS}"
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
        // Delivered to every listening server when the transaction commits.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(SIGNAL_CHANNEL)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
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
            "SELECT {SIGNAL_COLUMNS} FROM signals WHERE run_pk = $1 AND id > $2 \
             AND (NOT $3 OR acked_at IS NULL) ORDER BY id"
        ))
        .bind(pk)
        .bind(after)
        .bind(pending_only)
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let pk = Self::run_pk(&mut tx, id, false).await?;
        let current = sqlx::query_as::<_, SignalRow>(&format!(
            "SELECT {SIGNAL_COLUMNS} FROM signals WHERE id = $1 AND run_pk = $2 FOR UPDATE"
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
            "UPDATE signals SET acked_at = $1, applied_step = $2, refused = $3 WHERE id = $4 \
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
            "INSERT INTO api_tokens (name, token_hash, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(token_hash)
        .bind(now())
        .execute(&self.pool)
        .await?;
        rows::check_token_created(done.rows_affected(), name)
    }

    async fn token_is_active(&self, token_hash: &str) -> StoreResult<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    async fn tokens(&self) -> StoreResult<Vec<TokenInfo>> {
        let rows = sqlx::query_as::<_, rows::TokenRow>(
            "SELECT name, created_at, revoked_at FROM api_tokens ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(TokenInfo::from).collect())
    }

    async fn revoke_token(&self, name: &str) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, $1) WHERE name = $2",
        )
        .bind(now())
        .bind(name)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::TokenNotFound(name.to_owned()));
        }
        Ok(())
    }
}

alert_store!(
    PostgresStore,
    Postgres,
    writer: pool,
    reader: pool,
    claim: "UPDATE webhook_outbox o SET next_attempt_at = $2 FROM (SELECT id FROM webhook_outbox \
         WHERE state = 'pending' AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT $3 \
         FOR UPDATE SKIP LOCKED) due WHERE o.id = due.id RETURNING o.id",
    same: "IS NOT DISTINCT FROM",
    greatest: "GREATEST"
);
