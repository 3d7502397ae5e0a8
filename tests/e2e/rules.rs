//! Rules, alerts and webhooks end to end: the real trainer on the tiny fixture trips a preset
//! and stops, a regulator steers `nll_alpha`, and the webhook outbox retries and survives a
//! restart, against a local receiver that checks signatures.

use std::path::PathBuf;
use std::time::Duration;

use redline_server::ServerConfig;
use redline_server::alerts::guard::Allowlist;
use redline_trainer::config::{TrainArgs, TrainConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, TestApp, both_stores, eventually};
use crate::receiver::{Receiver, SECRET};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("trainer/tests/fixtures/tiny-llama")
}

/// Webhooks may reach the loopback receiver, and retry quickly.
pub fn local_delivery(c: &mut ServerConfig) {
    c.delivery.allow = Allowlist::parse(&["127.0.0.1".into()]).unwrap();
    c.delivery.backoff_base = Duration::from_millis(20);
    c.delivery.backoff_max = Duration::from_millis(200);
    c.delivery.timeout = Duration::from_secs(5);
}

pub async fn add_webhook(app: &TestApp, receiver: &Receiver) {
    let (s, body) = app
        .post(
            "/api/v1/webhooks",
            &json!({"name": "hook", "url": receiver.url, "secret": SECRET}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
}

/// Deliveries of webhook `hook`, oldest first.
pub async fn deliveries(app: &TestApp) -> Vec<Value> {
    let (s, body) = app.get("/api/v1/webhooks/hook/deliveries").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let mut list = body["deliveries"].as_array().unwrap().clone();
    list.reverse();
    list
}

/// Settings that over-optimise the tiny model within a few dozen steps: high learning rate,
/// low β, no NLL term. The chosen log-likelihood collapses while the margin grows.
fn over_optimising(app: &TestApp, run: &str, out: &std::path::Path) -> TrainConfig {
    let args = TrainArgs {
        model: Some(fixture()),
        lr: Some(0.02),
        beta: Some(0.01),
        nll_alpha: Some(0.0),
        schedule: Some(redline_trainer::optim::Schedule::Constant),
        warmup_steps: Some(0),
        max_steps: Some(400),
        checkpoint_every: Some(5),
        eval_every: Some(0),
        output_dir: Some(out.to_path_buf()),
        server: Some(app.base.clone()),
        run_id: Some(run.into()),
        ..TrainArgs::default()
    };
    TrainConfig::resolve(args, 0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_optimising_run_trips_a_preset_alerts_and_stops_keeping_the_best_checkpoint() {
    let app = TestApp::spawn_with(Backend::Postgres, local_delivery).await;
    let receiver = Receiver::start(0).await;
    add_webhook(&app, &receiver).await;
    let out = tempfile::tempdir().unwrap();
    let config = over_optimising(&app, "over", out.path());
    let outcome = tokio::task::spawn_blocking(move || redline_trainer::train::train(&config))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome.status,
        redline_core::wire::FinalStatus::Stopped,
        "{}",
        outcome.message
    );

    // The preset's stop, with the values that tripped it and the step to keep.
    let (_, events) = app.get("/api/v1/runs/over/events").await;
    let events = events["events"].as_array().unwrap();
    let stop = events
        .iter()
        .find(|e| e["action"] == "stop")
        .unwrap_or_else(|| panic!("no stop among {events:?}"));
    assert_eq!(stop["rule_set"], "presets");
    assert_eq!(stop["rule"], "likelihood-displacement");
    assert!(stop["values"]["logps_mean/chosen:change"].as_f64().unwrap() < -1.0);
    let tripped = stop["step"].as_i64().unwrap();
    let (_, signals) = app.get("/api/v1/runs/over/signals?pending=false").await;
    let signal = &signals["signals"][0];
    assert_eq!(signal["id"], stop["signal_id"]);
    assert_eq!(signal["source_rule"], "presets/likelihood-displacement");
    let keep = signal["keep_step"].as_i64().unwrap();
    assert!(
        keep < tripped,
        "keep step {keep} is not before the trip at {tripped}"
    );

    // The trainer stopped at its next step boundary: the step it acknowledged the stop at is
    // the last one it trained, and it trained none after.
    let applied = signal["applied_step"]
        .as_i64()
        .expect("the stop was acknowledged");
    assert!(applied >= tripped);
    let (_, run) = app.get("/api/v1/runs/over").await;
    assert_eq!(run["status"], "stopped");
    assert_eq!(run["last_step"].as_i64(), Some(applied));
    assert_eq!(outcome.last_step as i64, applied);

    // It kept the newest checkpoint at or before the named step.
    let best: Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("checkpoints/best.json")).unwrap(),
    )
    .unwrap();
    let kept = best["step"].as_i64().unwrap();
    assert_eq!(kept, keep - keep % 5, "{best}");
    assert!(PathBuf::from(best["path"].as_str().unwrap()).is_dir());

    // The alert reached the receiver, signed.
    let alert = eventually("the alert webhook", async || {
        receiver.accepted().into_iter().next()
    })
    .await;
    assert!(alert.signature_is_valid(), "bad signature: {alert:?}");
    let body = alert.json();
    assert_eq!(body["type"], "rule.alert");
    assert_eq!(body["data"]["run_id"], "over");
    assert_eq!(body["data"]["rule"], "likelihood-displacement");
    assert_eq!(body["data"]["step"].as_i64(), Some(tripped));
}

const STEER: &str = r#"
# Hold top-k entropy of the chosen completions above 3.0 bits by raising the NLL weight.
[[rules]]
name = "hold-entropy"

[rules.regulate]
metric = "topk_entropy/chosen"
band = [3.0, 3.4]
hparam = "nll_alpha"
when_below = "raise"
step = 0.5
max_step = 0.5
bounds = [0.0, 2.0]
cooldown = 3
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regulate_rule_raises_nll_alpha_and_the_trainer_applies_each_change() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let (s, set) = app.put_rule_set("steer", STEER).await;
    assert_eq!(s, StatusCode::OK, "{set}");
    assert_eq!(set["rules"], json!(["hold-entropy"]));
    let out = tempfile::tempdir().unwrap();
    let mut config = over_optimising(&app, "steered", out.path());
    config.max_steps = Some(60);
    config.rules = Some(vec![redline_core::RuleSetName::parse("steer").unwrap()]);
    let outcome = tokio::task::spawn_blocking(move || redline_trainer::train::train(&config))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome.status,
        redline_core::wire::FinalStatus::Completed,
        "{}",
        outcome.message
    );

    let (_, rules) = app.get("/api/v1/runs/steered/rules").await;
    assert_eq!(rules["rule_sets"][0]["name"], "steer");
    let (_, events) = app.get("/api/v1/runs/steered/events").await;
    let changes: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "regulate")
        .collect();
    assert!(!changes.is_empty(), "no regulation in {events}");
    let (_, signals) = app.get("/api/v1/runs/steered/signals?pending=false").await;
    let signals = signals["signals"].as_array().unwrap();
    assert_eq!(signals.len(), changes.len(), "one signal per change");
    let (_, series) = app
        .get("/api/v1/runs/steered/series?metric=nll_alpha")
        .await;
    let alpha: Vec<(i64, f64)> = series["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["step"].as_i64().unwrap(), p["value"].as_f64().unwrap()))
        .collect();
    let mut previous = 0.0;
    for (s, e) in signals.iter().zip(&changes) {
        assert_eq!(s["kind"], "set_hparam");
        assert_eq!(s["name"], "nll_alpha");
        assert_eq!(s["id"], e["signal_id"]);
        let value = s["value"].as_f64().unwrap();
        assert!(value > previous && value <= 2.0, "{value} after {previous}");
        previous = value;
        // Applied, acknowledged, and streamed from the step that applied it.
        let applied = s["applied_step"].as_i64().expect("acknowledged");
        let streamed = alpha.iter().find(|p| p.0 == applied).map(|p| p.1);
        let later = signals.iter().any(|o| {
            o["applied_step"].as_i64() == Some(applied) && o["id"].as_i64() > s["id"].as_i64()
        });
        if !later {
            assert_eq!(streamed, Some(value), "nll_alpha at step {applied}");
        }
    }
}

