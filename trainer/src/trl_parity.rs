//! Parity with TRL: 20 steps of each loss TRL has on the `tiny` Llama fixture (and of DPO on the
//! `tiny` Qwen2 one), with the settings
//! of ../shared/peers/trl_dpo.py (batch 8 in file order, lr 1e-3 constant, β 0.1, AdamW
//! (0.9, 0.999, 1e-8) without weight decay, clipping at 1.0, f32). The expected values are TRL's
//! own logs, written by tests/fixtures/trl_reference.py.

use std::path::PathBuf;

use candle_core::Device;

use redline_core::catalogue::{
    ENTROPY, GRAD_NORM, LOGPS, LOSS, REWARD_CHOSEN, REWARD_MARGIN, REWARD_REJECTED, Side,
};

use crate::data::{PairTokenizer, collate, load_pairs};
use crate::losses::LossKind;
use crate::model::{load_weights, reference_model, trainable_model};
use crate::optim::{AdamW, clip_coefficient, grad_norm};
use crate::step::{Reference, StepSettings, forward};

const COMPARED: [&str; 8] = [
    LOSS.name,
    REWARD_CHOSEN.name,
    REWARD_REJECTED.name,
    REWARD_MARGIN.name,
    LOGPS.on(Side::Chosen).name,
    LOGPS.on(Side::Rejected).name,
    ENTROPY.name,
    GRAD_NORM.name,
];

fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/tiny-{arch}"))
}

/// Runs `steps` steps and returns our metrics per step, alongside TRL's.
fn run(
    arch: &str,
    loss: &str,
    steps: usize,
) -> Vec<(serde_json::Value, std::collections::BTreeMap<String, f64>)> {
    let dev = Device::Cpu;
    let loaded = load_weights(&fixture(arch), &dev).unwrap();
    let (policy, varmap) = trainable_model(&loaded.config, Some(&loaded.tensors), &dev).unwrap();
    let reference = reference_model(&loaded.config, &loaded.tensors, &dev).unwrap();
    let tok = PairTokenizer::for_model(
        &fixture(arch),
        loaded.config.family,
        loaded.config.eos_token_id,
    )
    .unwrap();
    let (pairs, _) = load_pairs(&fixture(arch).join("train.jsonl"), &tok, 64).unwrap();
    let mut opt = AdamW::new(&varmap, 0.0).unwrap();
    let vars = opt.vars();
    let settings = StepSettings {
        loss: LossKind::parse(loss).unwrap(),
        beta: 0.1,
        nll_alpha: 0.0,
        top_k: 10,
    };
    let expected =
        std::fs::read_to_string(fixture(arch).join(format!("trl-{loss}.jsonl"))).unwrap();
    let expected: Vec<serde_json::Value> = expected
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        expected.len() >= steps,
        "the fixture has {} steps",
        expected.len()
    );
    let mut out = Vec::new();
    for (i, want) in expected.into_iter().take(steps).enumerate() {
        let batch = collate(&pairs[i * 8..(i + 1) * 8], 64, 3, &dev).unwrap();
        let mut result = forward(&policy, Reference::Model(&reference), &batch, &settings).unwrap();
        let grads = result.loss.backward().unwrap();
        let norm = grad_norm(&grads, &vars).unwrap();
        result.metrics.insert(GRAD_NORM.name.into(), norm);
        opt.step(&grads, 1e-3, clip_coefficient(norm, 1.0)).unwrap();
        out.push((want, result.metrics));
    }
    out
}

#[test]
fn twenty_steps_match_trl_for_every_loss_trl_has() {
    let mut worst = Vec::new();
    let runs = ["sigmoid", "ipo", "hinge", "robust", "discopop"]
        .map(|loss| ("llama", loss))
        .into_iter()
        // Qwen2: tied embeddings, attention bias and Qwen2's own tokenisation.
        .chain([("qwen2", "sigmoid")]);
    for (arch, loss) in runs {
        for (i, (want, got)) in run(arch, loss, 20).into_iter().enumerate() {
            for key in COMPARED {
                let w = want[key]
                    .as_f64()
                    .unwrap_or_else(|| panic!("TRL logged no {key}"));
                let g = got[key];
                // 1e-3 relative; values within 1e-3 of zero (rewards at the first steps) compare absolutely.
                let err = (g - w).abs() / w.abs().max(1e-3);
                worst.push((
                    err,
                    format!("{arch} {loss} step {} {key}: ours {g}, TRL {w}", i + 1),
                ));
            }
        }
    }
    worst.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (err, what) in worst.iter().take(5) {
        eprintln!("{err:.2e} {what}");
    }
    assert!(worst[0].0 < 1e-3, "{}", worst[0].1);
}
