//! Safe by default (issue 13): what a hostile web page, a rebinding DNS name, a slow or idle
//! client and a database outage can do to a server started with the defaults (no tokens,
//! loopback). Each test reproduces the attack as it was reported and checks the refusal.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HOST, ORIGIN};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Backend, TestApp, both_stores, eventually};
use crate::pages::hidden;
use redline_server::config::ConnectionLimits;
use redline_server::config::DatabaseUrl;
use redline_server::throwaway::{self, Durability, ThrowawayPostgres};
use redline_server::{Server, ServerConfig};

both_stores!(
    pages_of_other_sites_cannot_write_through_the_api,
    a_rebinding_page_cannot_press_the_stop_button,
);

const STOP: &str = r#"{"kind":"stop","reason":"x"}"#;

/// Sends `body` to `path` as `method` with exactly `headers`, the way a page's `fetch` would.
async fn raw(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &'static str,
) -> (StatusCode, Value) {
    let mut req = app.http.request(method, app.url(path)).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    app.send(req).await
}

fn code(got: &(StatusCode, Value)) -> &str {
    got.1["error"]["code"].as_str().unwrap_or_default()
}

async fn pages_of_other_sites_cannot_write_through_the_api(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("r").await;
    let signals = "/api/v1/runs/r/signals";
    let post = reqwest::Method::POST;
    let evil = ("origin", "https://evil.example");

    // The report's reproduction: no Content-Type (a `no-cors` fetch of a Blob), another Origin.
    let got = raw(&app, post.clone(), signals, &[evil], STOP).await;
    assert_eq!(got.0, StatusCode::FORBIDDEN, "{}", got.1);
    assert_eq!(code(&got), "forbidden");
    let message = got.1["error"]["message"].as_str().unwrap();
    assert!(message.contains("https://evil.example"), "{message}");
    // JSON from another site, or marked cross-site by the browser, is refused as well.
    let json_ct = ("content-type", "application/json");
    let got = raw(&app, post.clone(), signals, &[evil, json_ct], STOP).await;
    assert_eq!(got.0, StatusCode::FORBIDDEN, "{}", got.1);
    let marked = [json_ct, ("sec-fetch-site", "cross-site")];
    assert_eq!(
        raw(&app, post.clone(), signals, &marked, STOP).await.0,
        StatusCode::FORBIDDEN
    );
    // Another port of localhost is "same-site", and still another site.
    let other_port = [json_ct, ("origin", "http://127.0.0.1:1")];
    assert_eq!(
        raw(&app, post.clone(), signals, &other_port, STOP).await.0,
        StatusCode::FORBIDDEN
    );
    // Without an Origin, a body a page can send without a preflight is still refused.
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
        let got = raw(&app, post.clone(), signals, &headers, STOP).await;
        assert_eq!(
            got.0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{ct:?}: {}",
            got.1
        );
        assert!(
            got.1["error"]["message"]
                .as_str()
                .unwrap()
                .contains("application/json"),
            "{}",
            got.1
        );
    }
    // Forged steps and a webhook that would receive every alert: refused the same way.
    let steps = r#"{"steps":[{"step":0,"metrics":{"loss":0.1}}]}"#;
    let got = raw(&app, post.clone(), "/api/v1/runs/r/steps", &[evil], steps).await;
    assert_eq!(got.0, StatusCode::FORBIDDEN, "{}", got.1);
    let hook = r#"{"name":"spy","url":"https://evil.example/hook"}"#;
    let got = raw(
        &app,
        post.clone(),
        "/api/v1/webhooks",
        &[evil, json_ct],
        hook,
    )
    .await;
    assert_eq!(got.0, StatusCode::FORBIDDEN, "{}", got.1);
    // A rule file must say it is TOML.
    let put = reqwest::Method::PUT;
    let got = raw(&app, put.clone(), "/api/v1/rule-sets/x", &[], "").await;
    assert_eq!(got.0, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", got.1);

    // Nothing of it was stored.
    assert_eq!(app.stored_points("r").await, 0);
    let (_, all) = app.get("/api/v1/runs/r/signals?pending=false").await;
    assert_eq!(all["signals"], json!([]));
    let (_, hooks) = app.get("/api/v1/webhooks").await;
    assert_eq!(hooks["webhooks"], json!([]));

    // Scripts and trainers (no Origin) and the dashboard itself (its own origin) still write.
    let own = app.base.clone();
    let same = [
        json_ct,
        ("origin", own.as_str()),
        ("sec-fetch-site", "same-origin"),
    ];
    assert_eq!(
        raw(&app, post.clone(), signals, &same, STOP).await.0,
        StatusCode::CREATED
    );
    let charset = [("content-type", "application/json; charset=utf-8")];
    assert_eq!(
        raw(&app, post, signals, &charset, STOP).await.0,
        StatusCode::CREATED
    );
}