/// A run that reports a NaN loss trips the non-finite preset: one critical alert.
pub async fn nan_alert(app: &TestApp, run: &str) {
    app.create_run(run).await;
    let answer = app
        .ingest(
            run,
            json!([{"step": 1, "metrics": {"loss": 0.69}}, {"step": 2, "metrics": {"loss": "NaN"}}]),
        )
        .await;
    // The stop rides on the answer to the request that carried the NaN.
    assert_eq!(answer["signals"][0]["kind"], "stop", "{answer}");
    assert_eq!(answer["signals"][0]["keep_step"], 1, "{answer}");
}

async fn a_failing_receiver_gets_one_accepted_delivery_after_three_logged_attempts(b: Backend) {
    let app = TestApp::spawn_with(b, local_delivery).await;
    let receiver = Receiver::start(2).await;
    add_webhook(&app, &receiver).await;
    nan_alert(&app, "r").await;
    let log = eventually("the delivery to succeed", async || {
        let log = deliveries(&app).await;
        (log.last().is_some_and(|a| a["outcome"] == "delivered")).then_some(log)
    })
    .await;
    let outcomes: Vec<&str> = log.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["retry", "retry", "delivered"]);
    let statuses: Vec<i64> = log.iter().map(|a| a["status"].as_i64().unwrap()).collect();
    assert_eq!(statuses, [503, 503, 200]);
    let requests = receiver.received();
    assert_eq!(requests.len(), 3);
    assert_eq!(receiver.accepted().len(), 1);
    // Every attempt is the same message, freshly signed.
    assert!(
        requests
            .iter()
            .all(|r| r.id == requests[0].id && r.signature_is_valid())
    );
    assert_eq!(log[0]["message_id"].as_str(), Some(requests[0].id.as_str()));
}

