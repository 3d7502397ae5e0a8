//! The server's typed configuration, built by the CLI (or a test) and checked before anything starts.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::alerts::DeliveryConfig;
use crate::store::DatabaseUrl;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub database: DatabaseUrl,
    /// Tokens given on the command line; stored tokens are read from the database.
    pub tokens: Vec<ApiToken>,
    /// Let reads through without a token even when tokens exist.
    pub public_read: bool,
    /// Listen beyond loopback even though no token protects the API.
    pub allow_unauthenticated_remote: bool,
    /// Host names the server answers to besides the loopback ones (`--public-host`).
    pub public_hosts: Vec<String>,
    pub max_body_bytes: usize,
    pub limits: ConnectionLimits,
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
            public_hosts: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            limits: ConnectionLimits::default(),
            delivery: DeliveryConfig::default(),
        }
    }
}

/// How long and how many clients may hold the server's connections. Without them, a client that
/// sends half its headers, or declares a body it never sends, holds a connection and its buffers
/// for ever; a few thousand of them exhaust the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time to receive a request's headers, counted from when the connection is ready for a
    /// request: so a keep-alive connection waiting for its next request is closed after it too.
    pub header_timeout: Duration,
    /// Time to receive a request's whole body.
    pub body_timeout: Duration,
    /// A connection on which no byte moved either way for this long is closed (a client that
    /// stopped reading an event stream, a stuck peer). Longer than the event streams' 15 s
    /// keep-alive, so idle dashboards stay connected.
    pub idle_timeout: Duration,
    /// Connections open at once; beyond it, a new one gets 503 and is closed.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(120),
            max_connections: 1024,
        }
    }
}

/// A bearer token given to the server: trimmed, long enough to guess at no better than chance,
/// and never printed (`Debug` shows `[REDACTED]`).
#[derive(Debug, Clone)]
pub struct ApiToken(SecretString);

/// Tokens shorter than this are refused: a short token can be guessed over the network.
pub const MIN_TOKEN_CHARS: usize = 16;

impl ApiToken {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let token = raw.trim();
        if token.is_empty() {
            return Err("a token is empty (or only spaces); leave --token out for none".into());
        }
        let chars = token.chars().count();
        if chars < MIN_TOKEN_CHARS {
            return Err(format!(
                "a token has {chars} characters; tokens need at least {MIN_TOKEN_CHARS} \
                 (`redline token create NAME` makes a 67-character one)"
            ));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(
                "a token contains spaces or control characters, which no client can send \
                 in an Authorization header"
                    .into(),
            );
        }
        Ok(Self(token.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_trimmed_and_empty_or_short_ones_refused() {
        assert_eq!(
            ApiToken::parse("  abcdefghijklmnop ").unwrap().expose(),
            "abcdefghijklmnop"
        );
        assert!(ApiToken::parse(" ").unwrap_err().contains("empty"));
        let short = ApiToken::parse("abc").unwrap_err();
        assert!(short.contains("at least 16"), "{short}");
        assert!(ApiToken::parse("abcdefgh ijklmnopq").is_err());
        let shown = format!("{:?}", ApiToken::parse("abcdefghijklmnop").unwrap());
        assert!(!shown.contains("abcdefghijklmnop"), "{shown}");
    }
}
