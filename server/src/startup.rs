//! Builds the running server from a [`ServerConfig`]: store, auth policy, listener.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use redline_core::RuleSetName;
use redline_core::rules::shipped;

use crate::alerts::spawn_worker;
use crate::auth::Auth;
use crate::config::{ConnectionLimits, ServerConfig};
use crate::state::AppState;
use crate::store::{self, Store};
use crate::{http, listen};

#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    state: AppState,
    limits: ConnectionLimits,
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
        for (name, source) in shipped() {
            store
                .ensure_rule_set(
                    &RuleSetName::parse(name).expect("the shipped sets' names are valid"),
                    source,
                )
                .await
                .with_context(|| format!("cannot store the shipped rule set {name}"))?;
        }
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
        // The bound address, not the configured one: with port 0 only the listener knows the port.
        let bound = listener.local_addr().unwrap_or(config.listen);
        match (auth.enabled, auth.public_read) {
            (false, _) => tracing::warn!(
                "auth is off: no tokens are configured, so anyone who can reach {bound} may write"
            ),
            (true, true) => tracing::info!("auth is on for writes; reads are public"),
            (true, false) => tracing::info!("auth is on for reads and writes"),
        }
        Ok(Self {
            listener,
            state: AppState::new(store, auth, &config),
            limits: config.limits,
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

    /// Serves until the shutdown token is cancelled; the webhook worker runs alongside and
    /// stops with it (a message it was sending is leased, and sent again after a restart).
    pub async fn run(self) -> std::io::Result<()> {
        let shutdown = self.state.shutdown.clone();
        let worker = spawn_worker(
            self.state.store.clone(),
            (*self.state.delivery).clone(),
            self.state.outbox.clone(),
            shutdown.clone(),
        );
        listen::serve(self.listener, http::app(self.state), self.limits, shutdown).await;
        worker.abort();
        Ok(())
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
