use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, TestApp, both_stores};

both_stores!(
    raw_reads_take_a_range_and_page_with_next_from,
    downsampling_keeps_min_max_last_so_spikes_survive,
    unknown_series_and_runs_are_not_found,
);

async fn seed(app: &TestApp, n: i64) {
    app.create_run("r").await;
    let steps: Vec<Value> = (0..n)
        .map(|s| json!({"step": s, "metrics": {"loss": s as f64 / 10.0}}))
        .collect();
    for chunk in steps.chunks(5_000) {
        app.ingest("r", Value::Array(chunk.to_vec())).await;
    }
}

async fn raw_reads_take_a_range_and_page_with_next_from(b: Backend) {
    let app = TestApp::spawn(b).await;
    seed(&app, 3_000).await;
    let (s, body) = app
        .get("/api/v1/runs/r/series?metric=loss&from=1020&to=1030")
        .await;
    assert_eq!(s, StatusCode::OK);
    let steps: Vec<i64> = body["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["step"].as_i64().unwrap())
        .collect();
    assert_eq!(steps, (1020..=1030).collect::<Vec<_>>());
    assert_eq!(body["next_from"], Value::Null);

    let mut from = 0;
    let mut seen = 0;
    loop {
        let (_, page) = app
            .get(&format!(
                "/api/v1/runs/r/series?metric=loss&from={from}&limit=700"
            ))
            .await;
        let points = page["points"].as_array().unwrap();
        assert_eq!(points[0]["step"].as_i64(), Some(from));
        seen += points.len();
        match page["next_from"].as_i64() {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(seen, 3_000);
}

async fn downsampling_keeps_min_max_last_so_spikes_survive(b: Backend) {
    let app = TestApp::spawn(b).await;
    seed(&app, 10_000).await;
    app.create_run("s").await;
    let mut steps: Vec<Value> = (0..10_000)
        .map(|s| json!({"step": s, "metrics": {"loss": 1.0}}))
        .collect();
    steps[6_543] = json!({"step": 6_543, "metrics": {"loss": 1e6}});
    steps[6_544] = json!({"step": 6_544, "metrics": {"loss": "NaN"}});
    app.ingest("s", Value::Array(steps)).await;

    let (s, body) = app
        .get("/api/v1/runs/s/series?metric=loss&buckets=100")
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        (
            body["from"].as_i64(),
            body["to"].as_i64(),
            body["bucket_width"].as_i64()
        ),
        (Some(0), Some(9_999), Some(100))
    );
    let buckets = body["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 100);
    let spike = &buckets[65];
    assert_eq!(
        (spike["start"].as_i64(), spike["end"].as_i64()),
        (Some(6_500), Some(6_599))
    );
    assert_eq!(spike["max"], json!(1e6));
    assert_eq!(spike["min"], json!(1.0));
    assert_eq!(spike["nan_count"], 1);
    assert_eq!(spike["count"], 100);
    assert!(
        buckets
            .iter()
            .enumerate()
            .all(|(i, b)| i == 65 || b["max"] == json!(1.0))
    );

    let (s, csv) = app
        .get_text("/api/v1/runs/s/series?metric=loss&buckets=100&format=csv")
        .await;
    assert_eq!(s, StatusCode::OK);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "start,end,count,min,max,last_step,last,nan_count");
    assert_eq!(lines[66], "6500,6599,100,1,1000000,6599,1,1");
    assert_eq!(lines.len(), 101);

    // An explicit range buckets that range only.
    let (_, part) = app
        .get("/api/v1/runs/r/series?metric=loss&from=100&to=199&buckets=10")
        .await;
    let b0 = &part["buckets"][0];
    assert_eq!(
        (
            b0["start"].as_i64(),
            b0["end"].as_i64(),
            b0["last"].as_f64()
        ),
        (Some(100), Some(109), Some(10.9))
    );
    assert_eq!(part["buckets"].as_array().unwrap().len(), 10);
}

async fn unknown_series_and_runs_are_not_found(b: Backend) {
    let app = TestApp::spawn(b).await;
    seed(&app, 10).await;
    let (s, e) = app.get("/api/v1/runs/r/series?metric=lost").await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    assert!(e["error"]["message"].as_str().unwrap().contains("lost"));
    let (s, _) = app.get("/api/v1/runs/nobody/series?metric=loss").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app.get("/api/v1/runs/nobody/metrics").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
