//! Training in bf16 (`--dtype bf16`), on a CPU: the path a GPU run at full speed takes (the
//! composite ops, bf16 matrix products), checked where no GPU is needed.

use std::path::{Path, PathBuf};

use crate::config::{Precision, TrainArgs, TrainConfig};
use crate::optim::Schedule;

fn run(out: &Path, dtype: Precision) -> Vec<serde_json::Value> {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    let cfg = TrainConfig::resolve(
        TrainArgs {
            model: Some(model),
            loss: Some("sigmoid".into()),
            lr: Some(1e-3),
            schedule: Some(Schedule::Constant),
            batch_size: Some(4),
            max_steps: Some(5),
            shuffle: Some(false),
            dtype: Some(dtype),
            output_dir: Some(out.to_path_buf()),
            run_id: Some(format!("precision-{dtype:?}")),
            ..TrainArgs::default()
        },
        0,
    )
    .unwrap();
    crate::train::train(&cfg).unwrap();
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["metrics"]["loss"].is_number())
        .collect()
}

fn metric(row: &serde_json::Value, name: &str) -> f64 {
    row["metrics"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("no {name} in {row}"))
}

/// Five DPO steps in bf16: the loss starts at ln 2 (policy = reference), moves, stays finite,
/// and follows the f32 run's to bf16 precision; the log-probabilities too.
#[test]
fn bf16_training_moves_the_loss_and_follows_f32() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (half, full) = (
        run(a.path(), Precision::Bf16),
        run(b.path(), Precision::F32),
    );
    assert_eq!(half.len(), 5, "{half:?}");
    assert_eq!(full.len(), 5);
    let first = metric(&half[0], "loss");
    assert!((first - std::f64::consts::LN_2).abs() < 1e-3, "{first}");
    // Each step scores new pairs, so the loss need not fall; that it leaves ln 2 shows the
    // policy's parameters moved away from the reference's.
    let last = metric(&half[4], "loss");
    assert!(
        last.is_finite() && (last - first).abs() > 1e-4,
        "loss {first} → {last}"
    );
    for (h, f) in half.iter().zip(&full) {
        for name in ["loss", "logps/chosen", "logps/rejected"] {
            let (x, y) = (metric(h, name), metric(f, name));
            assert!(x.is_finite(), "{name} {x}");
            assert!(
                (x - y).abs() <= 0.05 * y.abs().max(1.0),
                "step {}: {name} bf16 {x}, f32 {y}",
                h["step"]
            );
        }
    }
}
