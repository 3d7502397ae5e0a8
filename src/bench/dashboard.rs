//! `redline bench dashboard`: a run page and single charts over series of a million steps each,
//! timed over loopback HTTP (an upper bound on server time), and the page's weight.

use std::time::{Duration, Instant};

use redline_core::catalogue::{
    BETA, ENTROPY, EVAL_PREFIX, EVAL_SCORE, GRAD_NORM, KL_CHOSEN, LEARNING_RATE, LOGPS, LOGPS_MEAN,
    LOSS, NLL_ALPHA, REWARD_ACCURACY, REWARD_CHOSEN, REWARD_MARGIN, REWARD_REJECTED, Side,
    TOPK_ENTROPY, TOPK_MASS,
};

use super::{Databases, Running, client, create_run, post_batch};
use crate::cli::BenchDashboardArgs;

/// The series of a trainer run that the run page charts: 13 groups and 7 `eval/` charts.
fn metrics() -> Vec<String> {
    let trained = [
        LOSS.name,
        REWARD_CHOSEN.name,
        REWARD_REJECTED.name,
        REWARD_MARGIN.name,
        REWARD_ACCURACY.name,
        LOGPS.on(Side::Chosen).name,
        LOGPS.on(Side::Rejected).name,
        LOGPS_MEAN.on(Side::Chosen).name,
        LOGPS_MEAN.on(Side::Rejected).name,
        TOPK_ENTROPY.on(Side::Chosen).name,
        TOPK_ENTROPY.on(Side::Rejected).name,
        TOPK_ENTROPY.on(Side::Generated).name,
        TOPK_MASS.on(Side::Chosen).name,
        TOPK_MASS.on(Side::Rejected).name,
        TOPK_MASS.on(Side::Generated).name,
        ENTROPY.name,
        KL_CHOSEN.name,
        GRAD_NORM.name,
        LEARNING_RATE.name,
        BETA.name,
        NLL_ALPHA.name,
    ];
    let held_out = [
        LOSS.name,
        REWARD_MARGIN.name,
        LOGPS.on(Side::Chosen).name,
        TOPK_ENTROPY.on(Side::Chosen).name,
        TOPK_MASS.on(Side::Chosen).name,
        KL_CHOSEN.name,
    ];
    let twins = held_out.iter().map(|n| format!("{EVAL_PREFIX}{n}"));
    trained
        .iter()
        .map(|n| (*n).to_owned())
        .chain(twins)
        .chain([EVAL_SCORE.name.to_owned()])
        .collect()
}
const CHARTS: usize = 20;
const INGEST_STEPS: usize = 4_000;

fn body(first: usize, n: usize) -> bytes::Bytes {
    let names = metrics();
    let steps: Vec<serde_json::Value> = (first..first + n)
        .map(|s| {
            let metrics: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .enumerate()
                .map(|(i, m)| (m.clone(), ((s as f64 * 1e-4 + i as f64).sin()).into()))
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
            metrics().len()
        );
        for first in (0..args.steps).step_by(INGEST_STEPS) {
            let n = INGEST_STEPS.min(args.steps - first);
            post_batch(&http, &url, body(first, n), (n * metrics().len()) as u64).await?;
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let row = |what: &str, (times, bytes, _): &(Vec<Duration>, usize, String)| {
            println!(
                "| redline {} | {} | {} | {what} | {} | {:.1} | {:.1} | {bytes} |",
                server.backend,
                args.steps,
                metrics().len(),
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
