//! [`Store`] for both backends: every statement written once (`$n` parameters, `RETURNING`,
//! `ON CONFLICT`), run through [`Exec`]; what differs is asked of the [`Dialect`].

use std::collections::HashMap;
use std::sync::RwLock;

use async_trait::async_trait;
use chrono::Utc;
use futures::TryStreamExt;
use redline_core::series::Bucket;
use redline_core::wire::{
    AckSignal, CreateRun, FinishRun, IngestResult, MetricSummary, PointBatch, Run, RunStatus,
    Signal, UpdateRun, ValidSignal,
};
use redline_core::{MetricName, RunId};
use sqlx::Pool;
use sqlx::pool::PoolConnection;
use tokio::sync::broadcast;

use super::exec::{Arg, Args, Dialect, args, json};
use super::rows::{self, MetricRow, RUN_COLUMNS, SIGNAL_COLUMNS};
use super::{
    OpsCounts, PendingRules, Point, RunDetails, RunFilter, SeriesRange, Store, StoreError,
    StoreResult, TokenInfo, chunk,
};

/// A store over one database: `writer` takes every write transaction, `reader` the plain reads
/// (in PostgreSQL one pool is both; SQLite has a single writer connection).
#[derive(Debug)]
pub struct SqlStore<D: Dialect> {
    pub(super) writer: Pool<D>,
    pub(super) reader: Pool<D>,
    /// Metric-name ids. Names are only ever added to `metric_names`, so a cached id stays right.
    metric_ids: RwLock<HashMap<String, i32>>,
    pub(super) signal_tx: broadcast::Sender<RunId>,
}

/// [`OpsCounts`] in one statement.
const OPS_COUNTS_SQL: &str = "SELECT \
    (SELECT count(*) FROM signals s JOIN runs r ON r.pk = s.run_pk \
        WHERE s.acked_at IS NULL AND r.status = 'running') AS signals_pending, \
    (SELECT count(*) FROM webhook_outbox WHERE state = 'pending') AS outbox_pending, \
    (SELECT count(*) FROM webhook_attempts WHERE outcome = 'retry') AS attempts_retried, \
    (SELECT count(*) FROM webhook_attempts WHERE outcome = 'failed') AS attempts_failed";

impl<D: Dialect> SqlStore<D> {
    pub(super) fn new(writer: Pool<D>, reader: Pool<D>) -> Self {
        Self {
            writer,
            reader,
            metric_ids: RwLock::default(),
            signal_tx: broadcast::channel(1024).0,
        }
    }

    /// A reader connection, for statements outside any transaction.
    pub(super) async fn read(&self) -> StoreResult<PoolConnection<D>> {
        Ok(self.reader.acquire().await?)
    }

    /// The writer connection, for a write that is a transaction of its own.
    pub(super) async fn write(&self) -> StoreResult<PoolConnection<D>> {
        Ok(self.writer.acquire().await?)
    }

    /// Runs a write of its own that must change a row; `none` is the error when it changes none.
    pub(super) async fn change(
        &self,
        sql: &str,
        args: Args<'_>,
        none: StoreError,
    ) -> StoreResult<()> {
        match D::execute(&mut *self.write().await?, sql, args).await? {
            0 => Err(none),
            _ => Ok(()),
        }
    }

    /// The run's primary key; `lock` holds the run row until the transaction ends.
    async fn run_pk(c: &mut D::Connection, id: &RunId, lock: bool) -> StoreResult<i64> {
        let lock = if lock { D::LOCK } else { "" };
        let sql = format!("SELECT pk FROM runs WHERE run_id = $1{lock}");
        let pk: Option<(i64,)> = D::optional(c, &sql, args![id.as_str()]).await?;
        pk.map(|(pk,)| pk)
            .ok_or_else(|| StoreError::RunNotFound(id.clone()))
    }

    pub(super) async fn read_run_pk(&self, id: &RunId) -> StoreResult<i64> {
        Self::run_pk(&mut *self.read().await?, id, false).await
    }

