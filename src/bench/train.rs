//! `redline bench train`: DPO (sigmoid) steps per second against TRL on the same fixture, batch
//! and maximum length, and what the top-k metrics cost as a fraction of a step.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use redline_trainer::config::{TrainArgs, TrainConfig};

use crate::cli::BenchTrainArgs;

/// Steps per second over steps 2..=n (step 1 warms caches and allocators), from the step times
/// a run logged (`_time` for Redline, `step_seconds` for TRL).
fn rate_from_times(times: &[f64]) -> f64 {
    if times.len() < 2 {
        return f64::NAN;
    }
    (times.len() - 1) as f64 / (times[times.len() - 1] - times[0])
}

/// Redline's steps per second, and the share of step time the top-k metrics took, both over
/// steps 2..=n of one run.
fn redline_rate(
    model: &Path,
    args: &BenchTrainArgs,
    precompute_ref: bool,
) -> anyhow::Result<(f64, f64)> {
    let out = tempfile::tempdir()?;
    let config = TrainConfig::resolve(
        TrainArgs {
            model: Some(model.to_path_buf()),
            loss: Some("sigmoid".into()),
            lr: Some(1e-3),
            schedule: Some(redline_trainer::optim::Schedule::Constant),
            batch_size: Some(args.batch),
            max_length: Some(args.max_length),
            max_steps: Some(args.steps + 1),
            shuffle: Some(false),
            precompute_ref: Some(precompute_ref),
            output_dir: Some(out.path().to_path_buf()),
            run_id: Some("bench".into()),
            ..TrainArgs::default()
        },
        0,
    )?;
    redline_trainer::train::train(&config)?;
    let log = std::fs::read_to_string(out.path().join("metrics.jsonl"))?;
    let rows: Vec<serde_json::Value> = log
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let field = |v: &serde_json::Value, k: &str| v["metrics"][k].as_f64().unwrap_or(f64::NAN);
    let times: Vec<f64> = rows
        .iter()
        .map(|v| v["time"].as_f64().unwrap_or(f64::NAN))
        .collect();
    let measured = &rows[1.min(rows.len())..];
    let metric_seconds: f64 = measured.iter().map(|v| field(v, "time/topk_seconds")).sum();
    let step_seconds: f64 = measured.iter().map(|v| field(v, "time/step_seconds")).sum();
    Ok((rate_from_times(&times), metric_seconds / step_seconds))
}

/// TRL's rate from its per-step wall times. `script` is the peer's trl_dpo.py, or our f32 wrapper
/// of it (which takes the peers folder first).
fn trl_rate(
    model: &Path,
    args: &BenchTrainArgs,
    script: &Path,
    f32_wrapper: bool,
) -> anyhow::Result<f64> {
    let python = args.peers_venv.join("bin/python");
    let out = tempfile::NamedTempFile::new()?;
    let mut cmd = std::process::Command::new(&python);
    cmd.arg(script);
    if f32_wrapper {
        cmd.arg(&args.peers_dir);
    }
    let status = cmd
        .arg(model)
        .arg(out.path())
        .args([
            "--batch",
            &args.batch.to_string(),
            "--max-length",
            &args.max_length.to_string(),
        ])
        .args(["--steps", &(args.steps + 1).to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    let log = std::fs::read_to_string(out.path())?;
    let seconds: Vec<f64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .map(|v| v["step_seconds"].as_f64().unwrap_or(f64::NAN))
        })
        .collect::<Result<_, _>>()?;
    let measured = &seconds[1.min(seconds.len())..];
    Ok(measured.len() as f64 / measured.iter().sum::<f64>())
}

/// The fixture folder for `size`, made with the peers' make_fixture.py when not given.
fn fixture(size: &str, args: &BenchTrainArgs, scratch: &Path) -> anyhow::Result<PathBuf> {
    let dir = scratch.join(size);
    let status = std::process::Command::new(args.peers_venv.join("bin/python"))
        .arg(args.peers_dir.join("make_fixture.py"))
        .arg(&dir)
        .args(["--size", size])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("running make_fixture.py")?;
    if !status.success() {
        bail!("make_fixture.py --size {size} failed ({status})");
    }
    Ok(dir)
}

/// Run from the repository root: the peer script with bf16 autocast turned off.
const F32_WRAPPER: &str = "trainer/tests/fixtures/trl_reference.py";

pub fn run(args: &BenchTrainArgs) -> anyhow::Result<()> {
    super::peer_python(
        &args.peers_venv,
        F32_WRAPPER,
        "run ../shared/peers/setup.sh on it first (TRL is the other side of this benchmark)",
    )?;
    let scratch = tempfile::tempdir()?;
    println!(
        "| fixture | batch | max length | steps | Redline steps/s | TRL steps/s (bf16 autocast, as the peer script runs) \
         | TRL steps/s (f32) | Redline / TRL f32 | top-k share of a Redline step | Redline, reference precomputed |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for size in &args.sizes {
        let model = fixture(size, args, scratch.path())?;
        eprintln!("{size}: Redline…");
        let (ours, topk_share) = redline_rate(&model, args, false)?;
        let (precomputed, _) = redline_rate(&model, args, true)?;
        eprintln!("{size}: TRL…");
        let trl_bf16 = trl_rate(&model, args, &args.peers_dir.join("trl_dpo.py"), false)?;
        let trl_f32 = trl_rate(&model, args, Path::new(F32_WRAPPER), true)?;
        println!(
            "| {size} | {} | {} | {} | {ours:.2} | {trl_bf16:.2} | {trl_f32:.2} | {:.2}× | {:.1}% | {precomputed:.2} |",
            args.batch,
            args.max_length,
            args.steps,
            ours / trl_f32,
            topk_share * 100.0
        );
    }
    Ok(())
}
