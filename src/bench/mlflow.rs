//! The peer: MLflow's tracking server on the same machine and store kind, fed by
//! ../shared/peers/mlflow_ingest.py (100 steps × 10 metrics per request, one client).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use redline_server::throwaway;

use super::Databases;
use crate::cli::{BenchIngestArgs, BenchStore};

pub struct PeerResult {
    pub backend: &'static str,
    pub points: u64,
    pub seconds: f64,
    pub points_per_second: f64,
}

/// Measures MLflow on each benchmarked store kind, when the peers venv has it.
pub async fn measure_all(
    dbs: &mut Databases,
    args: &BenchIngestArgs,
) -> anyhow::Result<Vec<PeerResult>> {
    let mlflow = args.peers_venv.join("bin/mlflow");
    if !mlflow.is_file() {
        return Ok(Vec::new());
    }
    let scratch = tempfile::tempdir()?;
    let mut out = Vec::new();
    for kind in dbs.stores() {
        let (backend, uri) = match kind {
            BenchStore::Sqlite => (
                "sqlite",
                format!("sqlite:///{}", scratch.path().join("mlflow.db").display()),
            ),
            BenchStore::Postgres => {
                let admin = dbs.postgres_admin_url()?;
                let name = format!("mlflow_bench_{}", std::process::id());
                let url = throwaway::create_database(&admin, &name).await?;
                (
                    "postgres",
                    url.replacen("postgres://", "postgresql+psycopg2://", 1),
                )
            }
        };
        eprintln!("starting MLflow's tracking server on {backend}…");
        let r = measure(
            &mlflow,
            &args.peers_dir,
            &uri,
            scratch.path(),
            args.mlflow_requests,
        )
        .await
        .with_context(|| format!("measuring MLflow on {backend}"))?;
        eprintln!("mlflow {backend}: {} points/s", super::fmt_rate(r.1));
        out.push(PeerResult {
            backend,
            points: r.0,
            seconds: r.2,
            points_per_second: r.1,
        });
    }
    Ok(out)
}

async fn measure(
    mlflow: &Path,
    peers_dir: &Path,
    backend_uri: &str,
    scratch: &Path,
    requests: usize,
) -> anyhow::Result<(u64, f64, f64)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut server = tokio::process::Command::new(mlflow)
        .args([
            "server",
            "--backend-store-uri",
            backend_uri,
            "--host",
            "127.0.0.1",
        ])
        .args(["--port", &port.to_string()])
        .arg("--default-artifact-root")
        .arg(scratch.join("artifacts"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting mlflow server")?;
    let pgid = server.id().context("mlflow exited at once")?;
    let result = async {
        let base = format!("http://127.0.0.1:{port}");
        wait_healthy(&base).await?;
        let script = peers_dir.join("mlflow_ingest.py");
        let python = mlflow.with_file_name("python");
        let out = tokio::process::Command::new(python)
            .arg(&script)
            .arg(&base)
            .args(["--requests", &requests.to_string()])
            .output()
            .await
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let field = |k: &str| v[k].as_f64().with_context(|| format!("no {k} in {v}"));
        Ok((
            field("points")? as u64,
            field("points_per_second")?,
            field("seconds")?,
        ))
    }
    .await;
    // mlflow starts worker processes: stop the whole group it leads.
    let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGTERM);
    let _ = server.wait().await;
    result
}

async fn wait_healthy(base: &str) -> anyhow::Result<()> {
    let http = super::client();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(180) {
        if let Ok(r) = http.get(format!("{base}/health")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("mlflow server did not become healthy within 180 s")
}
