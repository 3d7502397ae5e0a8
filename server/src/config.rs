//! The server's typed configuration, built by the CLI (or a test) and checked before anything starts.

use std::net::SocketAddr;

use crate::alerts::DeliveryConfig;
use crate::store::DatabaseUrl;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub database: DatabaseUrl,
    /// Tokens given on the command line; stored tokens are read from the database.
    pub tokens: Vec<String>,
    /// Let reads through without a token even when tokens exist.
    pub public_read: bool,
    /// Listen beyond loopback even though no token protects the API.
    pub allow_unauthenticated_remote: bool,
    pub max_body_bytes: usize,
    /// How alerts reach webhooks.
    pub delivery: DeliveryConfig,
}

/// The default body limit: a 10,000-step batch of 10 metrics is about 3 MB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

impl ServerConfig {
    /// A loopback server on `database` with no auth, for tests and embedding.
    pub fn local(database: DatabaseUrl) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database,
            tokens: Vec::new(),
            public_read: false,
            allow_unauthenticated_remote: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            delivery: DeliveryConfig::default(),
        }
    }
}