    /// The run's primary key and the metric's id, or which of them does not exist.
    async fn series_key(&self, r: &SeriesRange<'_>) -> StoreResult<(i64, i32)> {
        let sql = "SELECT r.pk, (SELECT m.metric_id FROM run_metrics m JOIN metric_names n \
             ON n.id = m.metric_id WHERE m.run_pk = r.pk AND n.name = $2) FROM runs r \
             WHERE r.run_id = $1";
        let args = args![r.run.as_str(), r.metric.as_str()];
        match D::optional(&mut *self.read().await?, sql, args).await? {
            Some((pk, Some(metric_id))) => Ok((pk, metric_id)),
            Some((_, None)) => Err(StoreError::SeriesNotFound {
                run: r.run.clone(),
                metric: r.metric.clone(),
            }),
            None => Err(StoreError::RunNotFound(r.run.clone())),
        }
    }

    /// The run; `lock` holds its row until the transaction ends.
    async fn run_in(c: &mut D::Connection, id: &RunId, lock: bool) -> StoreResult<Run> {
        let lock = if lock { D::LOCK } else { "" };
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1{lock}");
        let run: Option<Run> = D::optional(c, &sql, args![id.as_str()]).await?;
        run.ok_or_else(|| StoreError::RunNotFound(id.clone()))
    }

    async fn metric_ids(&self, batch: &PointBatch) -> StoreResult<HashMap<String, i32>> {
        let mut ids = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.metric_ids.read().expect("metric id cache poisoned");
            for name in batch.series.keys().map(MetricName::as_str) {
                if let Some(&id) = cache.get(name) {
                    ids.insert(name.to_owned(), id);
                } else {
                    missing.push(name);
                }
            }
        }
        if missing.is_empty() {
            return Ok(ids);
        }
        let names = D::elements("$1");
        // `WHERE true` tells SQLite's parser that `ON CONFLICT` is not a join's `ON`.
        let insert = format!(
            "INSERT INTO metric_names (name) {names} WHERE true ON CONFLICT (name) DO NOTHING"
        );
        D::execute(&mut *self.write().await?, &insert, args![json(&missing)]).await?;
        let select = format!("SELECT name, id FROM metric_names WHERE name IN ({names})");
        let found: Vec<(String, i32)> =
            D::all(&mut *self.read().await?, &select, args![json(&missing)]).await?;
        let found: HashMap<String, i32> = found.into_iter().collect();
        self.metric_ids
            .write()
            .expect("metric id cache poisoned")
            .extend(found.iter().map(|(k, v)| (k.clone(), *v)));
        ids.extend(found);
        Ok(ids)
    }

    /// The run's signals with id above `after`, oldest first; unacknowledged ones only when
    /// `pending`.
    async fn signals_in(
        c: &mut D::Connection,
        pk: i64,
        after: i64,
        pending: bool,
    ) -> StoreResult<Vec<Signal>> {
        let sql = format!(
            "SELECT {SIGNAL_COLUMNS} FROM signals WHERE run_pk = $1 AND id > $2 \
             AND (NOT $3 OR acked_at IS NULL) ORDER BY id"
        );
        Ok(D::all(c, &sql, args![pk, after, pending]).await?)
    }
}

