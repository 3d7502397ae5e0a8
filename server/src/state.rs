//! What every handler shares.

use std::sync::Arc;

use redline_core::RunId;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::alerts::{DeliveryConfig, Outbox};
use crate::auth::Auth;
use crate::config::ServerConfig;
use crate::http::{BodyRules, HostPolicy};
use crate::rules::RuleRunner;
use crate::store::Store;
use crate::telemetry::Telemetry;

#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub auth: Arc<Auth>,
    /// Cancelled on shutdown; open event streams end with it.
    pub shutdown: CancellationToken,
    /// Largest body, and how long it may take to arrive.
    pub body: BodyRules,
    /// The host names this server answers to.
    pub hosts: Arc<HostPolicy>,
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
    pub fn new(store: Arc<dyn Store>, auth: Auth, config: &ServerConfig) -> Self {
        let mut secret = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
        Self {
            store,
            auth: Arc::new(auth),
            shutdown: CancellationToken::new(),
            body: BodyRules {
                limit: config.max_body_bytes,
                timeout: config.limits.body_timeout,
            },
            hosts: Arc::new(HostPolicy::new(
                config.listen.ip().is_loopback(),
                &config.public_hosts,
            )),
            changes: broadcast::channel(1024).0,
            page_secret: Arc::new(secret),
            rules: Arc::default(),
            outbox: Arc::default(),
            delivery: Arc::new(config.delivery.clone()),
            telemetry: Arc::default(),
        }
    }

    /// Tells open pages that `run` changed. Nobody listening is fine.
    pub fn changed(&self, run: &RunId) {
        let _ = self.changes.send(run.clone());
    }
}
