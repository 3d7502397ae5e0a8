use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, TestApp, both_stores};

both_stores!(
    a_resent_batch_changes_nothing_and_reports_no_new_points,
    non_finite_values_round_trip_as_json_and_csv,
    step_times_are_kept_as_the_time_series,
    sparse_unordered_steps_across_chunks_read_back_exactly,
    concurrent_resends_count_each_point_once,
);

async fn a_resent_batch_changes_nothing_and_reports_no_new_points(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("r").await;
    let steps = json!([
        {"step": 0, "metrics": {"loss": 0.69, "rewards/chosen": 0.0}},
        {"step": 1, "metrics": {"loss": 0.68, "rewards/chosen": 0.01}},
    ]);
    let first = app.ingest("r", steps.clone()).await;
    assert_eq!(
        (
            first["new_points"].as_u64(),
            first["duplicate_points"].as_u64()
        ),
        (Some(4), Some(0))
    );
    let again = app.ingest("r", steps).await;
    assert_eq!(
        (
            again["new_points"].as_u64(),
            again["duplicate_points"].as_u64()
        ),
        (Some(0), Some(4))
    );

    // Overlapping batch: the stored value wins, only the new step counts.
    let overlap = app
        .ingest(
            "r",
            json!([{"step": 1, "metrics": {"loss": 99.0}}, {"step": 2, "metrics": {"loss": 0.5}}]),
        )
        .await;
    assert_eq!(
        (
            overlap["new_points"].as_u64(),
            overlap["duplicate_points"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let (_, series) = app.get("/api/v1/runs/r/series?metric=loss").await;
    assert_eq!(
        series["points"],
        json!([{"step":0,"value":0.69},{"step":1,"value":0.68},{"step":2,"value":0.5}])
    );
    let (_, run) = app.get("/api/v1/runs/r").await;
    assert_eq!(run["last_step"], 2);
    assert_eq!(app.stored_points("r").await, 5);

    // Repeats inside one batch: the first wins, the rest count as duplicates.
    let inner = app
        .ingest(
            "r",
            json!([{"step": 7, "metrics": {"kl": 1.0}}, {"step": 7, "metrics": {"kl": 2.0}}]),
        )
        .await;
    assert_eq!(
        (
            inner["new_points"].as_u64(),
            inner["duplicate_points"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let (_, kl) = app.get("/api/v1/runs/r/series?metric=kl").await;
    assert_eq!(kl["points"], json!([{"step": 7, "value": 1.0}]));
}

async fn non_finite_values_round_trip_as_json_and_csv(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("r").await;
    app.ingest(
        "r",
        json!([
            {"step": 0, "metrics": {"loss": "NaN"}},
            {"step": 1, "metrics": {"loss": "Infinity"}},
            {"step": 2, "metrics": {"loss": "-Infinity"}},
            {"step": 3, "metrics": {"loss": -0.0}},
            {"step": 4, "metrics": {"loss": 1e-300}},
        ]),
    )
    .await;
    let (_, s) = app.get("/api/v1/runs/r/series?metric=loss").await;
    let values: Vec<&Value> = s["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["value"])
        .collect();
    assert_eq!(
        values,
        [
            &json!("NaN"),
            &json!("Infinity"),
            &json!("-Infinity"),
            &json!(-0.0),
            &json!(1e-300)
        ]
    );
    let (status, csv) = app
        .get_text("/api/v1/runs/r/series?metric=loss&format=csv")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        csv,
        "step,value\n0,NaN\n1,Infinity\n2,-Infinity\n3,-0\n4,1e-300\n"
    );
    let (_, metrics) = app.get("/api/v1/runs/r/metrics").await;
    assert_eq!(metrics["metrics"][0]["last_value"], json!(1e-300));
    // The last value of a series may itself be NaN: the summary keeps it.
    app.ingest("r", json!([{"step": 5, "metrics": {"loss": "NaN"}}]))
        .await;
    let (_, metrics) = app.get("/api/v1/runs/r/metrics").await;
    assert_eq!(metrics["metrics"][0]["last_value"], "NaN");
}

async fn step_times_are_kept_as_the_time_series(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("r").await;
    app.ingest(
        "r",
        json!([{"step": 3, "time": 1_700_000_000.25, "metrics": {"loss": 1.0}}]),
    )
    .await;
    let (s, t) = app.get("/api/v1/runs/r/series?metric=_time").await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["points"], json!([{"step": 3, "value": 1_700_000_000.25}]));
}

/// A deterministic stand-in for random data (no seedable RNG needed).
fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *state >> 33
}

async fn sparse_unordered_steps_across_chunks_read_back_exactly(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("r").await;
    let mut rng = 42;
    let mut expected = std::collections::BTreeMap::new();
    // Five batches of steps scattered over ~5 chunks, sent out of order, with overlaps.
    for _ in 0..5 {
        let steps: Vec<Value> = (0..300)
            .map(|_| {
                let step = lcg(&mut rng) % 5_000;
                let value = (lcg(&mut rng) % 1_000) as f64 / 7.0;
                expected.entry(step).or_insert(value);
                json!({"step": step, "metrics": {"m": value}})
            })
            .collect();
        app.ingest("r", Value::Array(steps)).await;
    }
    // First value per step wins across batches, and within one (entry().or_insert above).
    let (_, s) = app
        .get("/api/v1/runs/r/series?metric=m&limit=1000000")
        .await;
    let got: Vec<(u64, f64)> = s["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["step"].as_u64().unwrap(), p["value"].as_f64().unwrap()))
        .collect();
    let want: Vec<(u64, f64)> = expected.into_iter().collect();
    assert_eq!(got, want);
    assert_eq!(app.stored_points("r").await, want.len() as u64);
}

async fn concurrent_resends_count_each_point_once(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("r").await;
    let steps: Vec<Value> = (0..2_000)
        .map(|s| json!({"step": s, "metrics": {"a": s, "b": -s}}))
        .collect();
    let body = json!({ "steps": steps });
    let url = app.url("/api/v1/runs/r/steps");
    let sends = (0..6).map(|_| {
        let (http, url, body) = (app.http.clone(), url.clone(), body.clone());
        tokio::spawn(async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()["new_points"]
                .as_u64()
                .unwrap()
        })
    });
    let mut total = 0;
    for s in sends {
        total += s.await.unwrap();
    }
    assert_eq!(total, 4_000, "every point is new exactly once");
    assert_eq!(app.stored_points("r").await, 4_000);
}
