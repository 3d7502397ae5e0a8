//! `redline bench`: throughput measured over real HTTP on loopback, against the real stores,
//! reported as tables to paste into docs/benchmarks.md.

pub mod connections;
pub mod dashboard;
pub mod device;
pub mod generate;
pub mod ingest;
mod mlflow;
pub mod read;
pub mod runs_page;
pub mod signals;
pub mod train;
pub mod trl_metrics;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use redline_server::config::DatabaseUrl;
use redline_server::throwaway::{self, Durability, ThrowawayPostgres};
use redline_server::{Server, ServerConfig};
use tokio_util::sync::DropGuard;

use crate::cli::{BenchStore, BenchTargets};

/// The Python of the venv a benchmark's peer side runs in, once `script` (run from the
/// repository root) and the venv are both there; else why not, with `setup` saying how to make
/// the venv.
pub fn peer_python(venv: &Path, script: &str, setup: &str) -> anyhow::Result<PathBuf> {
    if !Path::new(script).is_file() {
        anyhow::bail!("run this from the repository root: {script} is not here");
    }
    let python = venv.join("bin/python");
    if !python.is_file() {
        anyhow::bail!("no Python venv at {}: {setup}", venv.display());
    }
    Ok(python)
}

/// Where benchmark databases come from; a throwaway cluster is started on first use.
pub struct Databases {
    targets: BenchTargets,
    cluster: Option<ThrowawayPostgres>,
    sqlite_dir: tempfile::TempDir,
    made: usize,
}

impl Databases {
    pub fn new(targets: BenchTargets) -> anyhow::Result<Self> {
        Ok(Self {
            targets,
            cluster: None,
            sqlite_dir: tempfile::tempdir()?,
            made: 0,
        })
    }

    pub fn stores(&self) -> Vec<BenchStore> {
        self.targets.stores.clone()
    }

    /// The admin URL of the PostgreSQL under test, starting a cluster if none was given.
    pub fn postgres_admin_url(&mut self) -> anyhow::Result<String> {
        if let Some(url) = &self.targets.postgres_url {
            return Ok(url.clone());
        }
        if self.cluster.is_none() {
            eprintln!("starting a throwaway PostgreSQL cluster (production durability settings)…");
            self.cluster =
                Some(ThrowawayPostgres::start(Durability::Production).map_err(anyhow::Error::msg)?);
        }
        Ok(self.cluster.as_ref().expect("just started").admin_url())
    }

    /// A fresh, empty database of `kind`.
    pub async fn fresh(&mut self, kind: BenchStore) -> anyhow::Result<DatabaseUrl> {
        self.made += 1;
        let name = format!("redline_bench_{}_{}", std::process::id(), self.made);
        match kind {
            BenchStore::Sqlite => Ok(DatabaseUrl::Sqlite(
                self.sqlite_dir.path().join(format!("{name}.db")),
            )),
            BenchStore::Postgres => {
                let admin = self.postgres_admin_url()?;
                let url = throwaway::create_database(&admin, &name).await?;
                Ok(DatabaseUrl::Postgres(url))
            }
        }
    }
}

/// A server on a loopback port, stopped when dropped.
pub struct Running {
    pub addr: SocketAddr,
    pub backend: &'static str,
    _stop: DropGuard,
}

impl Running {
    pub async fn start(db: DatabaseUrl) -> anyhow::Result<Self> {
        let server = Server::build(ServerConfig::local(db)).await?;
        let addr = server.local_addr();
        let backend = server.store().backend();
        let stop = server.shutdown_token().drop_guard();
        tokio::spawn(server.run());
        Ok(Self {
            addr,
            backend,
            _stop: stop,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .pool_max_idle_per_host(64)
        .build()
        .expect("a plain HTTP client builds")
}

/// Creates a run (watched by the presets) and fails loudly if the server says no.
pub async fn create_run(http: &reqwest::Client, server: &Running, id: &str) -> anyhow::Result<()> {
    create_run_with(http, server, id, serde_json::json!({ "project": "bench" })).await
}

pub async fn create_run_with(
    http: &reqwest::Client,
    server: &Running,
    id: &str,
    body: serde_json::Value,
) -> anyhow::Result<()> {
    let resp = http
        .put(server.url(&format!("/api/v1/runs/{id}")))
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "creating run {id}: {}",
        resp.text().await?
    );
    Ok(())
}

/// Sends one prepared batch body, checking every point was new.
pub async fn post_batch(
    http: &reqwest::Client,
    url: &str,
    body: Bytes,
    expect_points: u64,
) -> anyhow::Result<()> {
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .context("sending a batch")?;
    let status = resp.status();
    let text = resp.text().await?;
    anyhow::ensure!(status.is_success(), "batch refused ({status}): {text}");
    let result: redline_core::wire::IngestResult = serde_json::from_str(&text)?;
    anyhow::ensure!(
        result.new_points == expect_points,
        "expected {expect_points} new points, server stored {}",
        result.new_points
    );
    Ok(())
}

pub fn fmt_rate(points_per_second: f64) -> String {
    let mut s = String::new();
    let v = points_per_second.round() as u64;
    let digits = v.to_string();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            s.push(',');
        }
        s.push(c);
    }
    s
}
