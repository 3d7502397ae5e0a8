//! What every handler shares.

use std::sync::Arc;

use redline_core::RunId;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::alerts::{DeliveryConfig, Outbox};
use crate::auth::Auth;
use crate::rules::RuleRunner;
use crate::store::Store;
use crate::telemetry::Telemetry;

#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub auth: Arc<Auth>,
    /// Cancelled on shutdown; open event streams end with it.
    pub shutdown: CancellationToken,
    pub max_body_bytes: usize,
    /// Wakes the live pages: the id of every run this server wrote to (steps, status, signals).
    pub changes: broadcast::Sender<RunId>,
    /// Keys the pages' CSRF tokens; new at every start.
    pub page_secret: Arc<[u8; 32]>,
    /// Every run's rule state.
    pub rules: Arc<RuleRunner>,
    /// Wakes this server's webhook worker when an ingest queued alerts.
    pub outbox: Arc<Outbox>,
    pub delivery: Arc<DeliveryConfig>,
    /// What `/metrics` reports.
    pub telemetry: Arc<Telemetry>,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        auth: Auth,
        max_body_bytes: usize,
        delivery: DeliveryConfig,
    ) -> Self {
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
        Self {
            store,
            auth: Arc::new(auth),
            shutdown: CancellationToken::new(),
            max_body_bytes,
            changes: broadcast::channel(1024).0,
            page_secret: Arc::new(secret),
            rules: Arc::default(),
            outbox: Arc::default(),
            delivery: Arc::new(delivery),
            telemetry: Arc::default(),
        }
    }

    /// Tells open pages that `run` changed. Nobody listening is fine.
    pub fn changed(&self, run: &RunId) {
        let _ = self.changes.send(run.clone());
    }
}
