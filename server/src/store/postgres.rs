//! The production store. Each batch is a handful of statements whatever its size: chunk rows are
//! read and written with `UNNEST` arrays. Ingest into one run is serialised by a row lock on the
//! run, so concurrent resends cannot both count a point as new. New signals are announced with
//! `NOTIFY`, so every server sharing the database wakes its open event streams.

use std::time::Duration;

use redline_core::RunId;
use sqlx::Postgres;
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgPoolOptions};
use tokio::sync::broadcast;

use super::chunk::IngestPlan;
use super::exec::{ChunkKey, ChunkKeys, Dialect};
use super::{SqlStore, StoreResult};

const SIGNAL_CHANNEL: &str = "redline_signals";

impl SqlStore<Postgres> {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        let store = Self::new(pool.clone(), pool.clone());
        tokio::spawn(relay_notifications(pool, store.signal_tx.clone()));
        Ok(store)
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

impl Dialect for Postgres {
    const BACKEND: &'static str = "postgres";
    const LOCK: &'static str = " FOR UPDATE";
    const HAS_TAG: &'static str = "tags @> jsonb_build_array($5::text)";
    const CLAIM: &'static str = "UPDATE webhook_outbox o SET next_attempt_at = $2 FROM \
         (SELECT id FROM webhook_outbox WHERE state = 'pending' AND next_attempt_at <= $1 \
         ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) due \
         WHERE o.id = due.id RETURNING o.id";

    fn elements(param: &str) -> String {
        format!("SELECT jsonb_array_elements_text({param})")
    }

    async fn read_chunks(
        c: &mut PgConnection,
        pk: i64,
        keys: &[ChunkKey],
    ) -> sqlx::Result<ChunkKeys> {
        let (metrics, chunks): (Vec<i32>, Vec<i64>) = keys.iter().copied().unzip();
        let rows = sqlx::query_as::<_, (i32, i64, Vec<u8>)>(
            "SELECT c.metric_id, c.chunk, c.data FROM series_chunks c \
                 JOIN UNNEST($2::int[], $3::bigint[]) AS k (metric_id, chunk) \
                 ON c.metric_id = k.metric_id AND c.chunk = k.chunk WHERE c.run_pk = $1",
        )
        .bind(pk)
        .bind(&metrics)
        .bind(&chunks)
        .fetch_all(&mut *c)
        .await?;
        Ok(rows.into_iter().map(|(m, ch, d)| ((m, ch), d)).collect())
    }

    /// Two statements whatever the batch's size: the rows travel as arrays.
    async fn write_plan(c: &mut PgConnection, pk: i64, plan: &IngestPlan) -> sqlx::Result<()> {
        if plan.writes.is_empty() {
            return Ok(());
        }
        let w = &plan.writes;
        sqlx::query(
            "INSERT INTO series_chunks (run_pk, metric_id, chunk, points, data, summary) \
             SELECT $1, * FROM UNNEST($2::int[], $3::bigint[], $4::int[], $5::bytea[], $6::bytea[]) \
             ON CONFLICT (run_pk, metric_id, chunk) \
             DO UPDATE SET points = EXCLUDED.points, data = EXCLUDED.data, summary = EXCLUDED.summary",
        )
        .bind(pk)
        .bind(w.iter().map(|w| w.metric_id).collect::<Vec<_>>())
        .bind(w.iter().map(|w| w.chunk).collect::<Vec<_>>())
        .bind(w.iter().map(|w| w.points).collect::<Vec<_>>())
        .bind(w.iter().map(|w| w.data.as_slice()).collect::<Vec<_>>())
        .bind(w.iter().map(|w| w.summary.as_slice()).collect::<Vec<_>>())
        .execute(&mut *c)
        .await?;
        let s = &plan.summaries;
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
        .bind(s.iter().map(|s| s.metric_id).collect::<Vec<_>>())
        .bind(s.iter().map(|s| s.added).collect::<Vec<_>>())
        .bind(s.iter().map(|s| s.last_step).collect::<Vec<_>>())
        .bind(
            s.iter()
                .map(|s| s.last_value.to_bits() as i64)
                .collect::<Vec<_>>(),
        )
        .execute(&mut *c)
        .await?;
        Ok(())
    }

    /// Delivered to every listening server when the transaction commits.
    async fn notify(c: &mut PgConnection, run: &RunId) -> sqlx::Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(SIGNAL_CHANNEL)
            .bind(run.as_str())
            .execute(c)
            .await?;
        Ok(())
    }
}
