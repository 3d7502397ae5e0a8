//! `redline bench runs-page`: the runs page (`/`) listing many runs at once, each with a few
//! series and, for one run in ten, a signal: time per request over loopback HTTP and the page's
//! weight. What it shows is how the page's cost grows with the number of runs listed.

use futures::{StreamExt, TryStreamExt};

use super::dashboard::timed;
use super::{Databases, Running, client, create_run_with, post_batch};
use crate::cli::BenchRunsPageArgs;

/// The series each run gets; the page shows the last `loss` and `rewards/margins`.
const METRICS: &[&str] = &["loss", "rewards/margins", "rewards/accuracies", "grad_norm"];
/// Requests in flight while the runs are written.
const WRITERS: usize = 8;

async fn write_run(
    http: &reqwest::Client,
    server: &Running,
    i: usize,
    steps: usize,
) -> anyhow::Result<()> {
    let id = format!("run-{i:05}");
    let config = serde_json::json!({ "loss": "sigmoid", "beta": 0.1 });
    let create = serde_json::json!({ "project": "bench", "tags": ["bench"], "config": config });
    create_run_with(http, server, &id, create).await?;
    let rows: Vec<serde_json::Value> = (0..steps)
        .map(|s| {
            let metrics: serde_json::Map<String, serde_json::Value> = METRICS
                .iter()
                .enumerate()
                .map(|(m, name)| ((*name).to_owned(), ((s + m + i) as f64 * 0.01).into()))
                .collect();
            serde_json::json!({ "step": s, "metrics": metrics })
        })
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({ "steps": rows }))?;
    let url = server.url(&format!("/api/v1/runs/{id}/steps"));
    post_batch(http, &url, body.into(), (steps * METRICS.len()) as u64).await?;
    if i.is_multiple_of(10) {
        let signal = serde_json::json!({ "kind": "checkpoint", "reason": "bench" });
        http.post(server.url(&format!("/api/v1/runs/{id}/signals")))
            .json(&signal)
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(())
}

pub async fn run(args: BenchRunsPageArgs) -> anyhow::Result<()> {
    let BenchRunsPageArgs {
        targets,
        runs,
        steps,
        repeats,
    } = args;
    let mut dbs = Databases::new(targets)?;
    println!("| store | runs listed | requests | median ms | p90 ms | bytes |");
    println!("|---|---:|---:|---:|---:|---:|");
    for kind in dbs.stores() {
        let server = Running::start(dbs.fresh(kind).await?).await?;
        let http = client();
        eprintln!(
            "{}: writing {runs} runs × {} series × {steps} steps…",
            server.backend,
            METRICS.len()
        );
        futures::stream::iter(0..runs)
            .map(|i| write_run(&http, &server, i, steps))
            .buffer_unordered(WRITERS)
            .try_collect::<()>()
            .await?;
        let url = server.url(&format!("/?limit={}", runs.min(1000)));
        let (times, bytes, page) = timed(&http, &url, repeats).await?;
        let listed = page.matches("<tr data-run=").count();
        anyhow::ensure!(
            listed == runs.min(1000),
            "the runs page listed {listed} runs, expected {}",
            runs.min(1000)
        );
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        println!(
            "| redline {} | {listed} | {} | {:.1} | {:.1} | {bytes} |",
            server.backend,
            times.len(),
            ms(times[times.len() / 2]),
            ms(times[(times.len() * 9 / 10).min(times.len() - 1)]),
        );
    }
    Ok(())
}
