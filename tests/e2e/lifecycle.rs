//! The run lifecycle beyond training: delete a run with everything keyed to it (API, page, CLI),
//! rename it and edit its tags.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use reqwest::header::LOCATION;
use serde_json::{Value, json};

use crate::cli::{redline, succeeded};
use crate::harness::{Backend, TestApp, both_stores, eventually};
use crate::pages::hidden;
use crate::receiver::Receiver;
use crate::rules::{add_webhook, deliveries, local_delivery, nan_alert};

both_stores!(
    deleting_a_run_removes_everything_keyed_to_it_and_nothing_else,
    deleting_an_unknown_run_is_not_found,
    runs_are_renamed_and_retagged_and_bad_values_name_the_field,
    the_run_pages_delete_and_edit_forms_need_the_pages_csrf_token,
    runs_are_deleted_and_edited_from_the_command_line,
);

/// Every table that holds a run's data (each references `runs` or a row that does).
const RUN_TABLES: [&str; 7] = [
    "series_chunks",
    "run_metrics",
    "signals",
    "run_rule_sets",
    "rule_events",
    "webhook_outbox",
    "webhook_attempts",
];

/// Row counts of [`RUN_TABLES`], read from the database itself rather than through the API,
/// which can only show the rows of runs that exist.
async fn table_rows(app: &TestApp) -> BTreeMap<&'static str, i64> {
    let url = app.database_url();
    let mut rows = BTreeMap::new();
    for table in RUN_TABLES {
        let sql = format!("SELECT count(*) FROM {table}");
        let n: i64 = if let Some(path) = url.strip_prefix("sqlite://") {
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            let n = sqlx::query_scalar(&sql).fetch_one(&pool).await.unwrap();
            pool.close().await;
            n
        } else {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            let n = sqlx::query_scalar(&sql).fetch_one(&pool).await.unwrap();
            pool.close().await;
            n
        };
        rows.insert(table, n);
    }
    rows
}

async fn deleting_a_run_removes_everything_keyed_to_it_and_nothing_else(b: Backend) {
    let app = TestApp::spawn_with(b, local_delivery).await;
    let receiver = Receiver::start(0).await;
    add_webhook(&app, &receiver).await;
    // Two runs alike: each has a series, a stop signal, a pinned rule set, rule events and an
    // alert delivered to the webhook, with its attempt logged.
    for run in ["keep", "gone"] {
        nan_alert(&app, run).await;
    }
    eventually("both alerts to be delivered", async || {
        let log = deliveries(&app).await;
        (log.iter().filter(|a| a["outcome"] == "delivered").count() == 2).then_some(())
    })
    .await;
    let before = table_rows(&app).await;
    for (table, n) in &before {
        assert!(*n > 0 && n % 2 == 0, "{table}: {n} rows before");
    }

    let (s, body) = app.delete("/api/v1/runs/gone").await;
    assert_eq!((s, body), (StatusCode::NO_CONTENT, Value::Null));

    let after = table_rows(&app).await;
    for (table, n) in &after {
        assert_eq!(n * 2, before[table], "{table}: half the rows are left");
    }
    for path in ["", "/metrics", "/signals", "/events", "/rules"] {
        let (s, e) = app.get(&format!("/api/v1/runs/gone{path}")).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {e}");
    }
    let (_, list) = app.get("/api/v1/runs").await;
    assert_eq!(list["runs"].as_array().unwrap().len(), 1);
    assert_eq!(list["runs"][0]["id"], "keep");
    let log = deliveries(&app).await;
    assert_eq!(
        log.len(),
        1,
        "only the kept run's delivery is logged: {log:?}"
    );
    let (_, kept) = app.get("/api/v1/runs/keep/events").await;
    assert_eq!(log[0]["event_id"], kept["events"][0]["id"]);
    assert_eq!(app.stored_points("keep").await, 2);

    // The id is free again, for an empty run whose rules start afresh and fire again.
    app.create_run("gone").await;
    assert_eq!(app.stored_points("gone").await, 0);
    let (_, signals) = app.get("/api/v1/runs/gone/signals?pending=false").await;
    assert_eq!(signals["signals"], json!([]));
    let (_, events) = app.get("/api/v1/runs/gone/events").await;
    assert_eq!(events["events"], json!([]));
    let answer = app
        .ingest(
            "gone",
            json!([{"step": 1, "metrics": {"loss": 0.69}}, {"step": 2, "metrics": {"loss": "NaN"}}]),
        )
        .await;
    assert_eq!(answer["new_points"], 2, "{answer}");
    assert_eq!(answer["signals"][0]["kind"], "stop", "{answer}");
}

