//! What the trainer delivers when the server is not there for it: it exits after the finish grace
//! saying what it kept, `redline push` and a resumed `redline train` deliver that exactly once, a
//! refused token stops `redline train` before any training, and a signal the trainer cannot apply
//! is answered as refused.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use redline_server::config::ApiToken;
use redline_trainer::config::{TrainArgs, TrainConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::cli::{redline, succeeded};
use crate::harness::{Backend, TestApp, eventually};
use crate::train::{fixture, points};

/// Only stops a hung process from hanging the suite; nothing here depends on how long it takes.
const HANG_GUARD: Duration = Duration::from_secs(600);

/// A loopback address nothing listens on.
fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

async fn run(cmd: &mut tokio::process::Command) -> std::process::Output {
    tokio::time::timeout(HANG_GUARD, cmd.output())
        .await
        .expect("the command ends")
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `metrics.jsonl` as the series of each metric: `(step, value)` in file order.
fn local_series(out: &Path) -> BTreeMap<String, Vec<(i64, Value)>> {
    let mut series: BTreeMap<String, Vec<(i64, Value)>> = BTreeMap::new();
    for line in std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
    {
        let row: Value = serde_json::from_str(line).unwrap();
        let step = row["step"].as_i64().unwrap();
        for (name, value) in row["metrics"].as_object().unwrap() {
            series
                .entry(name.clone())
                .or_default()
                .push((step, value.clone()));
        }
    }
    series
}

/// Every metric of the local log is on the server with the same steps and values, each once.
async fn assert_server_holds_the_log(app: &TestApp, run: &str, out: &Path) {
    let local = local_series(out);
    assert!(local.contains_key("loss"), "{local:?}");
    for (name, want) in local {
        let (status, body) = app
            .get(&format!("/api/v1/runs/{run}/series?metric={name}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        let got: Vec<(i64, Value)> = body["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["step"].as_i64().unwrap(), p["value"].clone()))
            .collect();
        assert_eq!(got, want, "{name}");
    }
}

fn train_args(server: &str, run_id: &str, out: &Path) -> Vec<String> {
    [
        "train",
        "--model",
        fixture().to_str().unwrap(),
        "--lr",
        "1e-3",
        "--schedule",
        "constant",
        "--max-steps",
        "3",
        "--batch-size",
        "2",
        "--server",
        server,
        "--run-id",
        run_id,
        "--output-dir",
        out.to_str().unwrap(),
        "--finish-grace",
        "1",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trainer_with_no_server_exits_saying_what_it_kept_and_push_delivers_it_once() {
    let cwd = tempfile::tempdir().unwrap();
    let out = cwd.path().join("run");
    let dead = dead_address();
    let trained = run(redline(cwd.path()).args(train_args(&dead, "offline-1", &out))).await;
    let stderr = text(&trained.stderr);
    assert_eq!(
        trained.status.code(),
        Some(75),
        "trained, but the steps are undelivered: {stderr}"
    );
    assert!(
        stderr.contains(&format!("3 steps were not delivered to {dead}")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("redline push {}", out.display())),
        "{stderr}"
    );
    assert!(text(&trained.stdout).contains("completed 3 steps"));

    let app = TestApp::spawn(Backend::Sqlite).await;
    let pushed =
        succeeded(redline(cwd.path()).args(["push", out.to_str().unwrap(), "--server", &app.base]))
            .await;
    let said = text(&pushed.stdout);
    assert!(
        said.contains("Pushed 3 new steps of run offline-1"),
        "{said}"
    );
    assert_server_holds_the_log(&app, "offline-1", &out).await;
    let (_, got) = app.get("/api/v1/runs/offline-1").await;
    assert_eq!(
        (got["status"].as_str(), got["last_step"].as_i64()),
        (Some("completed"), Some(3)),
        "{got}"
    );

    let counts = async || {
        let (_, body) = app.get("/api/v1/runs/offline-1/metrics").await;
        body["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["name"].clone(), m["points"].clone()))
            .collect::<Vec<_>>()
    };
    let before = counts().await;
    let push = ["push", out.to_str().unwrap(), "--server", &app.base];
    let again = succeeded(redline(cwd.path()).args(push)).await;
    let said = text(&again.stdout);
    assert!(said.contains("Pushed 0 new steps"), "{said}");
    assert_eq!(counts().await, before, "a second push stores nothing new");
    assert_server_holds_the_log(&app, "offline-1", &out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_stops_train_before_any_training() {
    const RIGHT: &str = "the-right-token-0123";
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.tokens = vec![ApiToken::parse(RIGHT).unwrap()];
    })
    .await;
    let cwd = tempfile::tempdir().unwrap();
    let out = cwd.path().join("run");
    let mut args = train_args(&app.base, "guarded", &out);
    args.extend(["--token".into(), "wrong".into()]);
    let refused = run(redline(cwd.path()).args(&args)).await;
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("the server at {} refused the token", app.base))
            && stderr.contains("nothing was trained"),
        "{stderr}"
    );
    assert!(
        !out.join("metrics.jsonl").exists() && !out.join("checkpoints").exists(),
        "no step was trained"
    );

    // The same command with the right token trains and delivers.
    args.truncate(args.len() - 1);
    args.push(RIGHT.into());
    succeeded(redline(cwd.path()).args(&args)).await;
    let mut app = app;
    app.token = Some(RIGHT.into());
    let (_, got) = app.get("/api/v1/runs/guarded").await;
    assert_eq!(got["status"], "completed", "{got}");
}

fn config(server: &str, run_id: &str, out: &Path, extra: TrainArgs) -> TrainConfig {
    let args = TrainArgs {
        model: Some(fixture()),
        lr: Some(1e-3),
        server: Some(server.into()),
        run_id: Some(run_id.into()),
        output_dir: Some(out.to_path_buf()),
        finish_grace: Some(1),
        ..TrainArgs::default()
    };
    TrainConfig::resolve(extra.overlaid_with(args), 0).unwrap()
}

async fn train_in_thread(config: TrainConfig) -> redline_trainer::train::Outcome {
    let trainer = tokio::task::spawn_blocking(move || redline_trainer::train::train(&config));
    tokio::time::timeout(HANG_GUARD, trainer)
        .await
        .expect("the trainer returns")
        .unwrap()
        .unwrap()
}

/// Running the same training again resumes the run, and its reporter sends what the first one
/// could not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_train_delivers_the_steps_an_earlier_one_kept() {
    let out = tempfile::tempdir().unwrap();
    let steps = TrainArgs {
        max_steps: Some(2),
        ..TrainArgs::default()
    };
    let first = train_in_thread(config(
        &dead_address(),
        "resumed",
        out.path(),
        steps.clone(),
    ))
    .await;
    let kept = first.delivery.expect("a run with a server");
    assert_eq!((kept.undelivered, kept.finished), (2, false), "{kept:?}");
    assert!(kept.retryable && !kept.complete());

    let app = TestApp::spawn(Backend::Sqlite).await;
    let second = train_in_thread(config(&app.base, "resumed", out.path(), steps)).await;
    let sent = second.delivery.unwrap();
    assert!(sent.complete() && sent.finished, "{sent:?}");
    assert_eq!(sent.undelivered, 0);
    assert_server_holds_the_log(&app, "resumed", out.path()).await;
    let (_, got) = app.get("/api/v1/runs/resumed").await;
    assert_eq!(got["status"], "completed", "{got}");
}

/// A CUT run has no β: a `beta` signal the server accepts is answered as refused, with why, and an
/// `lr_scale` one, which the run can apply, as applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_the_trainer_cannot_apply_is_stored_as_refused() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let out = tempfile::tempdir().unwrap();
    let run = "cut-steered";
    let (s, _) = app
        .put(
            &format!("/api/v1/runs/{run}"),
            &json!({"project": "default", "rules": []}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let signal = async |name: &str, value: f64| {
        let (s, body) = app
            .post(
                &format!("/api/v1/runs/{run}/signals"),
                &json!({"kind": "set_hparam", "name": name, "value": value, "reason": "test"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        body["id"].as_i64().unwrap()
    };
    let beta = signal("beta", 0.3).await;
    let lr_scale = signal("lr_scale", 0.5).await;

    let data = out.path().join("cut.jsonl");
    let rows: String = (0..8)
        .map(|i| {
            let row = json!({
                "prompt": format!("Q: {i}+1="), "response": format!(" {}.", i + 2),
                "judgment": "wrong", "aligned": false,
            });
            row.to_string() + "\n"
        })
        .collect();
    std::fs::write(&data, rows).unwrap();
    let cut = TrainArgs {
        loss: Some("cut".into()),
        train_data: Some(data),
        batch_size: Some(2),
        max_steps: Some(100_000),
        ..TrainArgs::default()
    };
    let config = config(&app.base, run, out.path(), cut);
    let trainer = tokio::task::spawn_blocking(move || redline_trainer::train::train(&config));

    let list = format!("/api/v1/runs/{run}/signals?pending=false");
    let answered = eventually("both signals to be answered", async || {
        let (_, body) = app.get(&list).await;
        let signals = body["signals"].as_array()?.clone();
        signals
            .iter()
            .all(|s| s["applied_step"].is_i64())
            .then_some(signals)
    })
    .await;
    let (s, _) = app
        .post(
            &format!("/api/v1/runs/{run}/signals"),
            &json!({"kind": "stop", "reason": "enough"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let outcome = tokio::time::timeout(HANG_GUARD, trainer)
        .await
        .expect("the trainer stops")
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome.status,
        redline_core::wire::FinalStatus::Stopped,
        "{}",
        outcome.message
    );

    let by_id = |id: i64| answered.iter().find(|s| s["id"] == id).unwrap().clone();
    let refused = by_id(beta);
    let why = refused["refused"].as_str().unwrap_or_default();
    assert!(
        why.contains("beta does not apply to a CUT run"),
        "{refused}"
    );
    let applied = by_id(lr_scale);
    assert!(applied["refused"].is_null(), "{applied}");
    let from = applied["applied_step"].as_i64().unwrap();
    let (_, series) = app
        .get(&format!("/api/v1/runs/{run}/series?metric=lr_scale"))
        .await;
    for (step, value) in points(&series) {
        let want = if step >= from { 0.5 } else { 1.0 };
        assert_eq!(value, want, "lr_scale at step {step}");
    }
}
