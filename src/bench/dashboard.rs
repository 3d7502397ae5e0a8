//! `redline bench dashboard`: a run page and single charts over series of a million steps each,
//! timed over loopback HTTP (an upper bound on server time), and the page's weight.

use std::time::{Duration, Instant};

use super::{Databases, Running, client, create_run, post_batch};
use crate::cli::BenchDashboardArgs;

/// The series of a trainer run that the run page charts: 13 groups and 7 `eval/` charts.
const METRICS: &[&str] = &[
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "logps_mean/chosen",
    "logps_mean/rejected",
    "topk_entropy/chosen",
    "topk_entropy/rejected",
    "topk_entropy/generated",
    "topk_mass/chosen",
    "topk_mass/rejected",
    "topk_mass/generated",
    "entropy",
    "kl/chosen",
    "grad_norm",
    "learning_rate",
    "beta",
    "nll_alpha",
    "eval/loss",
    "eval/score",
    "eval/rewards/margins",
    "eval/logps/chosen",
    "eval/topk_entropy/chosen",
    "eval/topk_mass/chosen",
    "eval/kl/chosen",
];
const CHARTS: usize = 20;
const INGEST_STEPS: usize = 4_000;

fn body(first: usize, n: usize) -> bytes::Bytes {
    let steps: Vec<serde_json::Value> = (first..first + n)
        .map(|s| {
            let metrics: serde_json::Map<String, serde_json::Value> = METRICS
                .iter()
                .enumerate()
                .map(|(i, m)| ((*m).to_owned(), ((s as f64 * 1e-4 + i as f64).sin()).into()))
                .collect();
            serde_json::json!({ "step": s, "metrics": metrics })
        })
        .collect();
    bytes::Bytes::from(serde_json::to_vec(&serde_json::json!({ "steps": steps })).expect("json"))
}

/// `repeats` timed GETs of `url` (after one untimed), sorted, with the last body and its length.
pub(super) async fn timed(
    http: &reqwest::Client,
    url: &str,
    repeats: usize,
) -> anyhow::Result<(Vec<Duration>, usize, String)> {
    let mut times = Vec::new();
    let mut last = String::new();
    // The first request warms caches and is not counted.
    for _ in 0..=repeats {
        let start = Instant::now();
        let resp = http.get(url).send().await?.error_for_status()?;
        last = resp.text().await?;
        times.push(start.elapsed());
    }
    times.remove(0);
    times.sort();
    Ok((times, last.len(), last))
}

pub async fn run(args: BenchDashboardArgs) -> anyhow::Result<()> {
    let mut dbs = Databases::new(args.targets.clone())?;
    println!(
        "| store | steps per series | series | what | requests | median ms | p90 ms | bytes |"
    );
    println!("|---|---:|---:|---|---:|---:|---:|---:|");
    for kind in dbs.stores() {
        let server = Running::start(dbs.fresh(kind).await?).await?;
        let http = client();
        create_run(&http, &server, "dash").await?;
        let url = server.url("/api/v1/runs/dash/steps");
        eprintln!(
            "{}: writing {} steps × {} series…",
            server.backend,
            args.steps,
            METRICS.len()
        );
        for first in (0..args.steps).step_by(INGEST_STEPS) {
            let n = INGEST_STEPS.min(args.steps - first);
            post_batch(&http, &url, body(first, n), (n * METRICS.len()) as u64).await?;
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let row = |what: &str, (times, bytes, _): &(Vec<Duration>, usize, String)| {
            println!(
                "| redline {} | {} | {} | {what} | {} | {:.1} | {:.1} | {bytes} |",
                server.backend,
                args.steps,
                METRICS.len(),
                times.len(),
                ms(times[times.len() / 2]),
                ms(times[(times.len() * 9 / 10).min(times.len() - 1)]),
            );
        };
        let page = timed(&http, &server.url("/runs/dash"), args.repeats).await?;
        let charts = page.2.matches("<svg").count();
        anyhow::ensure!(
            charts == CHARTS,
            "the run page drew {charts} charts, expected {CHARTS}"
        );
        row(&format!("run page, {CHARTS} charts"), &page);
        let one = timed(
            &http,
            &server.url("/runs/dash/chart.svg?chart=loss"),
            args.repeats,
        )
        .await?;
        row("one chart SVG (1 series)", &one);
        let three = timed(
            &http,
            &server.url("/runs/dash/chart.svg?chart=rewards"),
            args.repeats,
        )
        .await?;
        row("one chart SVG (3 series)", &three);
        let zoom = timed(
            &http,
            &server.url("/runs/dash/chart.svg?chart=loss&from=500000&to=501000"),
            args.repeats,
        )
        .await?;
        row("one chart SVG, zoomed to 1,001 steps", &zoom);
    }
    Ok(())
}
