use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

use crate::harness::{Backend, SseReader, TestApp, both_stores};
use redline_server::config::ApiToken;

const NASTY: &str = "<script>alert(1)</script>";

/// `n` steps of a DPO-like run, with a one-step spike in `loss` at `spike`.
fn steps(range: std::ops::Range<i64>, spike: i64) -> Value {
    let steps: Vec<Value> = range
        .map(|s| {
            let loss = if s == spike { 50.0 } else { 0.7 - s as f64 * 1e-4 };
            json!({"step": s, "metrics": {
                "loss": loss, "rewards/chosen": 0.01 * s as f64, "rewards/rejected": -0.01 * s as f64,
                "rewards/margins": 0.02 * s as f64, "topk_entropy/chosen": 1.5, "grad_norm": 2.0,
                "beta": 0.1, "eval/score": 0.5, "time/step_seconds": 0.01}})
        })
        .collect();
    Value::Array(steps)
}

/// The value of a hidden form field in `html`.
pub fn hidden(html: &str, name: &str) -> String {
    let at = html
        .find(&format!(r#"name="{name}" value=""#))
        .expect("field present");
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

both_stores!(names_tags_and_config_are_escaped_everywhere);

async fn names_tags_and_config_are_escaped_everywhere(b: Backend) {
    let app = TestApp::spawn(b).await;
    let run = json!({"name": NASTY, "project": NASTY, "tags": [NASTY], "config": {"loss": NASTY, "note": NASTY}});
    let (s, _) = app.put("/api/v1/runs/x1", &run).await;
    assert_eq!(s, StatusCode::CREATED);
    app.ingest("x1", steps(0..5, 99)).await;
    for path in [
        "/",
        "/runs/x1",
        "/compare?runs=x1",
        "/compare?runs=x1&metric=loss",
    ] {
        let (s, html) = app.get_text(path).await;
        assert_eq!(s, StatusCode::OK, "{path}: {html}");
        assert!(!html.contains(NASTY), "{path} shows the name unescaped");
        assert!(
            html.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
                || html.contains("&lt;script&gt;"),
            "{path}"
        );
    }
}

both_stores!(a_run_page_draws_its_metric_groups_and_keeps_spikes);

async fn a_run_page_draws_its_metric_groups_and_keeps_spikes(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("r1").await;
    app.ingest("r1", steps(0..5_000, 4_321)).await;
    let (s, html) = app.get_text("/runs/r1").await;
    assert_eq!(s, StatusCode::OK);
    for chart in [
        "loss",
        "rewards",
        "topk_entropy",
        "grad_norm",
        "beta",
        "eval/score",
    ] {
        assert!(
            html.contains(&format!(r#"data-chart="{chart}""#)),
            "chart {chart} missing"
        );
    }
    assert_eq!(html.matches(r#"<svg role="img""#).count(), 6);
    assert!(
        html.contains("time/step_seconds"),
        "series outside the groups are listed"
    );
    assert!(html.contains("/api/v1/runs/r1/series?metric=loss&amp;format=csv"));

    // One chart alone; the spike at step 4321 sets the top of the y axis (a tick at 40).
    let resp = app
        .http
        .get(app.url("/runs/r1/chart.svg?chart=loss"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[CONTENT_TYPE], "image/svg+xml");
    let svg = resp.text().await.unwrap().replace(char::is_whitespace, "");
    // Without the spike the axis would end near 0.7.
    assert!(svg.contains(">40<"), "the spike sets the axis: {svg}");

    // The API's downsampled read (from chunk summaries) agrees with the raw points.
    let (_, ds) = app
        .get("/api/v1/runs/r1/series?metric=loss&buckets=3")
        .await;
    let buckets = ds["buckets"].as_array().unwrap();
    assert!(buckets.len() <= 3);
    assert_eq!(
        buckets
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum::<u64>(),
        5_000
    );
    let spike = buckets
        .iter()
        .find(|b| b["start"].as_i64().unwrap() <= 4_321 && b["end"].as_i64().unwrap() >= 4_321)
        .unwrap();
    assert_eq!(spike["max"], 50.0);
    assert_eq!(buckets.last().unwrap()["last_step"], 4_999);
    let (_, zoom) = app
        .get("/api/v1/runs/r1/series?metric=loss&from=1000&to=4400&buckets=2")
        .await;
    let counted: u64 = zoom["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 3_401, "edge chunks are cut to the range: {zoom}");

    let (s, html) = app.get_text("/runs/r1/chart.svg?chart=nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(html.contains("no chart or series named"), "{html}");
    let (s, html) = app.get_text("/runs/r1?smooth=2").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(html.contains("smooth: must be a number from 0"), "{html}");
    let (s, _) = app.get_text("/runs/nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

both_stores!(the_runs_page_filters_sorts_and_pages);

async fn the_runs_page_filters_sorts_and_pages(b: Backend) {
    let app = TestApp::spawn(b).await;
    for (id, project, tag) in [
        ("a1", "alpha", "x"),
        ("b1", "beta", "y"),
        ("a2", "alpha", "y"),
    ] {
        let (s, _) = app
            .put(
                &format!("/api/v1/runs/{id}"),
                &json!({"name": format!("run-{id}"), "project": project, "tags": [tag]}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    app.ingest("b1", steps(0..10, 99)).await;
    let names = |html: &str| -> Vec<String> {
        html.match_indices(">run-")
            .map(|(i, _)| html[i + 1..i + 7].to_owned())
            .collect()
    };
    let (_, html) = app.get_text("/?project=alpha").await;
    assert_eq!(names(&html), ["run-a2", "run-a1"]);
    let (_, html) = app.get_text("/?tag=y&sort=name").await;
    assert_eq!(names(&html), ["run-a2", "run-b1"]);
    let (_, html) = app.get_text("/?sort=step").await;
    assert_eq!(names(&html)[0], "run-b1");
    let (_, html) = app.get_text("/?limit=2").await;
    assert_eq!(names(&html).len(), 2);
    assert!(html.contains("offset=2"), "a link to the next page");
    let (_, html) = app.get_text("/?limit=2&offset=2").await;
    assert_eq!(names(&html), ["run-a1"]);
    let (s, html) = app.get_text("/?sort=sideways").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(html.contains("sort: must be one of newest"), "{html}");
    let (_, api) = app.get("/api/v1/runs?tag=x").await;
    assert_eq!(api["runs"].as_array().unwrap().len(), 1);
}

both_stores!(the_runs_page_shows_each_runs_own_numbers_and_health);

/// The page reads the series and signals of all its runs together (one statement each, not four
/// per run); each row must still show its own run's numbers.
async fn the_runs_page_shows_each_runs_own_numbers_and_health(b: Backend) {
    let app = TestApp::spawn(b).await;
    for (i, id) in ["r1", "r2", "r3", "r4"].into_iter().enumerate() {
        app.create_run(id).await;
        if id != "r4" {
            let loss = 1.5 + i as f64;
            let margin = 0.25 * (i + 1) as f64;
            let metrics = json!({"loss": loss, "rewards/margins": margin});
            app.ingest(id, json!([{"step": i, "metrics": metrics}]))
                .await;
        }
    }
    // A signal a rule raised makes a run's health "alert"; one sent by hand does not.
    for (run, source_rule) in [("r2", Some("x/y")), ("r3", None)] {
        let signal = json!({"kind": "checkpoint", "reason": "r", "source_rule": source_rule});
        let (s, _) = app
            .post(&format!("/api/v1/runs/{run}/signals"), &signal)
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let (_, html) = app.get_text("/").await;
    let row = |id: &str| -> String {
        let at = html.find(&format!(r#"<tr data-run="{id}">"#)).expect(id);
        html[at..at + html[at..].find("</tr>").unwrap()].to_owned()
    };
    let cells = |id: &str| -> Vec<String> {
        row(id)
            .split(r#"<td class="num">"#)
            .skip(1)
            .map(|c| c[..c.find("</td>").unwrap()].to_owned())
            .collect()
    };
    assert_eq!(cells("r1"), ["0", "1.5", "0.25"]);
    assert_eq!(cells("r2"), ["1", "2.5", "0.5"]);
    assert_eq!(cells("r3"), ["2", "3.5", "0.75"]);
    assert_eq!(cells("r4"), ["", "", ""]);
    for (id, health) in [("r1", "ok"), ("r2", "alert"), ("r3", "ok"), ("r4", "ok")] {
        assert!(
            row(id).contains(&format!(r#"badge {health}""#)),
            "{id}: {}",
            row(id)
        );
    }
}

both_stores!(controls_need_the_pages_csrf_token_and_create_signals);

async fn controls_need_the_pages_csrf_token_and_create_signals(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("c1").await;
    let (_, html) = app.get_text("/runs/c1").await;
    let csrf = hidden(&html, "csrf");
    let post = |form: Vec<(&'static str, String)>| {
        app.http
            .post(app.url("/runs/c1/control"))
            .form(&form)
            .send()
    };
    let forged = post(vec![("action", "stop".into()), ("csrf", "0".repeat(64))])
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let cross = app
        .http
        .post(app.url("/runs/c1/control"))
        .header("origin", "http://evil.example")
        .form(&[("action", "checkpoint"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
    let bad = post(vec![
        ("action", "beta".into()),
        ("value", "lots".into()),
        ("csrf", csrf.clone()),
    ])
    .await
    .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(
        bad.text()
            .await
            .unwrap()
            .contains("value: must be a number")
    );

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for form in [
        vec![("action", "beta"), ("value", "0.25")],
        vec![("action", "nll_alpha"), ("value", "0.5")],
        vec![("action", "checkpoint")],
        vec![("action", "stop"), ("keep_step", "7")],
    ] {
        let mut form = form;
        form.push(("csrf", csrf.as_str()));
        let resp = client
            .post(app.url("/runs/c1/control"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{form:?}");
        assert_eq!(resp.headers()[LOCATION], "/runs/c1#signals");
    }
    let (_, list) = app.get("/api/v1/runs/c1/signals").await;
    let kinds: Vec<(&str, Value)> = list["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["kind"].as_str().unwrap(), s["value"].clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("set_hparam", json!(0.25)),
            ("set_hparam", json!(0.5)),
            ("checkpoint", Value::Null),
            ("stop", Value::Null)
        ]
    );
    let (_, html) = app.get_text("/runs/c1").await;
    assert!(html.contains("stop, keep step 7") && html.contains("set beta = 0.25"));
}

both_stores!(with_auth_pages_need_a_login_and_controls_a_session);

async fn with_auth_pages_need_a_login_and_controls_a_session(b: Backend) {
    let app = TestApp::spawn_with(b, |c| {
        c.tokens = vec![ApiToken::parse("secret-token-for-pages").unwrap()];
    })
    .await;
    let (s, _) = app
        .send(
            app.http
                .put(app.url("/api/v1/runs/s1"))
                .bearer_auth("secret-token-for-pages")
                .json(&json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client.get(app.url("/runs/s1")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(page.headers()[LOCATION], "/login?next=/runs/s1");
    let wrong = client
        .post(app.url("/login"))
        .form(&[("token", "guess"), ("next", "/runs/s1")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let login = client
        .post(app.url("/login"))
        .form(&[("token", "secret-token-for-pages"), ("next", "/runs/s1")])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let cookie = login.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let html = client
        .get(app.url("/runs/s1"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = hidden(&html, "csrf");
    // The token of another session (here: none) does not carry over.
    let anon = client
        .post(app.url("/runs/s1/control"))
        .form(&[("action", "checkpoint"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);
    let ok = client
        .post(app.url("/runs/s1/control"))
        .header("cookie", &cookie)
        .form(&[("action", "checkpoint"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
}

both_stores!(a_run_pages_event_stream_reports_new_steps);

async fn a_run_pages_event_stream_reports_new_steps(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("l1").await;
    app.ingest("l1", steps(0..3, 99)).await;
    let resp = app
        .http
        .get(app.url("/runs/l1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut events = SseReader::new(resp);
    let first = events.next().await.expect("an initial update");
    assert_eq!(first.event.as_deref(), Some("update"));
    let snap: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(snap["last_step"], 2);
    app.ingest("l1", steps(3..4, 99)).await;
    let next: Value = serde_json::from_str(&events.next().await.expect("an update").data).unwrap();
    assert_eq!(next["last_step"], 3);
    let (s, _) = app
        .post(
            "/api/v1/runs/l1/signals",
            &json!({"kind": "checkpoint", "reason": "test"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let next: Value = serde_json::from_str(&events.next().await.expect("an update").data).unwrap();
    assert_eq!(next["signals"], 1);
}

both_stores!(assets_are_cached_by_content_hash);

async fn assets_are_cached_by_content_hash(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (_, html) = app.get_text("/").await;
    let at = html
        .find("/static/redline.css?v=")
        .expect("versioned stylesheet link");
    let url = &html[at..at + html[at..].find('"').unwrap()];
    let resp = app.http.get(app.url(url)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    let etag = resp.headers()["etag"].clone();
    let again = app
        .http
        .get(app.url("/static/live.js"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let (s, _) = app.get_text("/static/nope.js").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

both_stores!(the_runs_pages_event_stream_reports_new_runs_and_steps);

async fn the_runs_pages_event_stream_reports_new_runs_and_steps(b: Backend) {
    let app = TestApp::spawn(b).await;
    let resp = app.http.get(app.url("/events")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut events = SseReader::new(resp);
    let first: Value =
        serde_json::from_str(&events.next().await.expect("an initial update").data).unwrap();
    assert_eq!(first["latest"], Value::Null, "no runs yet");
    app.create_run("n1").await;
    let next: Value = serde_json::from_str(&events.next().await.expect("an update").data).unwrap();
    assert_eq!(next["latest"][0], "n1");
    app.ingest("n1", steps(0..2, 99)).await;
    let next: Value = serde_json::from_str(&events.next().await.expect("an update").data).unwrap();
    assert_eq!(next["latest"][2], 1, "the run's last step");
}

both_stores!(an_iterations_page_links_the_run_before_it);

async fn an_iterations_page_links_the_run_before_it(b: Backend) {
    let app = TestApp::spawn(b).await;
    let config =
        json!({"iterative": {"iteration": 2, "of": 3, "previous_run": "a-iter1", "pairs": 40}});
    let (s, _) = app
        .put(
            "/api/v1/runs/a-iter2",
            &json!({"config": config, "tags": ["iterative"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, html) = app.get_text("/runs/a-iter2").await;
    assert!(
        html.contains(r#"2 of 3 · after <a href="/runs/a-iter1">a-iter1</a>"#),
        "{html}"
    );
    app.create_run("plain").await;
    let (s, plain) = app.get_text("/runs/plain").await;
    assert_eq!(s, StatusCode::OK);
    assert!(!plain.contains("<dt>Iteration</dt>"), "{plain}");
}
