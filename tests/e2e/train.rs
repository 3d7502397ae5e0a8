//! Server and trainer together on the tiny fixture: a `set_hparam` shows up in the streamed
//! series from the step that applied it, and a `stop` ends the run at the next step boundary.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use redline_trainer::config::{TrainArgs, TrainConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, TestApp};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("trainer/tests/fixtures/tiny-llama")
}

/// Polls until `f` gives a value; the deadline only stops a broken run from hanging the suite.
async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn points(series: &Value) -> Vec<(i64, f64)> {
    series["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["step"].as_i64().unwrap(), p["value"].as_f64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_from_the_api_steer_and_stop_a_training_run() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let out = tempfile::tempdir().unwrap();
    let run = "e2e-train";
    let (s, _) = app
        .put(
            &format!("/api/v1/runs/{run}"),
            &json!({"project": "default"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, beta) = app
        .post(
            &format!("/api/v1/runs/{run}/signals"),
            &json!({"kind": "set_hparam", "name": "beta", "value": 0.3, "reason": "test"}),
        )
        .await;

    let args = TrainArgs {
        model: Some(fixture()),
        lr: Some(1e-3),
        max_steps: Some(100_000),
        checkpoint_every: Some(2),
        output_dir: Some(out.path().to_path_buf()),
        server: Some(app.base.clone()),
        run_id: Some(run.into()),
        ..TrainArgs::default()
    };
    let config = TrainConfig::resolve(args, 0).unwrap();
    let trainer = std::thread::spawn(move || redline_trainer::train::train(&config));

    let signals = format!("/api/v1/runs/{run}/signals?pending=false");
    let applied = eventually("the beta signal to be acknowledged", async || {
        let (_, list) = app.get(&signals).await;
        list["signals"][0]["applied_step"].as_i64()
    })
    .await;
    let (s, stop) = app
        .post(
            &format!("/api/v1/runs/{run}/signals"),
            &json!({"kind": "stop", "keep_step": applied, "reason": "test stop"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{stop}");
    let outcome = tokio::task::spawn_blocking(move || trainer.join().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.status, "stopped", "{}", outcome.message);
    let last = outcome.last_step as i64;
    assert!(last >= applied && last < 100_000);

    let (_, all_signals) = app.get(&signals).await;
    let acked: Vec<(i64, Option<i64>)> = all_signals["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_i64().unwrap(), s["applied_step"].as_i64()))
        .collect();
    assert_eq!(
        acked,
        vec![
            (beta["id"].as_i64().unwrap(), Some(applied)),
            (stop["id"].as_i64().unwrap(), Some(last))
        ]
    );

    let (_, got) = app.get(&format!("/api/v1/runs/{run}")).await;
    assert_eq!(got["status"], "stopped");
    assert_eq!(
        got["last_step"], last,
        "every step up to the stop is stored, none after it"
    );
    let (_, beta_series) = app
        .get(&format!("/api/v1/runs/{run}/series?metric=beta"))
        .await;
    for (step, value) in points(&beta_series) {
        let want = if step >= applied { 0.3 } else { 0.1 };
        assert!(
            (value - want).abs() < 1e-12,
            "beta at step {step} is {value}"
        );
    }
    let (_, loss) = app
        .get(&format!("/api/v1/runs/{run}/series?metric=loss"))
        .await;
    assert_eq!(points(&loss).len() as i64, last);

    check_local_files(out.path(), applied, last);
}

/// The trainer's own files: the kept and final checkpoints, and the local log of every step.
fn check_local_files(out: &std::path::Path, applied: i64, last: i64) {
    let best: Value = std::fs::read_to_string(out.join("checkpoints/best.json"))
        .map_or(Value::Null, |t| serde_json::from_str(&t).unwrap());
    if applied >= 2 {
        let kept = best["step"].as_i64().unwrap();
        assert!(
            kept <= applied && kept % 2 == 0 && kept > applied - 2,
            "best checkpoint {kept} for keep_step {applied}"
        );
    }
    assert!(
        out.join(format!("checkpoints/step-{last}/model.safetensors"))
            .is_file(),
        "a final checkpoint"
    );
    let local = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        local.lines().count() as i64,
        last,
        "the local log has every step too"
    );
}
