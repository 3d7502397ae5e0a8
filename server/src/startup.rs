//! Builds the running server from a [`ServerConfig`]: store, auth policy, listener.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::config::ServerConfig;
use crate::http;
use crate::state::AppState;
use crate::store::{self, Store};

#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    state: AppState,
}

impl Server {
    /// Opens and migrates the store, decides the auth policy and binds the listener.
    pub async fn build(config: ServerConfig) -> anyhow::Result<Self> {
        let store = store::connect(&config.database)
            .await
            .with_context(|| format!("cannot open the store at {}", config.database))?;
        Self::with_store(config, store).await
    }

    /// As [`Server::build`], over a store already open.
    pub async fn with_store(config: ServerConfig, store: Arc<dyn Store>) -> anyhow::Result<Self> {
        let stored_tokens = store.tokens().await?.iter().any(|t| t.revoked_at.is_none());
        let auth = Auth::new(&config.tokens, stored_tokens, config.public_read);
        if !auth.enabled
            && !config.listen.ip().is_loopback()
            && !config.allow_unauthenticated_remote
        {
            bail!(
                "refusing to listen on {} without auth: no tokens are configured. Create one with \
                 `redline token create NAME` or pass --token, listen on 127.0.0.1, or pass \
                 --allow-unauthenticated-remote if the network is trusted",
                config.listen
            );
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        match (auth.enabled, auth.public_read) {
            (false, _) => tracing::warn!(
                "auth is off: no tokens are configured, so anyone who can reach {} may write",
                config.listen
            ),
            (true, true) => tracing::info!("auth is on for writes; reads are public"),
            (true, false) => tracing::info!("auth is on for reads and writes"),
        }
        Ok(Self {
            listener,
            state: AppState::new(store, auth, config.max_body_bytes),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.state.store
    }

    pub fn auth_enabled(&self) -> bool {
        self.state.auth.enabled
    }

    /// Cancel it to shut down: open event streams end and in-flight requests finish.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    pub async fn run(self) -> std::io::Result<()> {
        let shutdown = self.state.shutdown.clone();
        axum::serve(self.listener, http::app(self.state))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
