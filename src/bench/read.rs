//! `redline bench read`: a long series read back downsampled, over HTTP, per store.

use std::time::{Duration, Instant};

use redline_core::wire::DownsampledSeries;

use super::{Databases, Running, client, create_run, post_batch};
use crate::cli::BenchReadArgs;

const INGEST_BATCH: usize = 10_000;
const SPIKE: f64 = 1e6;

fn body(first: usize, n: usize, spike_at: usize) -> bytes::Bytes {
    let steps: Vec<serde_json::Value> = (first..first + n)
        .map(|s| {
            let v = if s == spike_at {
                SPIKE
            } else {
                (s as f64 * 1e-3).sin()
            };
            serde_json::json!({ "step": s, "metrics": { "loss": v } })
        })
        .collect();
    bytes::Bytes::from(serde_json::to_vec(&serde_json::json!({ "steps": steps })).expect("json"))
}

pub async fn run(args: BenchReadArgs) -> anyhow::Result<()> {
    let mut dbs = Databases::new(args.targets.clone())?;
    println!("| store | steps | buckets | reads | median ms | min ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for kind in dbs.stores() {
        let server = Running::start(dbs.fresh(kind).await?).await?;
        let http = client();
        create_run(&http, &server, "read").await?;
        let spike_at = args.steps / 2 + 7;
        let url = server.url("/api/v1/runs/read/steps");
        eprintln!("{}: writing {} steps…", server.backend, args.steps);
        for first in (0..args.steps).step_by(INGEST_BATCH) {
            let n = INGEST_BATCH.min(args.steps - first);
            post_batch(&http, &url, body(first, n, spike_at), n as u64).await?;
        }
        let read_url = server.url(&format!(
            "/api/v1/runs/read/series?metric=loss&buckets={}",
            args.buckets
        ));
        let mut times: Vec<Duration> = Vec::new();
        for _ in 0..=args.repeats {
            let start = Instant::now();
            let resp = http.get(&read_url).send().await?.error_for_status()?;
            let bytes = resp.bytes().await?;
            times.push(start.elapsed());
            let series: DownsampledSeries = serde_json::from_slice(&bytes)?;
            anyhow::ensure!(
                series.buckets.len() == args.buckets as usize,
                "expected {} buckets, got {}",
                args.buckets,
                series.buckets.len()
            );
            anyhow::ensure!(
                series.buckets.iter().any(|b| b.max == Some(SPIKE)),
                "the one-step spike did not survive downsampling"
            );
        }
        // The first read warms caches; it is reported in max but not in the median.
        let first = times.remove(0);
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| redline {} | {} | {} | {} | {:.1} | {:.1} | {:.1} (first: {:.1}) |",
            server.backend,
            args.steps,
            args.buckets,
            times.len(),
            ms(times[times.len() / 2]),
            ms(times[0]),
            ms(times[times.len() - 1]),
            ms(first)
        );
    }
    Ok(())
}
