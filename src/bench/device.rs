//! `redline bench device`: a device (a GPU) held to the CPU and timed. On a tiny fixture, in f32:
//! the logits of one batch, and five DPO steps (loss, log-probabilities, gradient norm), each
//! within a tolerance of the CPU's; then the top-k metrics on a large vocabulary (the device's
//! figures against the CPU's, and their time), and greedy generation in tokens per second. With
//! `--device cpu` every part runs against itself: a dry run of the command where no GPU is.

use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use redline_trainer::config::{DeviceSpec, Precision};
use redline_trainer::data::PairTokenizer;
use redline_trainer::generate::{Sampling, complete};
use redline_trainer::metrics::topk_stats_rows;
use redline_trainer::model::{load_weights, trainable_model};

use super::train::Trial;
use crate::cli::BenchDeviceArgs;

pub fn run(args: &BenchDeviceArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let mut worst = 0.0f64;
    println!(
        "## {} against the CPU ({}, f32)",
        args.device,
        args.fixture.display()
    );
    println!();
    println!("| what | CPU | {} | difference (relative) |", args.device);
    println!("|---|---:|---:|---:|");
    let logits = |dev: &Device| -> anyhow::Result<Tensor> {
        let loaded = load_weights(&args.fixture, dev)?;
        let (model, _) = trainable_model(&loaded.config, Some(&loaded.tensors), dev)?;
        let v = loaded.config.vocab_size as u32;
        let ids: Vec<u32> = (0..2 * 16).map(|i| (i * 7919 + 13) % v).collect();
        let ids = Tensor::from_vec(ids, (2, 16), dev)?;
        Ok(model.forward(&ids)?.to_device(&Device::Cpu)?)
    };
    let (cpu, dev) = (logits(&Device::Cpu)?, logits(&device)?);
    let diff = f64::from((&cpu - &dev)?.abs()?.max_all()?.to_scalar::<f32>()?);
    let largest = f64::from(cpu.abs()?.max_all()?.to_scalar::<f32>()?);
    let rel = diff / largest.max(1.0);
    worst = worst.max(rel);
    println!(
        "| logits (the CPU's largest magnitude; the largest difference) | {largest:.4} | | {rel:.2e} |"
    );

    let trial = |dev: DeviceSpec| {
        Trial {
            model: &args.fixture,
            device: dev,
            dtype: Precision::F32,
            batch: 4,
            max_length: 64,
            steps: args.steps,
            precompute_ref: false,
        }
        .run()
    };
    let (cpu_rows, dev_rows) = (trial(DeviceSpec::Cpu)?, trial(args.device)?);
    anyhow::ensure!(
        cpu_rows.len() == dev_rows.len(),
        "the CPU logged {} rows, the device {}",
        cpu_rows.len(),
        dev_rows.len()
    );
    for (c, d) in cpu_rows.iter().zip(&dev_rows) {
        for name in ["loss", "logps/chosen", "logps/rejected", "grad_norm"] {
            let (Some(x), Some(y)) = (c["metrics"][name].as_f64(), d["metrics"][name].as_f64())
            else {
                continue;
            };
            let rel = (x - y).abs() / x.abs().max(1.0);
            worst = worst.max(if rel.is_nan() { f64::INFINITY } else { rel });
            println!(
                "| step {} {name} | {x:.6} | {y:.6} | {rel:.2e} |",
                c["step"]
            );
        }
    }
    println!();
    let within = worst <= args.tolerance;
    println!(
        "Largest difference {worst:.2e}: {} the tolerance {:.0e}.",
        if within { "within" } else { "OUTSIDE" },
        args.tolerance
    );
    println!();
    topk(args, &device)?;
    if let Some(model) = &args.gen_model {
        generation(args, model, &device)?;
    }
    if !within {
        bail!("{} differs from the CPU by {worst:.2e}", args.device);
    }
    Ok(())
}

/// The top-k metrics on `rows` positions of a `vocab`-token distribution: the device's figures
/// against the CPU kernel's, and the device's time per call.
fn topk(args: &BenchDeviceArgs, device: &Device) -> anyhow::Result<()> {
    let (n, v, k) = (args.rows, args.vocab, args.k);
    let values: Vec<f32> = (0..n * v)
        .map(|i| 6.0 * ((i as f32) * 0.0137).sin() * ((i as f32) * 0.000_91).cos())
        .collect();
    let cpu_logits = Tensor::from_vec(values, (n, v), &Device::Cpu)?;
    let cpu_weights = Tensor::ones(n, DType::F32, &Device::Cpu)?;
    let want = topk_stats_rows(&cpu_logits, &cpu_weights, k)?;
    let (logits, weights) = (
        cpu_logits.to_device(device)?,
        cpu_weights.to_device(device)?,
    );
    let got = topk_stats_rows(&logits, &weights, k)?; // also the warm-up
    let runs = 5;
    let start = Instant::now();
    for _ in 0..runs {
        // Each call ends reading its figures back, which waits for the device.
        topk_stats_rows(&logits, &weights, k)?;
    }
    let seconds = start.elapsed().as_secs_f64() / f64::from(runs);
    println!(
        "Top-k metrics (k = {k}) over {n} positions of a {v}-token vocabulary on {}: {:.2} ms a \
         call (mean of {runs}); mass {:.6} (CPU {:.6}), entropy {:.6} bits (CPU {:.6}), top-1 \
         {:.6} (CPU {:.6}).",
        args.device,
        seconds * 1e3,
        got.mass,
        want.mass,
        got.entropy,
        want.entropy,
        got.top1,
        want.top1
    );
    let off = (got.mass - want.mass)
        .abs()
        .max((got.entropy - want.entropy).abs())
        .max((got.top1 - want.top1).abs());
    if off > 1e-3 {
        bail!(
            "the top-k metrics on {} differ from the CPU's by {off:.2e}",
            args.device
        );
    }
    println!();
    Ok(())
}

/// Greedy generation (KV cache) from `model` on `device`: new tokens per second.
fn generation(
    args: &BenchDeviceArgs,
    model: &std::path::Path,
    device: &Device,
) -> anyhow::Result<()> {
    let loaded = load_weights(model, device)?;
    let cfg = loaded.config.clone();
    let (decoder, _params) = trainable_model(&cfg, Some(&loaded.tensors), device)?;
    drop(loaded);
    let tok = PairTokenizer::for_model(model, cfg.family, cfg.eos_token_id)?;
    let prompts = super::generate::read_prompts(&args.gen_prompts, &tok)
        .with_context(|| format!("reading {}", args.gen_prompts.display()))?;
    let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let greedy = Sampling {
        temperature: 0.0,
        top_p: 1.0,
        max_new_tokens: args.max_new_tokens,
    };
    let go = || device.with_context(|| complete(&decoder, &refs, &greedy, cfg.eos_token_id, 0));
    go()?;
    let start = Instant::now();
    let out = go()?;
    let seconds = start.elapsed().as_secs_f64();
    let tokens: usize = out.iter().map(Vec::len).sum();
    println!(
        "Generation on {} ({}, f32, greedy, KV cache): {} prompts, {tokens} new tokens in \
         {seconds:.2} s: {:.0} tokens/s (the second of two runs).",
        args.device,
        model.display(),
        prompts.len(),
        tokens as f64 / seconds
    );
    Ok(())
}
