//! Every malformed request gets a 4xx whose JSON names the problem, and writes nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, TestApp, both_stores};

both_stores!(
    malformed_step_batches_are_refused_by_field_and_write_nothing,
    malformed_runs_are_refused_and_create_nothing,
    malformed_series_queries_name_the_parameter,
    malformed_signals_are_refused_and_store_nothing,
    bodies_over_the_limit_get_413,
    nul_characters_get_the_same_400_on_both_stores,
    a_metric_repeated_within_a_step_is_refused,
    rule_files_that_are_not_utf8_or_too_large_get_json_errors,
);

/// Asserts an error answer: status, code and (when given) the field it names.
fn refused(got: (StatusCode, Value), status: StatusCode, code: &str, field: Option<&str>) {
    let (s, body) = got;
    assert_eq!(s, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["field"].as_str(), field, "{body}");
    assert!(
        !body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{body}"
    );
}

const BAD: StatusCode = StatusCode::BAD_REQUEST;

async fn malformed_step_batches_are_refused_by_field_and_write_nothing(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("r").await;
    app.ingest("r", json!([{"step": 0, "metrics": {"loss": 1.0}}]))
        .await;
    let steps = "/api/v1/runs/r/steps";

    for raw in ["{\"steps\": [", "{} {}", "[]"] {
        let got = app.post_raw(steps, "application/json", raw).await;
        refused(got, BAD, "invalid_json", None);
    }
    let got = app.post_raw(steps, "text/plain", "{}").await;
    refused(
        got,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        None,
    );
    refused(app.post(steps, &json!({})).await, BAD, "invalid_json", None);

    let step = |s: Value| json!({"steps": [s]});
    let cases = [
        (json!({"steps": {}}), "steps"),
        (json!({"steps": [], "extra": 1}), "extra"),
        (step(json!({"step": "1", "metrics": {}})), "steps[0].step"),
        (step(json!({"step": 1.5, "metrics": {}})), "steps[0].step"),
        (step(json!({"step": 1, "metric": {}})), "steps[0].metric"),
        (
            step(json!({"step": 1, "metrics": {"loss": null}})),
            "steps[0].metrics.loss",
        ),
        (
            step(json!({"step": 1, "metrics": {"loss": "nan"}})),
            "steps[0].metrics.loss",
        ),
        (
            step(json!({"step": 1, "time": "Infinity", "metrics": {}})),
            "steps[0].time",
        ),
        // One bad record among good ones: the whole batch is refused.
        (
            json!({"steps": [
                {"step": 1, "metrics": {"loss": 2.0}},
                {"step": 2, "metrics": {"loss": 3.0}},
                {"step": -3, "metrics": {"loss": 4.0}},
            ]}),
            "steps[2].step",
        ),
        (
            json!({"steps": [
                {"step": 1, "metrics": {"a": 1}},
                {"step": 9_007_199_254_740_992_i64, "metrics": {}},
            ]}),
            "steps[1].step",
        ),
    ];
    for (body, field) in cases {
        refused(
            app.post(steps, &body).await,
            BAD,
            "invalid_field",
            Some(field),
        );
    }
    let long = "m".repeat(129);
    for (name, why) in [
        ("bad name", "contains"),
        ("/lead", "start"),
        ("_time", "reserved"),
        ("ä", "start"),
        (long.as_str(), "limit is 128"),
    ] {
        let body = step(json!({"step": 5, "metrics": {"ok": 1, name: 1}}));
        let (s, body) = app.post(steps, &body).await;
        assert_eq!(s, BAD, "{body}");
        assert_eq!(body["error"]["field"], format!("steps[0].metrics.{name}"));
        assert!(
            body["error"]["message"].as_str().unwrap().contains(why),
            "{body}"
        );
    }
    assert_eq!(
        app.stored_points("r").await,
        1,
        "no refused batch wrote anything"
    );

    let not_found = StatusCode::NOT_FOUND;
    let empty = json!({"steps": []});
    refused(
        app.post("/api/v1/runs/ghost/steps", &empty).await,
        not_found,
        "not_found",
        None,
    );
    let got = app.post("/api/v1/runs/bad%20id/steps", &empty).await;
    refused(got, BAD, "invalid_field", Some("run_id"));
    refused(
        app.get("/api/v1/nowhere").await,
        not_found,
        "not_found",
        None,
    );
}

