//! Server and trainer together on the tiny fixture: a `set_hparam` shows up in the streamed
//! series from the step that applied it, and a `stop` ends the run at the next step boundary.

use std::path::PathBuf;

use redline_trainer::config::{TrainArgs, TrainConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, TestApp, eventually};

pub(crate) fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("trainer/tests/fixtures/tiny-llama")
}

pub(crate) fn points(series: &Value) -> Vec<(i64, f64)> {
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
            &json!({"project": "default", "rules": []}),
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
    assert_eq!(
        outcome.status,
        redline_core::wire::FinalStatus::Stopped,
        "{}",
        outcome.message
    );
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
            // Checkpoints exist at every second step and at the last one (written before marking).
            kept <= applied && (kept % 2 == 0 || kept == last) && kept > applied - 2,
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

/// Steps recorded while the server is down are kept in metrics.jsonl and sent once it is up;
/// what the server has acknowledged is never sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reporter_keeps_steps_while_the_server_is_down_and_sends_each_once() {
    use redline_trainer::reporter::{Reporter, ServerTarget};
    use std::collections::BTreeMap;

    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_path_buf();
    let target = ServerTarget {
        url: format!("http://{addr}"),
        token: None,
        run_id: "spooled".into(),
        run: redline_core::wire::CreateRun {
            project: Some("default".into()),
            ..Default::default()
        },
        finish_grace: redline_trainer::reporter::FINISH_GRACE,
    };
    let record = |r: &mut Reporter, steps: std::ops::RangeInclusive<usize>| {
        for step in steps {
            let metrics = BTreeMap::from([
                ("loss".to_owned(), step as f64),
                ("kl".to_owned(), f64::NAN),
            ]);
            r.record(step, 1_700_000_000.0 + step as f64, &metrics)
                .unwrap();
        }
    };
    // Nothing listens yet: every step goes to the spool only.
    let (spool_dir, first_target) = (dir.clone(), target.clone());
    let reporter = std::thread::spawn(move || {
        let mut r = Reporter::start(&spool_dir, Some(first_target)).unwrap();
        record(&mut r, 1..=50);
        r
    })
    .join()
    .unwrap();
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.listen = addr).await;
    std::thread::spawn(move || {
        let mut r = reporter;
        record(&mut r, 51..=100);
        r.finish(redline_core::wire::FinishRun {
            status: redline_core::wire::FinalStatus::Completed,
            reason: None,
        });
    });
    let done = eventually("the run to be finished", async || {
        let (_, run) = app.get("/api/v1/runs/spooled").await;
        (run["status"] == "completed").then_some(run)
    })
    .await;
    assert_eq!(done["last_step"], 100);
    let (_, loss) = app.get("/api/v1/runs/spooled/series?metric=loss").await;
    assert_eq!(
        points(&loss),
        (1..=100).map(|s| (s, s as f64)).collect::<Vec<_>>()
    );
    let (_, kl) = app.get("/api/v1/runs/spooled/series?metric=kl").await;
    assert!(
        kl["points"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["value"] == "NaN")
    );

    // Everything is acknowledged: a restart sends only what is new.
    let log = std::fs::metadata(dir.join("metrics.jsonl")).unwrap().len();
    let sent: u64 = std::fs::read_to_string(dir.join("metrics.jsonl.sent"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(sent, log);
    let again = dir.clone();
    std::thread::spawn(move || {
        let mut r = Reporter::start(&again, Some(target)).unwrap();
        record(&mut r, 101..=101);
        r.finish(redline_core::wire::FinishRun {
            status: redline_core::wire::FinalStatus::Completed,
            reason: None,
        });
    })
    .join()
    .unwrap();
    let (_, metrics) = app.get("/api/v1/runs/spooled/metrics").await;
    let loss_points = metrics["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "loss")
        .unwrap()["points"]
        .clone();
    assert_eq!(loss_points, 101);
}

/// A step the server can never accept (here an invalid metric name written into the spool) is
/// skipped on its own; the steps around it still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_step_does_not_hold_back_the_others() {
    use redline_trainer::reporter::{Reporter, ServerTarget};
    use std::collections::BTreeMap;

    let app = TestApp::spawn(Backend::Sqlite).await;
    let out = tempfile::tempdir().unwrap();
    std::fs::write(
        out.path().join("metrics.jsonl"),
        "{\"step\":1,\"metrics\":{\"loss\":1.0}}\n{\"step\":2,\"metrics\":{\"bad name\":1.0}}\n",
    )
    .unwrap();
    let target = ServerTarget {
        url: app.base.clone(),
        token: None,
        run_id: "refused".into(),
        run: redline_core::wire::CreateRun {
            project: Some("default".into()),
            ..Default::default()
        },
        finish_grace: redline_trainer::reporter::FINISH_GRACE,
    };
    let dir = out.path().to_path_buf();
    std::thread::spawn(move || {
        let mut r = Reporter::start(&dir, Some(target)).unwrap();
        r.record(3, 0.0, &BTreeMap::from([("loss".to_owned(), 3.0)]))
            .unwrap();
        r.finish(redline_core::wire::FinishRun {
            status: redline_core::wire::FinalStatus::Completed,
            reason: None,
        });
    })
    .join()
    .unwrap();
    let (_, loss) = app.get("/api/v1/runs/refused/series?metric=loss").await;
    assert_eq!(points(&loss), vec![(1, 1.0), (3, 3.0)]);
    let (_, run) = app.get("/api/v1/runs/refused").await;
    assert_eq!(run["status"], "completed");
}
