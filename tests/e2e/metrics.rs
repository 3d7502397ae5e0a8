//! `GET /metrics`: what it counts after real traffic, and that it is a read behind the tokens.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::json;

use crate::harness::{Backend, TestApp, both_stores};
use redline_server::config::ApiToken;

const TOKEN: &str = "s3cret-token-for-metrics";

both_stores!(
    metrics_count_requests_points_firings_streams_and_deliveries,
    metrics_are_a_read_behind_the_token_policy,
);

/// The samples of an OpenMetrics text, by series (`name{labels}`).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

/// Traffic of every kind `/metrics` counts: a failed test delivery, a run whose NaN loss fires
/// the non-finite preset (an alert queued for the webhook, and a stop signal), a resent batch,
/// and a request for no route. Returns the stop signal's id.
async fn traffic(app: &TestApp) -> i64 {
    let (s, body) = app
        .post(
            "/api/v1/webhooks",
            &json!({"name": "hook", "url": "http://127.0.0.1:9/hook"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, attempt) = app.post("/api/v1/webhooks/hook/test", &json!({})).await;
    assert_eq!((s, &attempt["outcome"]), (StatusCode::OK, &json!("failed")));

    app.create_run("m").await;
    let steps =
        json!([{"step": 1, "metrics": {"loss": 0.69}}, {"step": 2, "metrics": {"loss": "NaN"}}]);
    let first = app.ingest("m", steps.clone()).await;
    assert_eq!(first["signals"][0]["kind"], "stop", "{first}");
    let resent = app.ingest("m", steps).await;
    assert_eq!(resent["duplicate_points"], 2, "{resent}");
    assert_eq!(app.get("/nowhere").await.0, StatusCode::NOT_FOUND);
    first["signals"][0]["id"].as_i64().unwrap()
}

async fn metrics_count_requests_points_firings_streams_and_deliveries(b: Backend) {
    // Loopback webhooks are not allowed, so every delivery fails; and a failed alert waits an
    // hour before its retry, so it stays queued for the whole test.
    let app = TestApp::spawn_with(b, |c| {
        c.delivery.backoff_base = Duration::from_secs(3600);
        c.delivery.backoff_max = Duration::from_secs(3600);
    })
    .await;
    let stop = traffic(&app).await;

    // Two event streams held open while the metrics are read.
    let signals = app
        .http
        .get(app.url("/api/v1/runs/m/signals/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(signals.status(), StatusCode::OK);
    let page = app
        .http
        .get(app.url("/runs/m/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);

    let resp = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
    );
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        !text.contains("/runs/m"),
        "routes are labelled by template, never by path:\n{text}"
    );
    let got = samples(&text);
    let steps_route = r#"method="POST",route="/api/v1/runs/{run_id}/steps",status="200""#;
    for (series, want) in [
        (
            format!("redline_http_requests_total{{{steps_route}}}"),
            2.0,
        ),
        (
            format!("redline_http_request_duration_seconds_count{{{steps_route}}}"),
            2.0,
        ),
        (
            r#"redline_http_requests_total{method="PUT",route="/api/v1/runs/{run_id}",status="201"}"#
                .to_owned(),
            1.0,
        ),
        (
            r#"redline_http_requests_total{method="GET",route="unmatched",status="404"}"#
                .to_owned(),
            1.0,
        ),
        (r#"redline_ingest_points_total{result="new"}"#.to_owned(), 2.0),
        (
            r#"redline_ingest_points_total{result="duplicate"}"#.to_owned(),
            2.0,
        ),
        (
            r#"redline_rule_firings_total{action="alert",severity="critical"}"#.to_owned(),
            1.0,
        ),
        (
            r#"redline_rule_firings_total{action="stop",severity="critical"}"#.to_owned(),
            1.0,
        ),
        ("redline_signals_pending".to_owned(), 1.0),
        ("redline_webhook_outbox_pending".to_owned(), 1.0),
        (
            r#"redline_webhook_failed_attempts{outcome="failed"}"#.to_owned(),
            1.0,
        ),
        (r#"redline_sse_connections{stream="signals"}"#.to_owned(), 1.0),
        (r#"redline_sse_connections{stream="pages"}"#.to_owned(), 1.0),
    ] {
        assert_eq!(got.get(&series), Some(&want), "{series} in\n{text}");
    }
    drop((signals, page));

    // The signal answered, the run's pending count falls back to zero.
    let (s, _) = app
        .post(
            &format!("/api/v1/runs/m/signals/{stop}/ack"),
            &json!({"step": 2}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, text) = app.get_text("/metrics").await;
    assert_eq!(samples(&text).get("redline_signals_pending"), Some(&0.0));
}

async fn metrics_are_a_read_behind_the_token_policy(b: Backend) {
    let mut private =
        TestApp::spawn_with(b, |c| c.tokens = vec![ApiToken::parse(TOKEN).unwrap()]).await;
    let (s, e) = private.get("/metrics").await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    private.token = Some(TOKEN.into());
    assert_eq!(private.get_text("/metrics").await.0, StatusCode::OK);

    let public = TestApp::spawn_with(b, |c| {
        c.tokens = vec![ApiToken::parse(TOKEN).unwrap()];
        c.public_read = true;
    })
    .await;
    let (s, text) = public.get_text("/metrics").await;
    assert_eq!(s, StatusCode::OK);
    assert!(text.contains("redline_signals_pending 0"), "{text}");
}