async fn malformed_runs_are_refused_and_create_nothing(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("r").await;
    refused(
        app.put("/api/v1/runs/x", &json!({"tags": "dpo"})).await,
        BAD,
        "invalid_field",
        Some("tags"),
    );
    refused(
        app.put("/api/v1/runs/x", &json!({"tags": ["ok", ""]}))
            .await,
        BAD,
        "invalid_field",
        Some("tags[1]"),
    );
    refused(
        app.put("/api/v1/runs/x", &json!({"config": [1, 2]})).await,
        BAD,
        "invalid_field",
        Some("config"),
    );
    refused(
        app.put("/api/v1/runs/x", &json!({"project": " "})).await,
        BAD,
        "invalid_field",
        Some("project"),
    );
    refused(
        app.put(&format!("/api/v1/runs/{}", "x".repeat(65)), &json!({}))
            .await,
        BAD,
        "invalid_field",
        Some("run_id"),
    );
    refused(
        app.get("/api/v1/runs?limit=0").await,
        BAD,
        "invalid_field",
        Some("limit"),
    );
    refused(
        app.get("/api/v1/runs?limit=ten").await,
        BAD,
        "invalid_field",
        Some("limit"),
    );
    refused(
        app.get("/api/v1/runs?projekt=p").await,
        BAD,
        "invalid_field",
        Some("projekt"),
    );
    let (_, list) = app.get("/api/v1/runs").await;
    assert_eq!(
        list["runs"].as_array().unwrap().len(),
        1,
        "no refused create made a run"
    );
}

async fn malformed_series_queries_name_the_parameter(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("r").await;
    app.ingest("r", json!([{"step": 0, "metrics": {"loss": 1.0}}]))
        .await;
    let series = "/api/v1/runs/r/series";
    refused(app.get(series).await, BAD, "invalid_field", Some("metric"));
    refused(
        app.get(&format!("{series}?metric=loss&buckets=0")).await,
        BAD,
        "invalid_field",
        Some("buckets"),
    );
    refused(
        app.get(&format!("{series}?metric=loss&buckets=10001"))
            .await,
        BAD,
        "invalid_field",
        Some("buckets"),
    );
    refused(
        app.get(&format!("{series}?metric=loss&from=-1")).await,
        BAD,
        "invalid_field",
        Some("from"),
    );
    refused(
        app.get(&format!("{series}?metric=loss&from=9&to=3")).await,
        BAD,
        "invalid_field",
        Some("to"),
    );
    refused(
        app.get(&format!("{series}?metric=loss&format=xml")).await,
        BAD,
        "invalid_field",
        Some("format"),
    );
    refused(
        app.get(&format!("{series}?metric=loss&buckets=5&limit=5"))
            .await,
        BAD,
        "invalid_field",
        Some("limit"),
    );
    refused(
        app.get(&format!("{series}?metric=lo%20ss")).await,
        BAD,
        "invalid_field",
        Some("metric"),
    );
}

async fn malformed_signals_are_refused_and_store_nothing(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("r").await;
    let signals = "/api/v1/runs/r/signals";
    refused(
        app.post(signals, &json!({"kind": "explode", "reason": "x"}))
            .await,
        BAD,
        "invalid_field",
        Some("kind"),
    );
    refused(
        app.post(
            signals,
            &json!({"kind": "set_hparam", "name": "beta", "reason": "x"}),
        )
        .await,
        BAD,
        "invalid_field",
        Some("value"),
    );
    refused(
        app.post(
            signals,
            &json!({"kind": "set_hparam", "name": "Beta!", "value": 1, "reason": "x"}),
        )
        .await,
        BAD,
        "invalid_field",
        Some("name"),
    );
    // Only what the trainer can apply: the steerable hyperparameters, within their ranges.
    refused(
        app.post(
            signals,
            &json!({"kind": "set_hparam", "name": "learning_rate", "value": 1e-4, "reason": "x"}),
        )
        .await,
        BAD,
        "invalid_field",
        Some("name"),
    );
    refused(
        app.post(
            signals,
            &json!({"kind": "set_hparam", "name": "beta", "value": -1, "reason": "x"}),
        )
        .await,
        BAD,
        "invalid_field",
        Some("value"),
    );
    refused(
        app.post(signals, &json!({"kind": "stop"})).await,
        BAD,
        "invalid_json",
        None,
    );
    refused(
        app.post(
            signals,
            &json!({"kind": "stop", "reason": "x", "keep_step": -1}),
        )
        .await,
        BAD,
        "invalid_field",
        Some("keep_step"),
    );
    refused(
        app.post("/api/v1/runs/r/signals/abc/ack", &json!({"step": 1}))
            .await,
        BAD,
        "invalid_field",
        Some("signal_id"),
    );
    refused(
        app.post("/api/v1/runs/r/signals/1/ack", &json!({"step": -1}))
            .await,
        BAD,
        "invalid_field",
        Some("step"),
    );
    let (_, all) = app.get("/api/v1/runs/r/signals?pending=false").await;
    assert_eq!(all["signals"], json!([]), "no refused signal was stored");
    refused(
        app.get("/api/v1/runs/r/signals?pending=maybe").await,
        BAD,
        "invalid_field",
        Some("pending"),
    );
}

