//! `redline bench connections`: what idle and slow clients cost a server, and whether it gets the
//! memory back. It starts `redline serve` (this binary, or `--binary` for another build, to compare
//! before and after a change) as a child process on an empty SQLite store, opens connections that
//! send half their headers, sit idle after one request, or declare a huge body, and reads the
//! server's resident memory (`VmRSS`) before, with them open, and after the server's timeouts.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::cli::BenchConnectionsArgs;

/// How each connection misbehaves, in turn.
const KINDS: [(&str, &[u8]); 3] = [
    (
        "partial headers",
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n",
    ),
    (
        "idle keep-alive",
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ),
    (
        "declared 100 GB body",
        b"POST /api/v1/runs/r/steps HTTP/1.1\r\nHost: 127.0.0.1\r\n\
          Content-Type: application/json\r\nContent-Length: 100000000000\r\n\r\n",
    ),
];

pub async fn run(args: BenchConnectionsArgs) -> anyhow::Result<()> {
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("cannot find this binary")?,
    };
    let data = tempfile::tempdir()?;
    let (mut child, addr) = start(&binary, &data.path().join("store"), &args.serve_args).await?;
    let pid = child.id().context("the server exited at once")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = rss_kib(pid)?;

    let mut open = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let mut conn = TcpStream::connect(&addr)
            .await
            .with_context(|| format!("connection {i} refused"))?;
        conn.write_all(KINDS[i % KINDS.len()].1).await?;
        open.push(conn);
    }
    // Let the server read what was sent and settle its buffers.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = rss_kib(pid)?;
    let per = (held.saturating_sub(base)) as f64 / args.connections as f64;

    let started = Instant::now();
    let closed = count_closed(&mut open, args.wait).await;
    let after = rss_kib(pid)?;
    drop(open);
    child.start_kill()?;
    let _ = child.wait().await;

    println!("server: {} {}", binary.display(), args.serve_args.join(" "));
    println!(
        "{} connections ({}), one third each",
        args.connections,
        KINDS.map(|k| k.0).join(", ")
    );
    println!("| | resident memory |");
    println!("|---|---:|");
    println!("| before | {:.1} MiB |", base as f64 / 1024.0);
    println!(
        "| with the connections open | {:.1} MiB ({per:.1} KiB a connection) |",
        held as f64 / 1024.0
    );
    println!(
        "| {:.0} s later | {:.1} MiB; the server had closed {closed} of {} |",
        started.elapsed().as_secs_f64(),
        after as f64 / 1024.0,
        args.connections
    );
    Ok(())
}

/// Starts the server on a loopback port 0 and returns it with its `host:port`.
async fn start(
    binary: &PathBuf,
    store: &std::path::Path,
    extra: &[String],
) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(store)
        .args(extra)
        .env("REDLINE_LOG", "error")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?)
        .read_line(&mut line)
        .await?;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .with_context(|| format!("the server did not say where it listens: {line:?}"))?
        .to_owned();
    Ok((child, addr))
}

/// Waits up to `wait` seconds for the server to close the connections; how many it closed.
async fn count_closed(open: &mut [TcpStream], wait: u64) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let mut closed = 0;
    for conn in open.iter_mut() {
        let mut buf = [0u8; 1024];
        let gone = tokio::time::timeout_at(deadline, async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok();
        closed += usize::from(gone);
    }
    closed
}

/// The process's resident set, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}
