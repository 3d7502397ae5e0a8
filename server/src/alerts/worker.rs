//! The delivery worker: claims due messages from the outbox (shared by every server on the same
//! PostgreSQL: claims skip rows another server holds), attempts them concurrently, records each
//! attempt, and sleeps until the next message is due, a new alert wakes it, or `poll` passes.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::deliver::{DeliveryConfig, attempt};
use crate::store::Store;

/// Messages claimed at once.
const CLAIM: u32 = 32;

/// Wakes the worker when this server queues alerts.
#[derive(Debug, Default)]
pub struct Outbox(Notify);

impl Outbox {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

pub fn spawn_worker(
    store: Arc<dyn Store>,
    cfg: DeliveryConfig,
    outbox: Arc<Outbox>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let claimed = run_once(&*store, &cfg).await;
            if claimed == CLAIM as usize {
                continue;
            }
            let wait = match store.next_due().await {
                Ok(Some(at)) => (at - Utc::now()).to_std().unwrap_or(Duration::ZERO),
                Ok(None) => cfg.poll,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the webhook outbox");
                    cfg.poll
                }
            }
            .min(cfg.poll);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = outbox.0.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    })
}

/// One round: claim what is due, attempt it all, record every attempt. Returns how many it claimed.
async fn run_once(store: &dyn Store, cfg: &DeliveryConfig) -> usize {
    let now = Utc::now();
    let lease = now + chrono::Duration::from_std(cfg.lease()).unwrap_or_default();
    let due = match store.claim_due(now, lease, CLAIM).await {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %e, "cannot claim webhook messages");
            return 0;
        }
    };
    let attempts = due.iter().map(|d| async move {
        let record = attempt(cfg, d).await;
        tracing::info!(
            webhook = %d.webhook.name,
            message = %d.message_id,
            attempt = d.attempts + 1,
            status = ?record.status,
            latency_ms = record.latency_ms,
            outcome = record.next.outcome(),
            error = ?record.error,
            "webhook attempt"
        );
        if let Err(e) = store.record_attempt(d, &record).await {
            // The lease runs out and the message is attempted again: at least once, never lost.
            tracing::warn!(error = %e, message = %d.message_id, "cannot record a webhook attempt");
        }
    });
    futures::future::join_all(attempts).await;
    due.len()
}
