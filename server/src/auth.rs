//! Bearer-token auth. Tokens come from `--token` (kept in memory as hashes) or from the store
//! (created by `redline token create`, stored as SHA-256 hashes only). When any token exists,
//! every write needs one; reads need one too unless the server was started with `--public-read`.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::config::ApiToken;
use crate::error::AppError;
use crate::state::AppState;
use crate::store::Store;

/// The prefix of tokens Redline makes, so a leaked one is recognisable in logs and scanners.
pub const TOKEN_PREFIX: &str = "rl_";

/// A fresh random token: `rl_` and 64 hex digits (256 bits).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// What is stored for a token. Tokens are 256 random bits, so a fast unsalted hash is enough.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[derive(Debug)]
pub struct Auth {
    static_hashes: HashSet<String>,
    /// Whether tokens are required at all; fixed at start.
    pub enabled: bool,
    pub public_read: bool,
}

impl Auth {
    /// `static_tokens` from the command line; `stored` says whether the store holds active tokens.
    pub fn new(static_tokens: &[ApiToken], stored: bool, public_read: bool) -> Self {
        Self {
            static_hashes: static_tokens
                .iter()
                .map(|t| hash_token(t.expose()))
                .collect(),
            enabled: stored || !static_tokens.is_empty(),
            public_read,
        }
    }

    pub async fn accepts(&self, token: &str, store: &Arc<dyn Store>) -> Result<bool, AppError> {
        let hash = hash_token(token);
        if self.static_hashes.contains(&hash) {
            return Ok(true);
        }
        Ok(store.token_is_active(&hash).await?)
    }
}

fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Middleware for the API: reads (GET, HEAD) and writes (everything else) per the policy above.
pub async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, AppError> {
    let auth = &state.auth;
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    if !auth.enabled || (read && auth.public_read) {
        return Ok(next.run(req).await);
    }
    let Some(token) = bearer(&req) else {
        return Err(AppError::Unauthorized(
            "this server needs a token: send Authorization: Bearer <token>",
        ));
    };
    if !auth.accepts(token, &state.store).await? {
        return Err(AppError::Unauthorized(
            "the token is not known or was revoked",
        ));
    }
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashes_stable() {
        let (a, b) = (generate_token(), generate_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX) && a.len() == 67);
        assert_eq!(hash_token("x"), hash_token("x"));
        assert_eq!(hash_token("x").len(), 64);
        let token = ApiToken::parse("a-token-long-enough").unwrap();
        assert!(Auth::new(&[token], false, false).enabled);
        assert!(!Auth::new(&[], false, true).enabled);
    }
}
