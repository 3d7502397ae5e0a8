use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, SseReader, TestApp, both_stores};

both_stores!(
    signals_are_pending_until_acknowledged,
    the_event_stream_delivers_at_once_and_resumes_after_last_event_id,
    shutdown_ends_open_event_streams,
    a_signal_the_trainer_refused_is_stored_as_refused_and_not_drawn,
);

fn stop() -> Value {
    json!({"kind": "stop", "keep_step": 300, "reason": "top-k entropy turned down", "source_rule": "entropy-reversal"})
}

async fn signals_are_pending_until_acknowledged(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("r").await;
    let (s, beta) = app
        .post(
            "/api/v1/runs/r/signals",
            &json!({"kind": "set_hparam", "name": "beta", "value": 0.2, "reason": "mass falling"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{beta}");
    assert_eq!(
        (
            beta["kind"].as_str(),
            beta["name"].as_str(),
            beta["value"].as_f64()
        ),
        (Some("set_hparam"), Some("beta"), Some(0.2))
    );
    let (_, stopping) = app.post("/api/v1/runs/r/signals", &stop()).await;
    assert_eq!(
        (
            stopping["keep_step"].as_i64(),
            stopping["source_rule"].as_str()
        ),
        (Some(300), Some("entropy-reversal"))
    );

    // The ingest answer carries what is pending, oldest first.
    let answer = app
        .ingest("r", json!([{"step": 1, "metrics": {"loss": 1.0}}]))
        .await;
    let ids: Vec<&Value> = answer["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["id"])
        .collect();
    assert_eq!(ids, [&beta["id"], &stopping["id"]]);

    let ack = format!("/api/v1/runs/r/signals/{}/ack", beta["id"]);
    let (s, acked) = app.post(&ack, &json!({"step": 12})).await;
    assert_eq!(s, StatusCode::OK, "{acked}");
    assert_eq!(acked["applied_step"], 12);
    assert!(acked["acked_at"].is_string());
    let (s, same) = app.post(&ack, &json!({"step": 12})).await;
    assert_eq!((s, &same["acked_at"]), (StatusCode::OK, &acked["acked_at"]));
    let (s, e) = app.post(&ack, &json!({"step": 13})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");

    let (_, pending) = app.get("/api/v1/runs/r/signals").await;
    assert_eq!(pending["signals"].as_array().unwrap().len(), 1);
    let (_, all) = app.get("/api/v1/runs/r/signals?pending=false").await;
    assert_eq!(all["signals"].as_array().unwrap().len(), 2);
    let answer = app
        .ingest("r", json!([{"step": 2, "metrics": {"loss": 1.0}}]))
        .await;
    assert_eq!(answer["signals"].as_array().unwrap().len(), 1);

    let (s, _) = app
        .post("/api/v1/runs/r/signals/999999/ack", &json!({"step": 1}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    app.post("/api/v1/runs/r/finish", &json!({"status": "completed"}))
        .await;
    let (s, e) = app.post("/api/v1/runs/r/signals", &stop()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
}

async fn open_stream(app: &TestApp, run: &str, last_event_id: Option<&str>) -> SseReader {
    let mut req = app
        .http
        .get(app.url(&format!("/api/v1/runs/{run}/signals/stream")));
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    let resp = req.send().await.expect("stream opens");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    SseReader::new(resp)
}

async fn the_event_stream_delivers_at_once_and_resumes_after_last_event_id(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("r").await;
    app.create_run("other").await;
    let (_, first) = app.post("/api/v1/runs/r/signals", &stop()).await;

    let mut stream = open_stream(&app, "r", None).await;
    let ev = stream
        .next()
        .await
        .expect("pending signal delivered on connect");
    assert_eq!(ev.event.as_deref(), Some("signal"));
    assert_eq!(ev.id.as_deref(), Some(first["id"].to_string().as_str()));
    let data: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(data["reason"], "top-k entropy turned down");

    // Another run's signal does not appear; this run's next one does, without polling.
    app.post(
        "/api/v1/runs/other/signals",
        &json!({"kind": "checkpoint", "reason": "x"}),
    )
    .await;
    let (_, second) = app
        .post(
            "/api/v1/runs/r/signals",
            &json!({"kind": "checkpoint", "reason": "before the turn"}),
        )
        .await;
    let ev = stream.next().await.expect("new signal delivered");
    assert_eq!(ev.id.as_deref(), Some(second["id"].to_string().as_str()));
    drop(stream);

    // Reconnecting after the first event skips it.
    let mut resumed = open_stream(&app, "r", Some(&first["id"].to_string())).await;
    let ev = resumed.next().await.expect("event after Last-Event-ID");
    assert_eq!(ev.id.as_deref(), Some(second["id"].to_string().as_str()));

    let (s, e) = app.get("/api/v1/runs/nobody/signals/stream").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    let resp = app
        .http
        .get(app.url("/api/v1/runs/r/signals/stream"))
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

async fn shutdown_ends_open_event_streams(b: Backend) {
    let mut app = TestApp::spawn(b).await;
    app.create_run("r").await;
    let (_, sig) = app.post("/api/v1/runs/r/signals", &stop()).await;
    let mut stream = open_stream(&app, "r", None).await;
    assert_eq!(stream.next().await.unwrap().id, Some(sig["id"].to_string()));
    app.shutdown().await;
    assert!(
        stream.next().await.is_none(),
        "the stream ends with the server"
    );
}

async fn a_signal_the_trainer_refused_is_stored_as_refused_and_not_drawn(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("r").await;
    app.ingest("r", json!([{"step": 1, "metrics": {"loss": 1.0}}]))
        .await;
    let (_, signal) = app
        .post(
            "/api/v1/runs/r/signals",
            &json!({"kind": "set_hparam", "name": "lr_scale", "value": 0.5, "reason": "slow down"}),
        )
        .await;
    let ack = format!("/api/v1/runs/r/signals/{}/ack", signal["id"]);
    let why = "this trainer has no learning-rate schedule to scale";
    let (s, answered) = app.post(&ack, &json!({"step": 2, "refused": why})).await;
    assert_eq!(s, StatusCode::OK, "{answered}");
    assert_eq!(answered["refused"], why);
    assert_eq!(answered["applied_step"], 2);
    // Answered: no longer pending. Saying it was applied after all is a conflict.
    let (_, pending) = app.get("/api/v1/runs/r/signals").await;
    assert_eq!(pending["signals"], json!([]));
    let (s, e) = app.post(&ack, &json!({"step": 2})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("refused"),
        "{e}"
    );
    // The run page says so (charts leave it out: `charts::markers`' test).
    let (_, html) = app.get_text("/runs/r").await;
    assert!(html.contains(why), "the page shows why it was refused");
}
