//! `redline bench train`: DPO (sigmoid) steps per second against TRL on the same fixture, batch
//! and maximum length, and what the top-k metrics cost as a fraction of a step. With `--model`:
//! one model on one device (a GPU), in f32 or bf16, with tokens per second and model FLOP
//! utilisation, TRL on the same device and precision beside it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use redline_trainer::config::{DeviceSpec, Precision, TrainArgs, TrainConfig};
use redline_trainer::data::{PairTokenizer, load_pairs};
use redline_trainer::model::ModelConfig;

use crate::cli::BenchTrainArgs;

/// A short DPO (sigmoid, constant lr 1e-3, file order) run of `model` on `device` in `dtype`:
/// the rows of its metrics.jsonl.
pub(super) struct Trial<'a> {
    pub model: &'a Path,
    pub device: DeviceSpec,
    pub dtype: Precision,
    pub batch: usize,
    pub max_length: usize,
    pub steps: usize,
    pub precompute_ref: bool,
}

impl Trial<'_> {
    pub(super) fn run(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = tempfile::tempdir()?;
        let config = TrainConfig::resolve(
            TrainArgs {
                model: Some(self.model.to_path_buf()),
                loss: Some("sigmoid".into()),
                lr: Some(1e-3),
                schedule: Some(redline_trainer::optim::Schedule::Constant),
                batch_size: Some(self.batch),
                max_length: Some(self.max_length),
                max_steps: Some(self.steps),
                shuffle: Some(false),
                precompute_ref: Some(self.precompute_ref),
                device: Some(self.device),
                dtype: Some(self.dtype),
                output_dir: Some(out.path().to_path_buf()),
                run_id: Some("bench".into()),
                ..TrainArgs::default()
            },
            0,
        )?;
        redline_trainer::train::train(&config)?;
        let log = std::fs::read_to_string(out.path().join("metrics.jsonl"))?;
        Ok(log
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?)
    }
}

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
    let rows = Trial {
        model,
        device: args.device,
        dtype: args.dtype,
        batch: args.batch,
        max_length: args.max_length,
        steps: args.steps + 1,
        precompute_ref,
    }
    .run()?;
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
    if script == Path::new(DEVICE_WRAPPER) {
        let (device, dtype) = (args.device.to_string(), args.dtype.to_string());
        cmd.args(["--device", &device, "--dtype", &dtype]);
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

/// Run from the repository root: the peer script on a device, with bf16 autocast or in f32.
const DEVICE_WRAPPER: &str = "scripts/trl_dpo_device.py";

pub fn run(args: &BenchTrainArgs) -> anyhow::Result<()> {
    if let Some(model) = &args.model {
        return run_model(model, args);
    }
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

/// `--model`: one model on one device, Redline and (unless `--no-trl`) TRL, with tokens per second
/// and MFU.
fn run_model(model: &Path, args: &BenchTrainArgs) -> anyhow::Result<()> {
    if !args.no_trl {
        super::peer_python(
            &args.peers_venv,
            DEVICE_WRAPPER,
            "a venv (or a folder whose bin/python is a Python) with torch, transformers and TRL",
        )?;
    }
    // The configuration alone: the weights are the trial's to load.
    let config = ModelConfig::from_file(&model.join("config.json"))?;
    let work = Work::of(&config, model, args)?;
    eprintln!("Redline on {} in {}…", args.device, args.dtype);
    let (ours, topk_share) = redline_rate(model, args, false)?;
    let trl = if args.no_trl {
        None
    } else {
        eprintln!("TRL on {} in {}…", args.device, args.dtype);
        Some(trl_rate(model, args, Path::new(DEVICE_WRAPPER), true)?)
    };
    println!(
        "| model | device | dtype | batch | max length | steps | tokens/step | Redline steps/s | Redline tokens/s \
         | Redline TFLOP/s | Redline MFU | top-k share | TRL steps/s | TRL MFU | Redline / TRL |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mfu = |rate: f64| 100.0 * rate * work.flops / (args.peak_tflops * 1e12);
    let (trl_rate, trl_mfu, ratio) = trl.map_or_else(
        || ("—".to_owned(), "—".to_owned(), "—".to_owned()),
        |t| {
            (
                format!("{t:.2}"),
                format!("{:.1}%", mfu(t)),
                format!("{:.2}×", ours / t),
            )
        },
    );
    println!(
        "| {} | {} | {} | {} | {} | {} | {:.0} | {ours:.2} | {:.0} | {:.1} | {:.1}% | {:.1}% | {trl_rate} | {trl_mfu} | {ratio} |",
        model.file_name().unwrap_or_default().to_string_lossy(),
        args.device,
        args.dtype,
        args.batch,
        args.max_length,
        args.steps,
        work.tokens,
        ours * work.tokens,
        ours * work.flops / 1e12,
        mfu(ours),
        topk_share * 100.0,
    );
    println!();
    println!(
        "FLOPs per step: Σ over the step's 2·batch rows of r real tokens (prompt + completion, cut \
         at max length) of 8·N·r + 16·L·d·r² (policy forward and backward 6·N·r + 12·L·d·r², \
         reference forward 2·N·r + 4·L·d·r²), N = {:.1} M parameters in matrix products (the tied \
         output projection counted once), L = {} layers, d = {} attention width: {:.2} TFLOP per \
         step, against a peak of {} TFLOP/s. Tokens are real ones, padding not counted.",
        work.params / 1e6,
        config.num_layers,
        config.num_heads * config.head_dim,
        work.flops / 1e12,
        args.peak_tflops,
    );
    Ok(())
}

/// What one measured step computes: real tokens, and FLOPs (see `run_model`'s note).
struct Work {
    tokens: f64,
    flops: f64,
    params: f64,
}

impl Work {
    fn of(config: &ModelConfig, model: &Path, args: &BenchTrainArgs) -> anyhow::Result<Self> {
        let c = config;
        let params = matmul_params(c);
        let tok = PairTokenizer::for_model(model, c.family, c.eos_token_id)?;
        let data = model.join("train.jsonl");
        let (pairs, _) = load_pairs(&data, &tok, args.max_length)
            .with_context(|| format!("reading {}", data.display()))?;
        anyhow::ensure!(!pairs.is_empty(), "{}: no pairs", data.display());
        // The measured steps are 2..=steps+1 of a run in file order, wrapping round the data.
        let (mut tokens, mut flops) = (0.0, 0.0);
        let (layers, width) = (c.num_layers as f64, (c.num_heads * c.head_dim) as f64);
        for i in args.batch..(args.steps + 1) * args.batch {
            let p = &pairs[i % pairs.len()];
            for completion in [&p.chosen, &p.rejected] {
                let r = (p.prompt.len() + completion.len()).min(args.max_length) as f64;
                tokens += r;
                flops += 8.0 * params * r + 16.0 * layers * width * r * r;
            }
        }
        let steps = args.steps as f64;
        Ok(Self {
            tokens: tokens / steps,
            flops: flops / steps,
            params,
        })
    }
}

/// The parameters that take part in matrix products: every projection, and the output
/// projection once (tied to the embeddings or not); not the embedding lookup, norms or biases.
fn matmul_params(c: &ModelConfig) -> f64 {
    let attention = c.hidden_size * (2 * c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
    let mlp = 3 * c.hidden_size * c.intermediate_size;
    let head = c.vocab_size * c.hidden_size;
    (c.num_layers * (attention + mlp) + head) as f64
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use redline_trainer::model::load_weights;

    use super::*;

    /// The count behind the MFU figures is the fixtures' own matrices, counted from their files.
    #[test]
    fn matmul_params_count_the_checkpoints_matrices() {
        for arch in ["llama", "qwen2"] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("trainer/tests/fixtures/tiny-{arch}"));
            let loaded = load_weights(&dir, &Device::Cpu).unwrap();
            let c = &loaded.config;
            let counted: usize = loaded
                .tensors
                .iter()
                .filter(|(name, t)| {
                    t.rank() == 2 && (c.tie_word_embeddings || !name.contains("embed_tokens"))
                })
                .map(|(_, t)| t.elem_count())
                .sum();
            assert_eq!(matmul_params(c), counted as f64, "{arch}");
        }
    }
}
