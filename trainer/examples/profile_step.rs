//! Times the parts of one DPO step on a model folder: `cargo run --release -p redline-trainer
//! --example profile_step -- MODEL_DIR [STEPS]`.

use std::time::Instant;

/// As the `redline` binary: tensors are allocated and freed by the thousand per step.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::Device;
use redline_trainer::data::{PairTokenizer, collate, load_pairs};
use redline_trainer::losses::LossKind;
use redline_trainer::metrics::token_logps;
use redline_trainer::model::{load_weights, reference_model, trainable_model};
use redline_trainer::optim::{AdamW, clip_coefficient, grad_norm};
use redline_trainer::step::{Reference, StepSettings, forward};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let steps: usize = args.get(2).map_or(10, |s| s.parse().unwrap());
    let dev = Device::Cpu;
    let loaded = load_weights(&dir, &dev)?;
    let (policy, varmap) = trainable_model(&loaded.config, Some(&loaded.tensors), &dev)?;
    let reference = reference_model(&loaded.config, &loaded.tensors, &dev)?;
    let tok = PairTokenizer::for_model(&dir, loaded.config.family, loaded.config.eos_token_id)?;
    let (pairs, _) = load_pairs(&dir.join("train.jsonl"), &tok, 64)?;
    let mut opt = AdamW::new(&varmap, 0.0)?;
    let vars = opt.vars();
    let settings = StepSettings {
        loss: LossKind::Sigmoid,
        beta: 0.1,
        nll_alpha: 0.0,
        top_k: 10,
    };
    let mut t = [0.0f64; 6];
    // As `train` runs a step: inside candle's CPU thread pool.
    dev.with_context(|| -> anyhow::Result<()> {
        for i in 0..=steps {
            let batch = collate(&pairs[i * 8..(i + 1) * 8], 64, 3, &dev)?;
            let s0 = Instant::now();
            let logits = policy.forward(&batch.input_ids)?;
            let lp = token_logps(&logits, &batch.input_ids)?;
            let s1 = Instant::now();
            let _ = reference.forward(&batch.input_ids)?;
            let s2 = Instant::now();
            let r = forward(&policy, Reference::Model(&reference), &batch, &settings)?;
            let s3 = Instant::now();
            let grads = r.loss.backward()?;
            let s4 = Instant::now();
            let norm = grad_norm(&grads, &vars)?;
            let s5 = Instant::now();
            opt.step(&grads, 1e-3, clip_coefficient(norm, 1.0))?;
            let s6 = Instant::now();
            drop(lp);
            if i > 0 {
                for (k, (a, b)) in [(s0, s1), (s1, s2), (s2, s3), (s3, s4), (s4, s5), (s5, s6)]
                    .iter()
                    .enumerate()
                {
                    t[k] += (*b - *a).as_secs_f64();
                }
            }
        }
        Ok(())
    })?;
    let names = [
        "policy forward",
        "reference forward",
        "full step forward (both + loss + metrics)",
        "backward",
        "grad norm",
        "adamw",
    ];
    for (n, v) in names.iter().zip(t) {
        println!("{n:45} {:8.2} ms", v * 1e3 / steps as f64);
    }
    Ok(())
}
