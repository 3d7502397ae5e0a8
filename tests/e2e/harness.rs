//! Test harness: the real server on a loopback port 0 over a real store — a SQLite file in a temp
//! dir, or a fresh database on PostgreSQL (`REDLINE_TEST_DATABASE_URL`, or else a throwaway
//! cluster started once per test binary). No store is ever mocked.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redline_server::config::DatabaseUrl;
use redline_server::throwaway::{self, Durability, ThrowawayPostgres};
use redline_server::{Server, ServerConfig};
use reqwest::StatusCode;
use serde_json::Value;
use tokio_util::sync::DropGuard;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates `sqlite` and `postgres` tests for each listed `async fn name(Backend)`.
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use crate::harness::Backend;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(Backend::Postgres).await;
            }
        }
    )*};
}
pub(crate) use both_stores;

enum PgAdmin {
    External(String),
    Throwaway(ThrowawayPostgres),
}

fn pg_admin_url() -> String {
    static ADMIN: OnceLock<Result<PgAdmin, String>> = OnceLock::new();
    let admin = ADMIN.get_or_init(|| match std::env::var("REDLINE_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Ok(PgAdmin::External(url)),
        _ => ThrowawayPostgres::start(Durability::Disposable).map(PgAdmin::Throwaway),
    });
    match admin {
        Ok(PgAdmin::External(url)) => url.clone(),
        Ok(PgAdmin::Throwaway(pg)) => pg.admin_url(),
        Err(why) => panic!("the PostgreSQL tests cannot run: {why}"),
    }
}

/// A fresh, empty database of `backend`, and the temp dir that holds it (SQLite).
pub async fn fresh_database(backend: Backend) -> (DatabaseUrl, Option<tempfile::TempDir>) {
    static N: AtomicUsize = AtomicUsize::new(0);
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            (
                DatabaseUrl::Sqlite(dir.path().join("redline.db")),
                Some(dir),
            )
        }
        Backend::Postgres => {
            let name = format!(
                "redline_test_{}_{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let admin = pg_admin_url();
            let url = throwaway::create_database(&admin, &name)
                .await
                .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
            (DatabaseUrl::Postgres(url), None)
        }
    }
}

pub struct TestApp {
    pub base: String,
    /// What it was started with, so [`TestApp::restart`] starts the same server again.
    config: ServerConfig,
    pub http: reqwest::Client,
    pub token: Option<String>,
    stop: Option<DropGuard>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let (db, dir) = fresh_database(backend).await;
        let mut config = ServerConfig::local(db);
        tweak(&mut config);
        let server = Server::build(config.clone()).await.expect("server builds");
        let base = format!("http://{}", server.local_addr());
        let stop = server.shutdown_token().drop_guard();
        let handle = tokio::spawn(server.run());
        Self {
            base,
            config,
            http: reqwest::Client::new(),
            token: None,
            stop: Some(stop),
            handle: Some(handle),
            _dir: dir,
        }
    }

    /// Shuts the server down the way a signal does, and waits for it to stop.
    pub async fn shutdown(&mut self) {
        drop(self.stop.take());
        let handle = self.handle.take().expect("running");
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("server stops after shutdown")
            .expect("server task")
            .expect("server ran cleanly");
    }

    /// Shuts the server down and starts it again on the same database (on a new port).
    pub async fn restart(&mut self) {
        self.shutdown().await;
        let server = Server::build(self.config.clone())
            .await
            .expect("server builds again");
        self.base = format!("http://{}", server.local_addr());
        self.stop = Some(server.shutdown_token().drop_guard());
        self.handle = Some(tokio::spawn(server.run()));
    }

    /// The store's URL, for tools that open it beside the server (the CLI, direct SQL).
    pub fn database_url(&self) -> String {
        match &self.config.database {
            DatabaseUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
            DatabaseUrl::Postgres(url) => url.clone(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = self.authed(req).send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.expect("body read");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn get_text(&self, path: &str) -> (StatusCode, String) {
        let resp = self
            .authed(self.http.get(self.url(path)))
            .send()
            .await
            .expect("sent");
        (resp.status(), resp.text().await.expect("body"))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    /// Stores a rule file as the next version of rule set `name`.
    pub async fn put_rule_set(&self, name: &str, source: &str) -> (StatusCode, Value) {
        self.send(
            self.http
                .put(self.url(&format!("/api/v1/rule-sets/{name}")))
                .header("content-type", "application/toml")
                .body(source.to_owned()),
        )
        .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.http.put(self.url(path)).json(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.http.patch(self.url(path)).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.delete(self.url(path))).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        self.send(
            self.http
                .post(self.url(path))
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    /// Creates run `id` in project `p` and asserts it was new.
    pub async fn create_run(&self, id: &str) -> Value {
        let (status, run) = self
            .put(
                &format!("/api/v1/runs/{id}"),
                &serde_json::json!({ "project": "p" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{run}");
        run
    }

    /// Posts steps and returns the ingest answer, asserting success.
    pub async fn ingest(&self, run: &str, steps: Value) -> Value {
        let (status, body) = self
            .post(
                &format!("/api/v1/runs/{run}/steps"),
                &serde_json::json!({ "steps": steps }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Total points stored for a run, from its metric summaries.
    pub async fn stored_points(&self, run: &str) -> u64 {
        let (status, body) = self.get(&format!("/api/v1/runs/{run}/metrics")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["metrics"]
            .as_array()
            .expect("metrics")
            .iter()
            .map(|m| m["points"].as_u64().expect("points"))
            .sum()
    }
}

/// Asserts that the server at `base` refuses a write without a token and accepts it with `token`
/// (creating run `r`).
pub async fn assert_writes_need_token(base: &str, token: &str) {
    let http = reqwest::Client::new();
    let put = || {
        http.put(format!("{base}/api/v1/runs/r"))
            .json(&serde_json::json!({}))
    };
    assert_eq!(
        put().send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let with_token = put().bearer_auth(token).send().await.unwrap().status();
    assert_eq!(with_token, StatusCode::CREATED);
}

/// Reads Server-Sent Events from a response.
pub struct SseReader {
    stream: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

#[derive(Debug)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseReader {
    pub fn new(resp: reqwest::Response) -> Self {
        Self {
            stream: resp.bytes_stream().boxed(),
            buf: String::new(),
        }
    }

    /// The next event (comments and keep-alives skipped); `None` when the stream ends.
    /// Waits at most 30 s, so a broken server fails the test instead of hanging it.
    pub async fn next(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(Duration::from_secs(30), self.next_inner())
            .await
            .expect("an SSE event or the end of the stream within 30 s")
    }

    async fn next_inner(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        ev.event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        ev.data.push_str(v.trim_start());
                    }
                }
                if ev.event.is_some() || !ev.data.is_empty() {
                    return Some(ev);
                }
                continue;
            }
            match self.stream.next().await {
                Some(Ok(chunk)) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                Some(Err(_)) | None => return None,
            }
        }
    }
}

/// Polls until `f` gives a value; the deadline only stops a broken run from hanging the suite.
pub async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
