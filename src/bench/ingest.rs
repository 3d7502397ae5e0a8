//! `redline bench ingest`: points per second accepted over HTTP and stored.

use std::fmt::Write as _;
use std::time::Instant;

use bytes::Bytes;

use redline_core::catalogue::{
    GRAD_NORM, LOGPS, LOSS, REWARD_ACCURACY, REWARD_CHOSEN, REWARD_MARGIN, REWARD_REJECTED, Side,
    TOPK_ENTROPY, TOPK_MASS,
};

use super::{Databases, Running, client, create_run_with, fmt_rate, mlflow, post_batch};
use crate::cli::{BenchIngestArgs, BenchRules, BenchStore};

/// The metric names of a DPO step, as the MLflow peer script uses them.
const NAMES: [&str; 10] = [
    LOSS.name,
    REWARD_CHOSEN.name,
    REWARD_REJECTED.name,
    REWARD_MARGIN.name,
    REWARD_ACCURACY.name,
    LOGPS.on(Side::Chosen).name,
    LOGPS.on(Side::Rejected).name,
    TOPK_ENTROPY.on(Side::Chosen).name,
    TOPK_MASS.on(Side::Chosen).name,
    GRAD_NORM.name,
];

struct Row {
    store: &'static str,
    rules: BenchRules,
    batch: usize,
    clients: usize,
    requests: usize,
    points: usize,
    seconds: f64,
}

impl Row {
    fn rate(&self) -> f64 {
        self.points as f64 / self.seconds
    }
}

fn metric_name(i: usize) -> String {
    NAMES
        .get(i)
        .map_or_else(|| format!("metric_{i}"), |n| (*n).to_owned())
}

/// The JSON body of `batch` steps from `first_step`, `metrics` values each.
fn body(first_step: usize, batch: usize, metrics: usize) -> Bytes {
    let names: Vec<String> = (0..metrics).map(metric_name).collect();
    let mut s = String::with_capacity(batch * (24 + metrics * 28));
    s.push_str(r#"{"steps":["#);
    for step in first_step..first_step + batch {
        if step > first_step {
            s.push(',');
        }
        let _ = write!(s, r#"{{"step":{step},"metrics":{{"#);
        for (i, n) in names.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, r#""{n}":{}"#, 0.5 + step as f64 * 1e-4 + i as f64);
        }
        s.push_str("}}");
    }
    s.push_str("]}");
    Bytes::from(s)
}

async fn measure(
    dbs: &mut Databases,
    kind: BenchStore,
    batch: usize,
    clients: usize,
    rules: BenchRules,
    args: &BenchIngestArgs,
) -> anyhow::Result<Row> {
    let server = Running::start(dbs.fresh(kind).await?).await?;
    let http = client();
    let per_request = batch * args.metrics;
    let requests = (args.points / per_request).clamp(1, args.max_requests);
    // Bodies are built before the clock starts: the server is what is measured.
    let bodies: Vec<Bytes> = (0..requests)
        .map(|r| body(r * batch, batch, args.metrics))
        .collect();
    let mut urls = Vec::new();
    for c in 0..clients {
        let run = format!("bench-{batch}-{c}");
        let body = match rules {
            BenchRules::Presets => serde_json::json!({ "project": "bench" }),
            BenchRules::None => serde_json::json!({ "project": "bench", "rules": [] }),
        };
        create_run_with(&http, &server, &run, body).await?;
        urls.push(server.url(&format!("/api/v1/runs/{run}/steps")));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for url in urls {
        let (http, bodies) = (http.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            for b in bodies {
                post_batch(&http, &url, b, per_request as u64).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let seconds = start.elapsed().as_secs_f64();
    let row = Row {
        store: server.backend,
        rules,
        batch,
        clients,
        requests: requests * clients,
        points: requests * clients * per_request,
        seconds,
    };
    eprintln!(
        "{:<8} rules {:<7} batch {:>6} × {} metrics, {} client(s): {} points/s",
        row.store,
        format!("{rules:?}").to_lowercase(),
        batch,
        args.metrics,
        clients,
        fmt_rate(row.rate())
    );
    Ok(row)
}

pub async fn run(args: BenchIngestArgs) -> anyhow::Result<()> {
    let mut dbs = Databases::new(args.targets.clone())?;
    let mut rows = Vec::new();
    for kind in dbs.stores() {
        let mut shapes = vec![];
        for &batch in &args.batch_sizes {
            shapes.push((batch, 1));
        }
        if args.clients > 1 {
            shapes.extend(args.batch_sizes.iter().map(|&b| (b, args.clients)));
        }
        for (batch, clients) in shapes {
            // Interleaved, so drift on a busy machine hits every configuration alike.
            let mut runs: Vec<Vec<Row>> = args.rules.iter().map(|_| Vec::new()).collect();
            for _ in 0..args.repeats.max(1) {
                for (i, &rules) in args.rules.iter().enumerate() {
                    runs[i].push(measure(&mut dbs, kind, batch, clients, rules, &args).await?);
                }
            }
            for mut r in runs {
                r.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
                let mid = r.len() / 2;
                rows.push(r.swap_remove(mid));
            }
        }
    }
    let peers = mlflow::measure_all(&mut dbs, &args).await?;

    println!(
        "| store | rules | steps per request | clients | requests | points | seconds | points/s |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| redline {} | {} | {} | {} | {} | {} | {:.3} | {} |",
            r.store,
            format!("{:?}", r.rules).to_lowercase(),
            r.batch,
            r.clients,
            r.requests,
            r.points,
            r.seconds,
            fmt_rate(r.rate())
        );
    }
    for p in &peers {
        println!(
            "| mlflow {} | - | 100 | 1 | {} | {} | {:.3} | {} |",
            p.backend,
            p.points / 1000,
            p.points,
            p.seconds,
            fmt_rate(p.points_per_second)
        );
    }
    if peers.is_empty() {
        println!(
            "\nMLflow not measured: no peers venv at {} (run ../shared/peers/setup.sh {0}).",
            args.peers_venv.display()
        );
    }
    for with in rows.iter().filter(|r| r.rules == BenchRules::Presets) {
        let without = rows.iter().find(|r| {
            r.rules == BenchRules::None
                && (r.store, r.batch, r.clients) == (with.store, with.batch, with.clients)
        });
        if let Some(without) = without {
            println!(
                "{} batch {} × {} client(s): with presets {:.1}% of the throughput without rules",
                with.store,
                with.batch,
                with.clients,
                100.0 * with.rate() / without.rate()
            );
        }
    }
    for p in &peers {
        let same_shape = rows
            .iter()
            .find(|r| r.store == p.backend && r.batch == 100 && r.clients == 1);
        let best = rows
            .iter()
            .filter(|r| r.store == p.backend && r.clients == 1)
            .max_by(|a, b| a.rate().total_cmp(&b.rate()));
        if let (Some(same), Some(best)) = (same_shape, best) {
            println!(
                "\n{}: Redline / MLflow at MLflow's request shape (100 steps × 10 metrics): {:.1}×; \
                 Redline at batch {} / MLflow at its 1,000-point maximum: {:.1}×",
                p.backend,
                same.rate() / p.points_per_second,
                best.batch,
                best.rate() / p.points_per_second
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn bench_bodies_are_valid_step_batches() {
        let b = super::body(5, 3, 12);
        let batch: redline_core::wire::StepBatch = serde_json::from_slice(&b).unwrap();
        let points = batch.into_points().unwrap();
        assert_eq!(points.len(), 36);
        assert_eq!(points.max_step(), Some(7));
    }
}
