//! The server's typed configuration, built by the CLI (or a test) and checked before anything starts.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::alerts::DeliveryConfig;

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

/// Where the data lives, parsed from `--database-url`.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err("sqlite URL has no file path: use sqlite://PATH".into());
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        Err(format!(
            "unsupported database URL {url:?}: use postgres://USER@HOST/DB or sqlite://PATH"
        ))
    }
}

impl fmt::Debug for DatabaseUrl {
    /// Never prints a password: neither the URL's own (`user:pw@`) nor a `password=` parameter.
    /// A URL that does not parse is not printed at all, since where its password sits is unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            Self::Postgres(url) => f.write_str(&redact_postgres(url)),
        }
    }
}

fn redact_postgres(raw: &str) -> String {
    const HIDDEN: &str = "***";
    let Ok(mut url) = url::Url::parse(raw) else {
        return "postgres://(a URL that does not parse; not shown)".to_owned();
    };
    if url.password().is_some() {
        // Only fails for URLs that cannot have a password, and this one has one.
        let _ = url.set_password(Some(HIDDEN));
    }
    if url.query_pairs().any(|(k, _)| k == "password") {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" { HIDDEN.into() } else { v };
                (k.into_owned(), v.into_owned())
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.into()
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
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

    #[test]
    fn a_database_url_never_prints_its_password() {
        let shown = |url: &str| DatabaseUrl::parse(url).unwrap().to_string();
        for (url, password) in [
            ("postgres://a:secret@host/db", "secret"),
            ("postgres://redline:pa:ss:word@db.internal:5432/r", "pa"),
            ("postgresql://u:p%40ss@h/db", "p%40ss"),
            (
                "postgres://u@h/db?password=hunter2&sslmode=require",
                "hunter2",
            ),
        ] {
            let s = shown(url);
            assert!(!s.contains(password), "{url} shown as {s}");
            assert!(s.contains("***"), "{s}");
        }
        assert_eq!(shown("postgres://u@h/db"), "postgres://u@h/db");
        assert!(shown("postgres://u@h/db?sslmode=require").contains("sslmode=require"));
    }
}
