use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Backend, TestApp, both_stores};

both_stores!(
    create_is_idempotent_and_resume_keeps_the_first_config,
    resuming_under_another_project_is_a_conflict,
    runs_are_listed_newest_first_with_filters,
    finishing_is_idempotent_and_a_second_status_conflicts,
);

async fn create_is_idempotent_and_resume_keeps_the_first_config(b: Backend) {
    let app = TestApp::spawn(b).await;
    let body = json!({"name": "DPO β=0.1", "project": "p", "tags": ["dpo", "tiny"], "config": {"beta": 0.1}});
    let (s, first) = app.put("/api/v1/runs/r1", &body).await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    assert_eq!(first["status"], "running");
    assert_eq!(first["config"]["beta"], 0.1);
    assert_eq!(first["tags"], json!(["dpo", "tiny"]));
    assert_eq!(first["name"], "DPO β=0.1");

    // A retry (say after a timeout) gets the same run back, not a second one.
    let retry = json!({"project": "p", "config": {"beta": 0.5}});
    let (s, again) = app.put("/api/v1/runs/r1", &retry).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["created_at"], first["created_at"]);
    assert_eq!(
        again["config"]["beta"], 0.1,
        "resume keeps the first config"
    );
    let (_, list) = app.get("/api/v1/runs").await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 1);

    // Resuming a finished (crashed) run makes it running again.
    let (s, _) = app
        .post(
            "/api/v1/runs/r1/finish",
            &json!({"status": "failed", "reason": "OOM"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, resumed) = app.put("/api/v1/runs/r1", &retry).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(resumed["status"], "running");
    assert_eq!(resumed["finished_at"], json!(null));
    assert_eq!(resumed["status_reason"], json!(null));

    let (s, got) = app.get("/api/v1/runs/r1").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["id"], "r1");
    let (s, defaults) = app.put("/api/v1/runs/bare", &json!({})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(
        (defaults["name"].as_str(), defaults["project"].as_str()),
        (Some("bare"), Some("default"))
    );
    assert_eq!(defaults["config"], json!({}));
}

async fn resuming_under_another_project_is_a_conflict(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("shared-id").await;
    let (s, e) = app
        .put("/api/v1/runs/shared-id", &json!({"project": "other"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(e["error"]["code"], "conflict");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("project"),
        "{e}"
    );
}

async fn runs_are_listed_newest_first_with_filters(b: Backend) {
    let app = TestApp::spawn(b).await;
    for (id, project) in [("a", "x"), ("b", "y"), ("c", "x")] {
        let (s, _) = app
            .put(&format!("/api/v1/runs/{id}"), &json!({"project": project}))
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    app.post("/api/v1/runs/a/finish", &json!({"status": "completed"}))
        .await;
    let ids = |v: &serde_json::Value| {
        v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let (_, all) = app.get("/api/v1/runs").await;
    assert_eq!(ids(&all), ["c", "b", "a"]);
    let (_, x) = app.get("/api/v1/runs?project=x").await;
    assert_eq!(ids(&x), ["c", "a"]);
    let (_, done) = app.get("/api/v1/runs?project=x&status=completed").await;
    assert_eq!(ids(&done), ["a"]);
    let (_, page) = app.get("/api/v1/runs?limit=1&offset=1").await;
    assert_eq!(ids(&page), ["b"]);
    let (s, e) = app.get("/api/v1/runs?status=done").await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("status"))
    );
}

async fn finishing_is_idempotent_and_a_second_status_conflicts(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("r").await;
    let finish = json!({"status": "stopped", "reason": "entropy reversed at step 340"});
    let (s, run) = app.post("/api/v1/runs/r/finish", &finish).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(run["status"], "stopped");
    assert_eq!(run["status_reason"], "entropy reversed at step 340");
    assert!(run["finished_at"].is_string());
    let (s, again) = app.post("/api/v1/runs/r/finish", &finish).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["finished_at"], run["finished_at"]);
    let (s, e) = app
        .post("/api/v1/runs/r/finish", &json!({"status": "completed"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    let (s, e) = app
        .post("/api/v1/runs/r/finish", &json!({"status": "running"}))
        .await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("status"))
    );
    let (s, _) = app.post("/api/v1/runs/missing/finish", &finish).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