async fn bodies_over_the_limit_get_413(b: Backend) {
    let app = TestApp::spawn_with(b, |c| c.max_body_bytes = 4_096).await;
    app.create_run("r").await;
    let steps: Vec<Value> = (0..500)
        .map(|s| json!({"step": s, "metrics": {"loss": 1.0}}))
        .collect();
    let (s, body) = app
        .post("/api/v1/runs/r/steps", &json!({ "steps": steps }))
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("4096"),
        "{body}"
    );
    assert_eq!(app.stored_points("r").await, 0);
}

async fn nul_characters_get_the_same_400_on_both_stores(b: Backend) {
    let app = TestApp::spawn(b).await;
    for (config, field) in [
        (json!({"note": "a\u{0}b"}), "config.note"),
        (json!({"a": [1, {"b": "\u{0}"}]}), "config.a[1].b"),
        (json!({"k\u{0}": 1}), "config.k\\u0000"),
    ] {
        refused(
            app.put("/api/v1/runs/x", &json!({ "config": config }))
                .await,
            BAD,
            "invalid_field",
            Some(field),
        );
    }
    refused(
        app.put("/api/v1/runs/x", &json!({"name": "a\u{0}"})).await,
        BAD,
        "invalid_field",
        Some("name"),
    );
    let (s, _) = app.get("/api/v1/runs/x").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "nothing was created");
    refused(
        app.post(
            "/api/v1/webhooks",
            &json!({"name": "w", "url": "https://hooks.example/\u{0}"}),
        )
        .await,
        BAD,
        "invalid_field",
        Some("url"),
    );
    let (_, hooks) = app.get("/api/v1/webhooks").await;
    assert_eq!(hooks["webhooks"], json!([]));
    refused(
        app.get("/api/v1/runs?project=a%00b").await,
        BAD,
        "invalid_field",
        Some("project"),
    );
}

async fn a_metric_repeated_within_a_step_is_refused(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("r").await;
    let body = r#"{"steps": [{"step": 0, "metrics": {"m": 1, "m": 2}}]}"#;
    let got = app
        .post_raw("/api/v1/runs/r/steps", "application/json", body)
        .await;
    refused(got.clone(), BAD, "invalid_field", Some("steps[0].metrics"));
    assert!(
        got.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"m\""),
        "{}",
        got.1
    );
    assert_eq!(app.stored_points("r").await, 0);
}

async fn rule_files_that_are_not_utf8_or_too_large_get_json_errors(b: Backend) {
    let app = TestApp::spawn(b).await;
    let put = |body: Vec<u8>| {
        app.send(
            app.http
                .put(app.url("/api/v1/rule-sets/mine"))
                .header("content-type", "application/toml")
                .body(body),
        )
    };
    refused(
        put(b"# caf\xe9\n".to_vec()).await,
        BAD,
        "invalid_field",
        Some("source"),
    );
    let big = format!("# {}\n", "x".repeat(300 * 1024)).into_bytes();
    refused(
        put(big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    );
    let (s, _) = app.get("/api/v1/rule-sets/mine").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "nothing was stored");
}