#[async_trait]
impl<D: Dialect> Store for SqlStore<D> {
    fn backend(&self) -> &'static str {
        D::BACKEND
    }

    async fn ping(&self) -> StoreResult<()> {
        let _: (i32,) = D::one(&mut *self.read().await?, "SELECT 1", args![]).await?;
        Ok(())
    }

    async fn create_or_resume_run(&self, id: &RunId, req: &CreateRun) -> StoreResult<(Run, bool)> {
        let mut tx = self.writer.begin().await?;
        let t = Utc::now();
        let insert = format!(
            "INSERT INTO runs (run_id, name, project, tags, config, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 'running', $6, $6) ON CONFLICT (run_id) DO NOTHING \
             RETURNING {RUN_COLUMNS}"
        );
        let name = req.name.as_deref().unwrap_or(id.as_str());
        let config = req.config.clone().unwrap_or_else(|| serde_json::json!({}));
        let args = args![
            id.as_str(),
            name,
            req.project_or_default(),
            json(&req.tags),
            json(&config),
            t
        ];
        let inserted: Option<Run> = D::optional(&mut tx, &insert, args).await?;
        if let Some(run) = inserted {
            let pk = Self::run_pk(&mut tx, id, false).await?;
            Self::pin_rule_sets(&mut tx, pk, req).await?;
            tx.commit().await?;
            return Ok((run, true));
        }
        let existing = Self::run_in(&mut tx, id, true).await?;
        if existing.project != req.project_or_default() {
            // The client picked an id another run already has.
            return Err(StoreError::Conflict(format!(
                "run {id} exists in project {:?}, not {:?}: choose another run id",
                existing.project,
                req.project_or_default()
            )));
        }
        let resume = format!(
            "UPDATE runs SET status = 'running', status_reason = NULL, finished_at = NULL, \
             updated_at = $1 WHERE run_id = $2 RETURNING {RUN_COLUMNS}"
        );
        let run = D::one(&mut tx, &resume, args![t, id.as_str()]).await?;
        tx.commit().await?;
        Ok((run, false))
    }

    async fn run(&self, id: &RunId) -> StoreResult<Run> {
        Self::run_in(&mut *self.read().await?, id, false).await
    }

    async fn list_runs(&self, f: &RunFilter) -> StoreResult<Vec<Run>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE ($1 IS NULL OR project = $1) \
             AND ($2 IS NULL OR status = $2) AND ($5 IS NULL OR {}) \
             ORDER BY {} LIMIT $3 OFFSET $4",
            D::HAS_TAG,
            f.sort.order_by()
        );
        let args = args![
            f.project.as_deref(),
            f.status.map(RunStatus::as_str),
            i64::from(f.limit),
            i64::from(f.offset),
            f.tag.as_deref(),
        ];
        Ok(D::all(&mut *self.read().await?, &sql, args).await?)
    }

    async fn run_details(&self, ids: &[RunId], metrics: &[&str]) -> StoreResult<Vec<RunDetails>> {
        let runs = json(&ids.iter().map(RunId::as_str).collect::<Vec<_>>());
        let pks = format!(
            "SELECT pk FROM runs WHERE run_id IN ({})",
            D::elements("$1")
        );
        let sql = format!(
            "SELECT r.run_id, n.name, m.points, m.last_step, m.last_value_bits FROM run_metrics m \
             JOIN metric_names n ON n.id = m.metric_id JOIN runs r ON r.pk = m.run_pk \
             WHERE m.run_pk IN ({pks}) AND n.name IN ({}) ORDER BY n.name",
            D::elements("$2")
        );
        let args = args![runs.clone(), json(&metrics)];
        let metrics: Vec<rows::RunMetricRow> = D::all(&mut *self.read().await?, &sql, args).await?;
        let sql =
            format!("SELECT {SIGNAL_COLUMNS} FROM signals WHERE run_pk IN ({pks}) ORDER BY id");
        let signals = D::all(&mut *self.read().await?, &sql, args![runs]).await?;
        Ok(rows::details(ids, metrics, signals))
    }

    async fn finish_run(&self, id: &RunId, req: &FinishRun) -> StoreResult<Run> {
        let mut tx = self.writer.begin().await?;
        let run = Self::run_in(&mut tx, id, true).await?;
        let status = RunStatus::from(req.status);
        match run.status {
            RunStatus::Running => {}
            s if s == status => return Ok(run),
            s => {
                return Err(StoreError::Conflict(format!(
                    "run {id} already finished as {}; it cannot now be {}",
                    s.as_str(),
                    status.as_str()
                )));
            }
        }
        let sql = format!(
            "UPDATE runs SET status = $1, status_reason = $2, finished_at = $3, updated_at = $3 \
             WHERE run_id = $4 RETURNING {RUN_COLUMNS}"
        );
        let args = args![
            status.as_str(),
            req.reason.as_deref(),
            Utc::now(),
            id.as_str()
        ];
        let run = D::one(&mut tx, &sql, args).await?;
        tx.commit().await?;
        Ok(run)
    }

    async fn update_run(&self, id: &RunId, req: &UpdateRun) -> StoreResult<Run> {
        // A NULL leaves the column as it is.
        let sql = format!(
            "UPDATE runs SET name = coalesce($2, name), tags = coalesce($3, tags), updated_at = $4 \
             WHERE run_id = $1 RETURNING {RUN_COLUMNS}"
        );
        let tags = req.tags.as_ref().map_or(Arg::Json(None), json);
        let args = args![id.as_str(), req.name.as_deref(), tags, Utc::now()];
        let run: Option<Run> = D::optional(&mut *self.write().await?, &sql, args).await?;
        run.ok_or_else(|| StoreError::RunNotFound(id.clone()))
    }

    async fn delete_run(&self, id: &RunId) -> StoreResult<()> {
        // One statement, so one transaction: the cascades run inside it.
        let sql = "DELETE FROM runs WHERE run_id = $1";
        self.change(sql, args![id.as_str()], StoreError::RunNotFound(id.clone()))
            .await
    }

    async fn ops_counts(&self) -> StoreResult<OpsCounts> {
        Ok(D::one(&mut *self.read().await?, OPS_COUNTS_SQL, args![]).await?)
    }

    async fn ingest(
        &self,
        id: &RunId,
        batch: &PointBatch,
        rules: &dyn PendingRules,
    ) -> StoreResult<IngestResult> {
        let ids = self.metric_ids(batch).await?;
        let mut tx = self.writer.begin().await?;
        // Locked, so that concurrent resends of one batch cannot both count a point as new.
        let pk = Self::run_pk(&mut tx, id, true).await?;
        let keys = chunk::touched_chunks(batch, &ids);
        let existing = D::read_chunks(&mut tx, pk, &keys).await?;
        let plan = chunk::plan(batch, &ids, &existing).map_err(StoreError::Corrupt)?;
        D::write_plan(&mut tx, pk, &plan).await?;
        let last_step = plan.summaries.iter().map(|s| s.last_step).max();
        // Evaluation of a large batch has been running beside the writes above.
        let rules = rules.writes().await?;
        let created = Self::write_rules(&mut tx, pk, &rules, last_step).await?;
        if created > 0 {
            D::notify(&mut tx, id).await?;
        }
        let signals = Self::signals_in(&mut tx, pk, 0, true).await?;
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
        let sql = "SELECT n.name, m.points, m.last_step, m.last_value_bits FROM run_metrics m \
             JOIN metric_names n ON n.id = m.metric_id WHERE m.run_pk = $1 ORDER BY n.name";
        let rows: Vec<MetricRow> = D::all(&mut *self.read().await?, sql, args![pk]).await?;
        Ok(rows.into_iter().map(MetricSummary::from).collect())
    }

    /// Decodes the chunk rows as they arrive, keeping the points in range, and stops fetching
    /// once `limit` points are in hand.
    async fn read_series(&self, r: &SeriesRange<'_>, limit: usize) -> StoreResult<Vec<Point>> {
        let (pk, metric_id) = self.series_key(r).await?;
        let sql = "SELECT data FROM series_chunks WHERE run_pk = $1 AND metric_id = $2 \
             AND chunk BETWEEN $3 AND $4 ORDER BY chunk";
        let (first, last) = chunk::chunks_of(&r.steps);
        let args = args![pk, metric_id, first, last];
        let mut c = self.read().await?;
        let mut chunks = D::fetch::<(Vec<u8>,)>(&mut c, sql, args);
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        while let Some((data,)) = chunks.try_next().await? {
            scratch.clear();
            chunk::decode_into(&data, &mut scratch).map_err(StoreError::Corrupt)?;
            out.extend(scratch.iter().filter(|p| r.steps.contains(&p.0)));
            if out.len() >= limit {
                out.truncate(limit);
                break;
            }
        }
        Ok(out)
    }

    async fn chunk_summaries(&self, r: &SeriesRange<'_>) -> StoreResult<Vec<(i64, Bucket)>> {
        let (pk, metric_id) = self.series_key(r).await?;
        let sql = "SELECT chunk, summary, CASE WHEN summary IS NULL THEN data END FROM series_chunks \
             WHERE run_pk = $1 AND metric_id = $2 AND chunk BETWEEN $3 AND $4 ORDER BY chunk";
        let (first, last) = chunk::chunks_of(&r.steps);
        let args = args![pk, metric_id, first, last];
        // A chunk's number, its stored summary, and its points where it has no summary.
        let rows: Vec<(i64, Option<Vec<u8>>, Option<Vec<u8>>)> =
            D::all(&mut *self.read().await?, sql, args).await?;
        rows.into_iter()
            .map(|(c, summary, data)| {
                chunk::stored_summary(summary.as_deref(), data.as_deref())
                    .map(|b| (c, b))
                    .map_err(StoreError::Corrupt)
            })
            .collect()
    }

    async fn create_signal(&self, id: &RunId, s: &ValidSignal) -> StoreResult<Signal> {
        let mut tx = self.writer.begin().await?;
        let run = Self::run_in(&mut tx, id, true).await?;
        if run.status != RunStatus::Running {
            // A finished run has no trainer left to obey a signal.
            return Err(StoreError::Conflict(format!(
                "run {id} is {}: signals can only be sent to a running run",
                run.status.as_str()
            )));
        }
        let sql = format!(
            "INSERT INTO signals (run_pk, kind, name, value, keep_step, reason, source_rule, created_at) \
             VALUES ((SELECT pk FROM runs WHERE run_id = $1), $2, $3, $4, $5, $6, $7, $8) \
             RETURNING {SIGNAL_COLUMNS}"
        );
        let (name, value) = (
            s.hparam.as_ref().map(|h| h.0.as_str()),
            s.hparam.as_ref().map(|h| h.1),
        );
        let args = args![
            id.as_str(),
            s.kind.as_str(),
            name,
            value,
            s.keep_step,
            &s.reason,
            s.source_rule.as_deref(),
            Utc::now()
        ];
        let signal = D::one(&mut tx, &sql, args).await?;
        D::notify(&mut tx, id).await?;
        tx.commit().await?;
        // No receiver just means no stream is open.
        let _ = self.signal_tx.send(id.clone());
        Ok(signal)
    }

    async fn signals(
        &self,
        id: &RunId,
        after: i64,
        pending_only: bool,
    ) -> StoreResult<Vec<Signal>> {
        let pk = self.read_run_pk(id).await?;
        Self::signals_in(&mut *self.read().await?, pk, after, pending_only).await
    }

    async fn ack_signal(&self, id: &RunId, signal: i64, ack: &AckSignal) -> StoreResult<Signal> {
        let mut tx = self.writer.begin().await?;
        let pk = Self::run_pk(&mut tx, id, false).await?;
        let sql = format!(
            "SELECT {SIGNAL_COLUMNS} FROM signals WHERE id = $1 AND run_pk = $2{}",
            D::LOCK
        );
        let current: Option<Signal> = D::optional(&mut tx, &sql, args![signal, pk]).await?;
        let current = current.ok_or_else(|| StoreError::SignalNotFound {
            run: id.clone(),
            signal,
        })?;
        if let Some(at) = current.applied_step {
            // The same answer again is a no-op; a different one is a conflict.
            if at == ack.step && current.refused == ack.refused {
                return Ok(current);
            }
            let answered = if current.refused.is_some() {
                "refused"
            } else {
                "applied"
            };
            let message = format!("signal {signal} was already answered ({answered}) at step {at}");
            return Err(StoreError::Conflict(message));
        }
        let sql = format!(
            "UPDATE signals SET acked_at = $1, applied_step = $2, refused = $3 WHERE id = $4 \
             RETURNING {SIGNAL_COLUMNS}"
        );
        let args = args![Utc::now(), ack.step, ack.refused.as_deref(), signal];
        let acked = D::one(&mut tx, &sql, args).await?;
        tx.commit().await?;
        Ok(acked)
    }

    fn signal_events(&self) -> broadcast::Receiver<RunId> {
        self.signal_tx.subscribe()
    }

    async fn create_token(&self, name: &str, token_hash: &str) -> StoreResult<()> {
        let sql = "INSERT INTO api_tokens (name, token_hash, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING";
        let taken = StoreError::Conflict(format!(
            "a token named {name:?} already exists: revoke it or pick another name"
        ));
        self.change(sql, args![name, token_hash, Utc::now()], taken)
            .await
    }

    async fn token_is_active(&self, token_hash: &str) -> StoreResult<bool> {
        let sql = "SELECT id FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL";
        let found: Option<(i64,)> =
            D::optional(&mut *self.read().await?, sql, args![token_hash]).await?;
        Ok(found.is_some())
    }

    async fn tokens(&self) -> StoreResult<Vec<TokenInfo>> {
        let sql = "SELECT name, created_at, revoked_at FROM api_tokens ORDER BY name";
        Ok(D::all(&mut *self.read().await?, sql, args![]).await?)
    }

    async fn revoke_token(&self, name: &str) -> StoreResult<()> {
        let sql = "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, $1) WHERE name = $2";
        self.change(
            sql,
            args![Utc::now(), name],
            StoreError::TokenNotFound(name.to_owned()),
        )
        .await
    }
}
