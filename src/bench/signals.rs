//! `redline bench signals`: signal latency. A rule trips on every other step of a run; each
//! tripping step is sent as one ingest request, timed from sending it to holding the signal the
//! answer carries (how the trainer's reporter receives it). Measured on loopback against each
//! store, reported as p50/p99 with the event stream (the reporter's other path) alongside.

use std::time::{Duration, Instant};

use futures::StreamExt;
use redline_core::wire::IngestResult;

use super::{Databases, Running, client, create_run_with};
use crate::cli::BenchSignalsArgs;

/// Trips whenever `x` rises above 0.5 from below: every other step of the benchmark run.
const TRIP_RULES: &str = r#"
[[rules]]
name = "trip"
actions = ["checkpoint"]

[[rules.when]]
metric = "x"
above = 0.5
"#;

struct Latencies {
    store: &'static str,
    answer: Vec<Duration>,
    stream: Vec<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    step: usize,
    x: f64,
) -> anyhow::Result<IngestResult> {
    let resp = http
        .post(url)
        .json(&serde_json::json!({"steps": [{"step": step, "metrics": {"x": x, "loss": 0.5}}]}))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "ingest refused: {}",
        resp.text().await?
    );
    Ok(resp.json().await?)
}

async fn measure(server: &Running, trips: usize) -> anyhow::Result<Latencies> {
    let http = client();
    let resp = http
        .put(server.url("/api/v1/rule-sets/bench-trip"))
        .header("content-type", "application/toml")
        .body(TRIP_RULES)
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "rule set refused: {}",
        resp.text().await?
    );
    create_run_with(
        &http,
        server,
        "latency",
        serde_json::json!({"rules": ["bench-trip"]}),
    )
    .await?;
    let steps = server.url("/api/v1/runs/latency/steps");
    // The reporter's second path: the run's event stream, read on its own connection.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = http
        .get(server.url("/api/v1/runs/latency/signals/stream"))
        .send()
        .await?;
    tokio::spawn(async move {
        let mut body = stream.bytes_stream();
        while let Some(Ok(chunk)) = body.next().await {
            let at = Instant::now();
            let events = String::from_utf8_lossy(&chunk)
                .matches("event: signal")
                .count();
            for _ in 0..events {
                let _ = tx.send(at);
            }
        }
    });
    let mut answer = Vec::with_capacity(trips);
    let mut streamed = Vec::with_capacity(trips);
    for trip in 0..trips {
        post(&http, &steps, 2 * trip, 0.0).await?;
        let sent = Instant::now();
        let result = post(&http, &steps, 2 * trip + 1, 1.0).await?;
        let held = sent.elapsed();
        let signal = result
            .signals
            .last()
            .ok_or_else(|| anyhow::anyhow!("trip {trip}: the answer carried no signal"))?;
        answer.push(held);
        let arrived = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the event stream ended"))?;
        streamed.push(arrived.saturating_duration_since(sent));
        // Acknowledged, as the trainer would, so answers stay one signal long.
        let ack = http
            .post(server.url(&format!("/api/v1/runs/latency/signals/{}/ack", signal.id)))
            .json(&serde_json::json!({"step": 2 * trip + 1}))
            .send()
            .await?;
        anyhow::ensure!(
            ack.status().is_success(),
            "ack refused: {}",
            ack.text().await?
        );
    }
    answer.sort();
    streamed.sort();
    Ok(Latencies {
        store: server.backend,
        answer,
        stream: streamed,
    })
}

pub async fn run(args: BenchSignalsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.trips >= 1, "--trips must be at least 1");
    let mut dbs = Databases::new(args.targets.clone())?;
    let mut rows = Vec::new();
    for kind in dbs.stores() {
        let server = Running::start(dbs.fresh(kind).await?).await?;
        let l = measure(&server, args.trips).await?;
        eprintln!(
            "{:<8} {} trips: answer p50 {:.2} ms p99 {:.2} ms; stream p50 {:.2} ms p99 {:.2} ms",
            l.store,
            args.trips,
            percentile(&l.answer, 0.5),
            percentile(&l.answer, 0.99),
            percentile(&l.stream, 0.5),
            percentile(&l.stream, 0.99)
        );
        rows.push(l);
    }
    println!(
        "| store | trips | answer p50 ms | answer p99 ms | answer max ms | stream p50 ms | stream p99 ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for l in &rows {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            l.store,
            l.answer.len(),
            percentile(&l.answer, 0.5),
            percentile(&l.answer, 0.99),
            percentile(&l.answer, 1.0),
            percentile(&l.stream, 0.5),
            percentile(&l.stream, 0.99)
        );
    }
    Ok(())
}
