//! The training loop on the tiny fixture: resume, precomputed reference, CUT, evaluation, steering.

use std::path::{Path, PathBuf};

use redline_core::wire::FinalStatus;

use crate::config::{TrainArgs, TrainConfig};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama")
}

fn config(out: &Path, steps: usize, extra: TrainArgs) -> TrainConfig {
    let args = TrainArgs {
        model: Some(fixture()),
        lr: Some(1e-3),
        schedule: Some(crate::optim::Schedule::Constant),
        max_steps: Some(steps),
        output_dir: Some(out.to_path_buf()),
        run_id: Some("unit".into()),
        ..TrainArgs::default()
    };
    TrainConfig::resolve(extra.overlaid_with(args), 0).unwrap()
}

fn at(rows: &[serde_json::Value], step: u64) -> &serde_json::Value {
    rows.iter()
        .find(|r| r["step"] == step)
        .unwrap_or_else(|| panic!("no step {step} logged"))
}

fn logged(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn set(name: &str, value: f64) -> redline_core::wire::Signal {
    serde_json::from_value(serde_json::json!({
        "id": 1, "run_id": "unit", "kind": "set_hparam", "name": name, "value": value,
        "keep_step": null, "reason": "test", "source_rule": null,
        "created_at": "2025-01-01T00:00:00Z", "acked_at": null, "applied_step": null,
        "refused": null,
    }))
    .unwrap()
}

#[test]
fn a_signal_the_run_cannot_apply_is_refused_with_the_reason() {
    use crate::config::Objective;
    use redline_core::hparams::Steerable;
    let dpo = Objective::Preference(crate::losses::LossKind::Sigmoid);
    assert_eq!(
        super::signals::steer(&set("beta", 0.3), dpo),
        Ok((Steerable::Beta, 0.3))
    );
    assert_eq!(
        super::signals::steer(&set("lr_scale", 0.0), dpo),
        Ok((Steerable::LrScale, 0.0))
    );
    // An older server lets these through; the trainer must not call them applied.
    let unknown = super::signals::steer(&set("learning_rate", 1e-4), dpo).unwrap_err();
    assert!(unknown.contains("cannot be steered"), "{unknown}");
    let negative = super::signals::steer(&set("beta", -1.0), dpo).unwrap_err();
    assert!(negative.contains("greater than 0"), "{negative}");
    let cut = config(
        Path::new("unused"),
        1,
        TrainArgs {
            loss: Some("cut".into()),
            ..TrainArgs::default()
        },
    )
    .objective;
    let no_beta = super::signals::steer(&set("beta", 0.3), cut).unwrap_err();
    assert!(no_beta.contains("does not apply to a CUT run"), "{no_beta}");
    assert!(super::signals::steer(&set("nll_alpha", 1.0), cut).is_err());
    assert_eq!(
        super::signals::steer(&set("lr_scale", 0.5), cut),
        Ok((Steerable::LrScale, 0.5))
    );
}

#[test]
fn a_resumed_run_continues_exactly_where_it_stopped() {
    let straight = tempfile::tempdir().unwrap();
    super::train(&config(straight.path(), 4, TrainArgs::default())).unwrap();
    let resumed = tempfile::tempdir().unwrap();
    let halves = TrainArgs {
        checkpoint_every: Some(2),
        ..TrainArgs::default()
    };
    super::train(&config(resumed.path(), 2, halves.clone())).unwrap();
    let outcome = super::train(&config(resumed.path(), 4, halves)).unwrap();
    assert_eq!(outcome.last_step, 4);
    let (a, b) = (logged(straight.path()), logged(resumed.path()));
    assert_eq!(b.len(), 4, "steps 1-2, then 3-4 after the resume");
    for key in ["loss", "grad_norm", "rewards/margins", "logps/chosen"] {
        assert_eq!(
            a[3]["metrics"][key], b[3]["metrics"][key],
            "{key} at step 4"
        );
    }
}

#[test]
fn precomputed_reference_log_probs_train_the_same_run() {
    let (live, pre) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    super::train(&config(live.path(), 3, TrainArgs::default())).unwrap();
    let once = TrainArgs {
        precompute_ref: Some(true),
        ..TrainArgs::default()
    };
    super::train(&config(pre.path(), 3, once)).unwrap();
    let (a, b) = (logged(live.path()), logged(pre.path()));
    for side in ["chosen", "rejected"] {
        let m = &a[0]["metrics"];
        let (top1, mass) = (
            m[format!("top1_prob/{side}")].as_f64().unwrap(),
            m[format!("topk_mass/{side}")].as_f64().unwrap(),
        );
        assert!(
            top1 > 0.0 && top1 <= mass + 1e-9,
            "{side}: {top1} vs {mass}"
        );
    }
    for step in 0..3 {
        for key in ["loss", "rewards/margins", "kl/chosen", "grad_norm"] {
            let (x, y) = (
                a[step]["metrics"][key].as_f64().unwrap(),
                b[step]["metrics"][key].as_f64().unwrap(),
            );
            // Reference passes over differently padded batches round differently in f32.
            assert!(
                (x - y).abs() <= 1e-4 * x.abs().max(1e-2),
                "{key} at step {}: {x} vs {y}",
                step + 1
            );
        }
    }
}

#[test]
fn a_cut_run_trains_on_judged_rows() {
    let out = tempfile::tempdir().unwrap();
    let data = out.path().join("cut.jsonl");
    let rows: String = (0..16)
        .map(|i| {
            let (a, b) = (i, 30 + i);
            if i % 2 == 0 {
                format!("{{\"prompt\":\"Q: {a}+{b}=\",\"response\":\" {}.\",\"aligned\":true}}\n", a + b)
            } else {
                format!(
                    "{{\"prompt\":\"Q: {a}+{b}=\",\"response\":\" {}.\",\"judgment\":\"off by ten\",\"aligned\":false}}\n",
                    a + b + 10
                )
            }
        })
        .collect();
    std::fs::write(&data, rows).unwrap();
    let extra = TrainArgs {
        loss: Some("cut".into()),
        train_data: Some(data.clone()),
        eval_data: Some(data),
        eval_every: Some(2),
        ..TrainArgs::default()
    };
    let outcome = super::train(&config(out.path(), 2, extra)).unwrap();
    assert_eq!(outcome.status, FinalStatus::Completed);
    let logged = logged(out.path());
    let m = &at(&logged, 2)["metrics"];
    for key in [
        "loss",
        "cut/nll",
        "cut/ul",
        "cut/inappropriate_share",
        "topk_entropy/response",
        "top1_prob/response",
        "eval/cut/ul",
    ] {
        assert!(m[key].is_number(), "{key} missing: {m}");
    }
    assert!(
        m["rewards/margins"].is_null(),
        "no pairwise metrics in a CUT run"
    );
}

#[test]
fn evaluation_generates_and_scores_against_gold_answers() {
    let out = tempfile::tempdir().unwrap();
    let eval = out.path().join("eval.jsonl");
    std::fs::write(
        &eval,
        "{\"prompt\":\"Q: 1+1=\",\"chosen\":\" 2.\",\"rejected\":\" 3.\",\"answer\":\"2\"}\n\
         {\"prompt\":\"Q: 2+2=\",\"chosen\":\" 4.\",\"rejected\":\" 5.\",\"answer\":\"4\"}\n",
    )
    .unwrap();
    let extra = TrainArgs {
        eval_data: Some(eval),
        eval_every: Some(2),
        gen_max_tokens: Some(4),
        ..TrainArgs::default()
    };
    super::train(&config(out.path(), 2, extra.clone())).unwrap();
    let rows = logged(out.path());
    let m = &at(&rows, 2)["metrics"];
    let mass = m["topk_mass/generated"].as_f64().unwrap();
    let entropy = m["topk_entropy/generated"].as_f64().unwrap();
    assert!(mass > 0.0 && mass <= 1.0 + 1e-9 && (0.0..=10f64.log2() + 1e-9).contains(&entropy));
    // The most likely token holds at most the top k's mass, and at least its share of it.
    let top1 = m["top1_prob/generated"].as_f64().unwrap();
    assert!(
        top1 <= mass + 1e-9 && top1 >= mass / 10.0 - 1e-9,
        "{top1} vs {mass}"
    );
    let tokens = m["eval/generated_tokens"].as_f64().unwrap();
    assert!((1.0..=4.0).contains(&tokens), "{tokens}");
    let score = m["eval/score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&score));
    assert!(m["eval/loss"].is_number() && at(&rows, 1)["metrics"]["eval/loss"].is_null());
    // Step 0 is the starting model: evaluated, not trained.
    let start = &at(&rows, 0)["metrics"];
    assert!(start["eval/score"].is_number() && start["eval/loss"].is_number());
    assert!(start["loss"].is_null(), "{start}");

    let later = tempfile::tempdir().unwrap();
    let not_at_start = TrainArgs {
        eval_on_start: Some(false),
        ..extra
    };
    super::train(&config(later.path(), 2, not_at_start)).unwrap();
    let steps: Vec<u64> = logged(later.path())
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2]);
}
