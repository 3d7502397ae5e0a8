//! `redline bench trl-metrics`: what `RedlineDPOTrainer`'s over-optimisation metrics add to a TRL
//! DPO step. The measuring happens in Python (clients/python/bench/trl_metrics.py: TRL's own
//! `DPOTrainer` and the Redline one take turns on the same model and batches); this prints its
//! figures as a table for docs/benchmarks.md.

use std::process::Command;

use anyhow::{Context, bail};

use crate::cli::BenchTrlMetricsArgs;

/// The measuring script; run from the repository root.
const SCRIPT: &str = "clients/python/bench/trl_metrics.py";

pub fn run(args: &BenchTrlMetricsArgs) -> anyhow::Result<()> {
    let python = super::peer_python(
        &args.peers_venv,
        SCRIPT,
        "`scripts/python-env.sh` builds one and prints its path, for --peers-venv (or run \
         ../shared/peers/setup.sh on it)",
    )?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    eprintln!(
        "training TRL's DPOTrainer and RedlineDPOTrainer in turns ({} × {} steps each)…",
        args.runs, args.steps
    );
    let out = Command::new(&python)
        .arg(SCRIPT)
        .args(["--steps", &args.steps.to_string()])
        .args(["--runs", &args.runs.to_string()])
        .args(["--threads", &threads.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {SCRIPT}"))?;
    if !out.status.success() {
        bail!("{SCRIPT} failed ({}); its errors are above", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rfind(|l| l.starts_with('{')).unwrap_or("");
    let r: serde_json::Value =
        serde_json::from_str(last).with_context(|| format!("{SCRIPT} printed {last:?}"))?;
    let num = |k: &str| r[k].as_f64().with_context(|| format!("{SCRIPT}: no {k}"));
    println!(
        "TRL {} / transformers {} / torch {}, {} threads, {} timed steps per side",
        r["trl"], r["transformers"], r["torch"], r["threads"], r["steps_per_side"]
    );
    println!(
        "| TRL step s (median) | RedlineDPOTrainer step s (median) | ratio | metrics s per step (median) | metrics / TRL step |"
    );
    println!("|---:|---:|---:|---:|---:|");
    println!(
        "| {:.4} | {:.4} | {:.3}× | {:.5} | {:.2}% |",
        num("trl_step_median_s")?,
        num("redline_step_median_s")?,
        num("step_ratio")?,
        num("metrics_median_s")?,
        100.0 * num("metrics_share_of_trl_step")?
    );
    Ok(())
}