async fn a_rebinding_page_cannot_press_the_stop_button(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("r").await;
    let (_, html) = app.get_text("/runs/r").await;
    let csrf = hidden(&html, "csrf");
    let evil = "rebind.evil.example";
    // The page's own origin and host are the rebinding name, and it read the CSRF token.
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(app.url("/runs/r/control"))
        .header(HOST, evil)
        .header(ORIGIN, format!("http://{evil}"))
        .form(&[("action", "stop"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "misdirected_request", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--public-host"),
        "{body}"
    );
    // Reads are refused too: the rebinding page cannot read the runs either.
    let read = app
        .http
        .get(app.url("/api/v1/runs"))
        .header(HOST, evil)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::MISDIRECTED_REQUEST);
    let (_, signals) = app.get("/api/v1/runs/r/signals?pending=false").await;
    assert_eq!(signals["signals"], json!([]), "no stop was created");
    // Every loopback name is answered, with or without the port.
    let port = app.base.rsplit(':').next().unwrap().to_owned();
    for host in [
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "127.0.0.1".into(),
    ] {
        let resp = app
            .http
            .get(app.url("/api/v1/runs"))
            .header(HOST, &host)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{host}");
    }
}

#[tokio::test]
async fn public_hosts_are_answered_and_nothing_else() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.public_hosts = vec!["redline.example".into()];
    })
    .await;
    let get = |host: &'static str| {
        app.http
            .get(app.url("/api/v1/runs"))
            .header(HOST, host)
            .send()
    };
    assert_eq!(
        get("redline.example").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        get("redline.example:8080").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        get("other.example").await.unwrap().status(),
        StatusCode::MISDIRECTED_REQUEST
    );
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    app.create_run("r").await;
    for path in [
        "/",
        "/runs/r",
        "/api/v1/runs",
        "/no/such/page",
        "/static/live.js",
    ] {
        let resp = app.http.get(app.url(path)).send().await.unwrap();
        let h = resp.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        for part in [
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "default-src 'none'",
        ] {
            assert!(csp.contains(part), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "same-origin", "{path}");
    }
    // The pages keep to the policy: no inline script, style or event handler anywhere.
    for path in ["/", "/runs/r", "/rules", "/webhooks", "/compare"] {
        let (_, html) = app.get_text(path).await;
        for banned in [
            " style=",
            "<style",
            " onclick=",
            " onsubmit=",
            "javascript:",
        ] {
            assert!(!html.contains(banned), "{path} has {banned}");
        }
        for script in html.split("<script").skip(1) {
            assert!(
                script.trim_start().starts_with("src=\"/static/"),
                "{path}: <script{script}"
            );
        }
    }
}

/// A server with short limits, on SQLite.
async fn limited(limits: ConnectionLimits, max_body: usize) -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, |c| {
        c.limits = limits;
        c.max_body_bytes = max_body;
    })
    .await
}

/// Reads until the server closes the connection, and returns what it sent. The 30 s bound only
/// keeps a broken server from hanging the suite; no duration is asserted.
async fn until_closed(conn: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await.expect("the server closes the connection");
    String::from_utf8_lossy(&got).into_owned()
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off() {
    let limits = ConnectionLimits {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
        ..ConnectionLimits::default()
    };
    let app = limited(limits, 1 << 20).await;
    app.create_run("r").await;

    // Half a request's headers, then nothing: closed, unanswered.
    let mut partial = connect(&app).await;
    partial
        .write_all(b"GET /api/v1/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    assert_eq!(until_closed(&mut partial).await, "");

    // A keep-alive connection that was answered, then left idle: closed after its answer.
    let mut idle = connect(&app).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let answered = until_closed(&mut idle).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");

    // A body declared far over the limit: 413 before any of it is read.
    let mut huge = connect(&app).await;
    huge.write_all(
        b"POST /api/v1/runs/r/steps HTTP/1.1\r\nHost: 127.0.0.1\r\n\
          Content-Type: application/json\r\nContent-Length: 100000000000\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = until_closed(&mut huge).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");

    // A body that stops arriving: 408, and nothing stored.
    let mut trickle = connect(&app).await;
    trickle
        .write_all(
            b"POST /api/v1/runs/r/steps HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"steps\":",
        )
        .await
        .unwrap();
    let answer = until_closed(&mut trickle).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert_eq!(app.stored_points("r").await, 0);
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503() {
    let limits = ConnectionLimits {
        max_connections: 2,
        ..ConnectionLimits::default()
    };
    let app = limited(limits, 1 << 20).await;
    // Two connections that say nothing hold both places (accepted in order, before the third).
    let held = [connect(&app).await, connect(&app).await];
    let mut third = connect(&app).await;
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut third).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: "),
        "{answer}"
    );
    assert!(answer.contains("\"unavailable\""), "{answer}");
    // Once one closes, its place is free again.
    drop(held);
    eventually("a free connection place", async || {
        let resp = app.http.get(app.url("/healthz")).send().await.ok()?;
        (resp.status() == StatusCode::OK).then_some(())
    })
    .await;
}

/// A PostgreSQL cluster of its own, since this test stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_503_with_retry_after_and_loses_nothing() {
    let pg = ThrowawayPostgres::start(Durability::Disposable).expect("a PostgreSQL cluster");
    let url = throwaway::create_database(&pg.admin_url(), "outage")
        .await
        .unwrap();
    let server = Server::build(ServerConfig::local(DatabaseUrl::Postgres(url)))
        .await
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    let _stop = server.shutdown_token().drop_guard();
    tokio::spawn(server.run());
    let http = reqwest::Client::new();
    let ingest = |step: i64| {
        http.post(format!("{base}/api/v1/runs/r/steps"))
            .header(CONTENT_TYPE, "application/json")
            .body(json!({"steps": [{"step": step, "metrics": {"loss": 0.5}}]}).to_string())
            .send()
    };
    let created = http
        .put(format!("{base}/api/v1/runs/r"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(ingest(0).await.unwrap().status(), StatusCode::OK);

    pg.pause().unwrap();
    let down = ingest(1).await.unwrap();
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    let wait: u64 = down.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 0);
    let body: Value = down.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");

    pg.resume().unwrap();
    let steps = eventually("ingest after the restart", async || {
        let resp = ingest(1).await.ok()?;
        (resp.status() == StatusCode::OK).then_some(())?;
        let series: Value = http
            .get(format!("{base}/api/v1/runs/r/series?metric=loss"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        Some(series["points"].clone())
    })
    .await;
    assert_eq!(
        steps,
        json!([{"step": 0, "value": 0.5}, {"step": 1, "value": 0.5}]),
        "both steps stored, once"
    );
}