async fn a_restart_in_the_middle_of_deliveries_loses_none(b: Backend) {
    let mut app = TestApp::spawn_with(b, local_delivery).await;
    let receiver = Receiver::start(usize::MAX).await;
    add_webhook(&app, &receiver).await;
    let runs = ["a", "b", "c", "d", "e"];
    for run in runs {
        nan_alert(&app, run).await;
    }
    // Every message has been tried (and refused) at least once before the restart.
    eventually("every alert to be attempted", async || {
        let ids: std::collections::HashSet<String> =
            receiver.received().into_iter().map(|r| r.id).collect();
        (ids.len() == runs.len()).then_some(())
    })
    .await;
    app.restart().await;
    receiver.set_failures(0);
    let accepted = eventually("every alert to be delivered", async || {
        let ids: std::collections::HashSet<String> =
            receiver.accepted().into_iter().map(|r| r.id).collect();
        (ids.len() == runs.len()).then_some(ids)
    })
    .await;
    let body_runs: std::collections::HashSet<String> = receiver
        .accepted()
        .iter()
        .map(|r| r.json()["data"]["run_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(body_runs.len(), runs.len(), "{accepted:?}");
}

async fn rule_files_are_validated_versioned_and_pinned(b: Backend) {
    let app = TestApp::spawn(b).await;
    let put = |body: &'static str| app.put_rule_set("mine", body);
    let (s, err) = put("[[rules]]\nname = \"x\"\nactions = [\"alert\"]\n\n[[rules.when]]\nmetric = \"loss\"\nema = 1.5\nabove = 1.0\n").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("line 7") && message.contains("ema"),
        "{message}"
    );
    let (s, _) = app.get("/api/v1/rule-sets/mine").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "an invalid file stores nothing");

    let v1 = "[[rules]]\nname = \"high-loss\"\nactions = [\"alert\"]\n\n[[rules.when]]\nmetric = \"loss\"\nabove = 5.0\n";
    let v2 = "[[rules]]\nname = \"higher-loss\"\nactions = [\"alert\"]\n\n[[rules.when]]\nmetric = \"loss\"\nabove = 9.0\n";
    let (s, first) = put(v1).await;
    assert_eq!((s, first["version"].as_i64()), (StatusCode::OK, Some(1)));
    let (_, same) = put(v1).await;
    assert_eq!(same["version"], 1, "the same file is not a new version");
    let (s, run) = app
        .put(
            "/api/v1/runs/pinned",
            &json!({"rules": ["mine", "presets"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{run}");
    let (_, second) = put(v2).await;
    assert_eq!(second["version"], 2);
    let (_, pinned) = app.get("/api/v1/runs/pinned/rules").await;
    assert_eq!(
        pinned["rule_sets"][0]["version"], 1,
        "a run keeps the version it started with"
    );
    assert_eq!(pinned["rule_sets"][1]["name"], "presets");
    let (_, old) = app.get("/api/v1/rule-sets/mine?version=1").await;
    assert_eq!(old["rules"], json!(["high-loss"]));

    let answer = app
        .ingest("pinned", json!([{"step": 1, "metrics": {"loss": 7.0}}]))
        .await;
    assert_eq!(answer["signals"], json!([]), "an alert sends no signal");
    let (_, events) = app.get("/api/v1/runs/pinned/events").await;
    assert_eq!(events["events"][0]["rule"], "high-loss");
    assert_eq!(events["events"][0]["values"]["loss"], 7.0);

    let (s, err) = app
        .put("/api/v1/runs/unknown", &json!({"rules": ["nope"]}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"]["field"], "rules[0]");
    let (s, _) = app.get("/api/v1/runs/unknown").await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "a refused run is not half-created"
    );
}

async fn webhooks_refuse_private_addresses_unless_allowed(b: Backend) {
    let app = TestApp::spawn(b).await;
    let receiver = Receiver::start(0).await;
    add_webhook(&app, &receiver).await;
    let (s, attempt) = app.post("/api/v1/webhooks/hook/test", &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{attempt}");
    assert_eq!(attempt["outcome"], "failed");
    assert!(
        attempt["error"]
            .as_str()
            .unwrap()
            .contains("not a public address"),
        "{attempt}"
    );
    assert!(receiver.received().is_empty());
    let (_, list) = app.get("/api/v1/webhooks").await;
    assert!(
        list["webhooks"][0]["url"].as_str().unwrap().ends_with("/…"),
        "{list}"
    );
    assert!(list["webhooks"][0].get("secret").is_none(), "{list}");

    let (s, err) = app
        .post(
            "/api/v1/webhooks",
            &json!({"name": "x", "url": "ftp://example.com"}),
        )
        .await;
    assert_eq!(
        (s, err["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("url"))
    );
    let (s, err) = app
        .post(
            "/api/v1/webhooks",
            &json!({"name": "y", "url": "https://example.com", "secret": "plain"}),
        )
        .await;
    assert_eq!(
        (s, err["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("secret"))
    );
}

async fn a_test_delivery_reaches_an_allowed_receiver(b: Backend) {
    let app = TestApp::spawn_with(b, local_delivery).await;
    let receiver = Receiver::start(0).await;
    add_webhook(&app, &receiver).await;
    let (s, attempt) = app.post("/api/v1/webhooks/hook/test", &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{attempt}");
    assert_eq!(attempt["outcome"], "delivered", "{attempt}");
    let got = receiver.accepted();
    assert_eq!(got.len(), 1);
    assert!(got[0].signature_is_valid());
    assert_eq!(got[0].json()["type"], "webhook.test");
    assert_eq!(deliveries(&app).await.len(), 1);
}

/// A batch this large is evaluated on the blocking pool while the store writes it: what fires
/// still rides on the answer and is stored with the batch.
async fn a_large_batch_is_evaluated_beside_the_store_and_fires_the_same(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("big").await;
    let steps: Vec<Value> = (1..=1_000)
        .map(|s| {
            let loss = if s == 900 { json!("NaN") } else { json!(0.69) };
            json!({"step": s, "metrics": {"loss": loss, "grad_norm": 1.0, "rewards/margins": 0.1,
                "rewards/accuracies": 0.5, "logps_mean/chosen": -3.0, "topk_entropy/chosen": 1.2}})
        })
        .collect();
    let answer = app.ingest("big", Value::Array(steps)).await;
    assert_eq!(answer["new_points"], 6_000, "{answer}");
    assert_eq!(answer["signals"][0]["kind"], "stop", "{answer}");
    assert_eq!(answer["signals"][0]["keep_step"], 899, "{answer}");
    let (_, events) = app.get("/api/v1/runs/big/events").await;
    assert_eq!(events["events"][0]["rule"], "non-finite", "{events}");
    assert_eq!(events["events"][0]["step"], 900);
    // The next batch carries on from the state the large one left.
    let answer = app
        .ingest("big", json!([{"step": 1001, "metrics": {"loss": "NaN"}}]))
        .await;
    assert_eq!(answer["new_points"], 1, "{answer}");
    let (_, run) = app.get("/api/v1/runs/big/rules").await;
    assert_eq!(run["rule_sets"][0]["name"], "presets");
}

both_stores!(
    a_large_batch_is_evaluated_beside_the_store_and_fires_the_same,
    a_failing_receiver_gets_one_accepted_delivery_after_three_logged_attempts,
    a_restart_in_the_middle_of_deliveries_loses_none,
    rule_files_are_validated_versioned_and_pinned,
    webhooks_refuse_private_addresses_unless_allowed,
    a_test_delivery_reaches_an_allowed_receiver,
);