async fn deleting_an_unknown_run_is_not_found(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (s, e) = app.delete("/api/v1/runs/never").await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    app.create_run("once").await;
    assert_eq!(
        app.delete("/api/v1/runs/once").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.delete("/api/v1/runs/once").await.0,
        StatusCode::NOT_FOUND,
        "a second delete finds nothing"
    );
    let (s, e) = app.delete("/api/v1/runs/bad%20id").await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("run_id"))
    );
}

async fn runs_are_renamed_and_retagged_and_bad_values_name_the_field(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (s, _) = app
        .put(
            "/api/v1/runs/r",
            &json!({"name": "first", "project": "p", "tags": ["x"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, run) = app
        .patch("/api/v1/runs/r", &json!({"name": "DPO β=0.1"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{run}");
    assert_eq!(
        (&run["name"], &run["tags"]),
        (&json!("DPO β=0.1"), &json!(["x"]))
    );
    let (s, run) = app
        .patch("/api/v1/runs/r", &json!({"tags": ["y", "z"]}))
        .await;
    assert_eq!(s, StatusCode::OK, "{run}");
    assert_eq!(
        (&run["name"], &run["tags"]),
        (&json!("DPO β=0.1"), &json!(["y", "z"]))
    );
    let (_, tagged) = app.get("/api/v1/runs?tag=z").await;
    assert_eq!(tagged["runs"][0]["id"], "r", "the tag filter sees new tags");

    for (body, field) in [
        (json!({}), "name"),
        (json!({"name": " "}), "name"),
        (json!({"name": "n".repeat(257)}), "name"),
        (json!({"tags": ["ok", ""]}), "tags[1]"),
        (json!({"tags": "y"}), "tags"),
        (json!({"tags": vec!["t"; 65]}), "tags"),
        // Only the name and tags can be edited.
        (json!({"project": "q"}), "project"),
    ] {
        let (s, e) = app.patch("/api/v1/runs/r", &body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {e}");
        assert_eq!(e["error"]["field"], field, "{body}: {e}");
    }
    let (s, _) = app
        .send(
            app.http
                .patch(app.url("/api/v1/runs/r"))
                .header("content-type", "text/plain")
                .body(r#"{"name": "x"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (_, run) = app.get("/api/v1/runs/r").await;
    assert_eq!(
        (&run["name"], &run["tags"]),
        (&json!("DPO β=0.1"), &json!(["y", "z"])),
        "refused edits change nothing"
    );
    let (s, _) = app
        .patch("/api/v1/runs/missing", &json!({"name": "x"}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn the_run_pages_delete_and_edit_forms_need_the_pages_csrf_token(b: Backend) {
    let app = TestApp::spawn(b).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    app.create_run("p1").await;
    let (_, html) = app.get_text("/runs/p1").await;
    assert!(html.contains(r#"action="/runs/p1/delete""#), "{html}");
    assert!(html.contains(r#"action="/runs/p1/edit""#));
    // Confirmation is the form's own: no script on the page does it.
    assert!(!html.contains("onclick") && !html.contains("onsubmit"));
    let csrf = hidden(&html, "csrf");
    let post = |path: &'static str, form: Vec<(&'static str, String)>| {
        client.post(app.url(path)).form(&form).send()
    };

    let missing = post("/runs/p1/delete", vec![("confirm", "yes".into())])
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::FORBIDDEN);
    let forged = post(
        "/runs/p1/delete",
        vec![("confirm", "yes".into()), ("csrf", "0".repeat(64))],
    )
    .await
    .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let unticked = post("/runs/p1/delete", vec![("csrf", csrf.clone())])
        .await
        .unwrap();
    assert_eq!(unticked.status(), StatusCode::BAD_REQUEST);
    assert!(unticked.text().await.unwrap().contains("confirm"));
    assert_eq!(app.get("/api/v1/runs/p1").await.0, StatusCode::OK);

    let deleted = post(
        "/runs/p1/delete",
        vec![("confirm", "yes".into()), ("csrf", csrf.clone())],
    )
    .await
    .unwrap();
    assert_eq!(deleted.status(), StatusCode::SEE_OTHER);
    assert_eq!(deleted.headers()[LOCATION], "/");
    assert_eq!(app.get("/api/v1/runs/p1").await.0, StatusCode::NOT_FOUND);
    assert_eq!(app.get_text("/runs/p1").await.0, StatusCode::NOT_FOUND);

    app.create_run("p2").await;
    let forged = post(
        "/runs/p2/edit",
        vec![("name", "x".into()), ("csrf", "0".repeat(64))],
    )
    .await
    .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let edited = post(
        "/runs/p2/edit",
        vec![
            ("name", "renamed".into()),
            ("tags", "a, b\r\n\r\nc\r\n".into()),
            ("csrf", csrf.clone()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(edited.status(), StatusCode::SEE_OTHER);
    assert_eq!(edited.headers()[LOCATION], "/runs/p2");
    let (_, run) = app.get("/api/v1/runs/p2").await;
    assert_eq!(
        (&run["name"], &run["tags"]),
        (&json!("renamed"), &json!(["a, b", "c"]))
    );
    let blank = post(
        "/runs/p2/edit",
        vec![("name", String::new()), ("csrf", csrf.clone())],
    )
    .await
    .unwrap();
    assert_eq!(blank.status(), StatusCode::BAD_REQUEST);
    assert!(
        blank
            .text()
            .await
            .unwrap()
            .contains("name: must not be empty")
    );
}

async fn runs_are_deleted_and_edited_from_the_command_line(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("c1").await;
    app.ingest("c1", json!([{"step": 1, "metrics": {"loss": 0.5}}]))
        .await;
    let cwd = tempfile::tempdir().unwrap();
    let db = app.database_url();
    let cli = |args: &[&str]| {
        let mut cmd = redline(cwd.path());
        cmd.args(args).args(["--database-url", db.as_str()]);
        cmd
    };

    let out = succeeded(&mut cli(&[
        "runs",
        "edit",
        "c1",
        "--name",
        "from the CLI",
        "--tag",
        "a",
        "--tag",
        "b",
    ]))
    .await;
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("c1\tfrom the CLI\ta,b"));
    let (_, run) = app.get("/api/v1/runs/c1").await;
    assert_eq!(
        (&run["name"], &run["tags"]),
        (&json!("from the CLI"), &json!(["a", "b"]))
    );
    succeeded(&mut cli(&["runs", "edit", "c1", "--no-tags"])).await;
    assert_eq!(app.get("/api/v1/runs/c1").await.1["tags"], json!([]));

    // Without a terminal to ask on, deleting needs --yes.
    let refused = cli(&["runs", "delete", "c1"]).output().await.unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    assert_eq!(app.get("/api/v1/runs/c1").await.0, StatusCode::OK);

    succeeded(&mut cli(&["runs", "delete", "c1", "--yes"])).await;
    assert_eq!(app.get("/api/v1/runs/c1").await.0, StatusCode::NOT_FOUND);
    let again = cli(&["runs", "delete", "c1", "--yes"])
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("does not exist"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
