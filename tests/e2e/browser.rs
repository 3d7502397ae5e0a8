//! The dashboard in a real browser: headless Chromium, driven over WebDriver (chromedriver) with
//! plain HTTP. A real training run on the tiny fixture feeds the pages; a step posted afterwards
//! must appear on the open run page without a reload. Screenshots go to
//! `target/screenshots/`, and to `docs/screenshots/` with `REDLINE_UPDATE_SCREENSHOTS=1`.
//! Chromium and chromedriver come from `scripts/install-browser.sh` (Debian packages).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use redline_trainer::config::{TrainArgs, TrainConfig};
use serde_json::{Value, json};

use crate::harness::{Backend, TestApp, eventually};

fn find(env: &str, names: &[&str]) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    names
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no {} found: run `scripts/install-browser.sh` (Debian packages chromium and \
                 chromium-driver) or set {env}",
                names[0]
            )
        })
}

/// A chromedriver process and one browser session, both ended on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    async fn start() -> Self {
        let chromium = find(
            "REDLINE_CHROMIUM",
            &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
        );
        let chromedriver = find("REDLINE_CHROMEDRIVER", &["/usr/bin/chromedriver"]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let start = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "chromedriver did not answer"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut args = vec![
            "--headless=new",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            "--window-size=1400,1900",
        ];
        if nix::unistd::Uid::effective().is_root() {
            args.push("--no-sandbox");
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": chromium, "args": args}}}});
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {resp}"))
            .to_owned();
        Self {
            driver,
            base,
            session,
            http,
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp: Value = req.send().await.unwrap().json().await.unwrap();
        assert!(resp["value"]["error"].is_null(), "webdriver {path}: {resp}");
        resp["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "url", Some(json!({"url": url})))
            .await;
    }

    async fn eval(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Evaluates `script` until it returns true; the deadline only stops a broken page from
    /// hanging the suite.
    async fn wait_for(&self, what: &str, script: &str) {
        let start = Instant::now();
        while self.eval(script).await != Value::Bool(true) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        let png = self.command(reqwest::Method::GET, "screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut dirs = vec![root.join("target/screenshots")];
        if std::env::var_os("REDLINE_UPDATE_SCREENSHOTS").is_some() {
            dirs.push(root.join("docs/screenshots"));
        }
        for dir in dirs {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), &bytes).unwrap();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        // Best effort: killing chromedriver below takes the browser with it anyway.
        let _ = std::thread::scope(|s| {
            s.spawn(|| reqwest::blocking::Client::new().delete(url).send())
                .join()
        });
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Trains the tiny fixture for 40 steps as run `run`, watched by the presets and by `loud`, an
/// alert-only rule the test trips later (its event must reach the open page by itself).
async fn train_tiny(app: &TestApp, run: &str, out: &Path) {
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("trainer/tests/fixtures/tiny-llama");
    let loud = "[[rules]]\nname = \"loud\"\nactions = [\"alert\"]\n\n[[rules.when]]\nmetric = \"loss\"\nabove = 2.5\n";
    let (s, body) = app.put_rule_set("loud", loud).await;
    assert!(s.is_success(), "{body}");
    let args = TrainArgs {
        model: Some(fixture),
        lr: Some(1e-3),
        rules: Some(vec!["presets".into(), "loud".into()]),
        max_steps: Some(40),
        eval_every: Some(10),
        output_dir: Some(out.to_path_buf()),
        server: Some(app.base.clone()),
        run_id: Some(run.into()),
        run_name: Some("tiny DPO (sigmoid)".into()),
        ..TrainArgs::default()
    };
    let config = TrainConfig::resolve(args, 0).unwrap();
    std::thread::spawn(move || redline_trainer::train::train(&config))
        .join()
        .expect("trainer thread")
        .expect("training succeeds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_real_run_live_in_a_browser() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let out = tempfile::tempdir().unwrap();
    let run = "tiny-dpo";
    train_tiny(&app, run, out.path()).await;
    // The trainer's reporter delivers on its own thread: wait until the server has the whole run.
    eventually("the finished run on the server", async || {
        let (_, body) = app.get(&format!("/api/v1/runs/{run}")).await;
        (body["status"] == "completed").then_some(())
    })
    .await;

    let browser = Browser::start().await;
    browser.open(&app.url("/")).await;
    let listed = browser
        .eval(&format!(
            "return !!document.querySelector('tr[data-run=\"{run}\"]')"
        ))
        .await;
    let page = browser.eval("return document.body.innerText").await;
    assert_eq!(listed, Value::Bool(true), "the run is listed: {page}");
    browser.screenshot("runs.png").await;

    browser.open(&app.url(&format!("/runs/{run}"))).await;
    let charts = browser
        .eval("return document.querySelectorAll('figure[data-chart] svg').length")
        .await;
    assert!(
        charts.as_u64().unwrap() >= 10,
        "charts on the run page: {charts}"
    );
    for chart in [
        "loss",
        "rewards",
        "topk_entropy",
        "topk_mass",
        "logps_mean",
        "eval/loss",
    ] {
        let found = browser.eval(&format!("return !!document.querySelector('figure[data-chart=\"{chart}\"] svg polyline, figure[data-chart=\"{chart}\"] svg path')")).await;
        assert_eq!(found, Value::Bool(true), "chart {chart} draws a line");
    }
    watch_csp(&browser).await;
    // The live script has connected once it has handled the stream's first update.
    browser
        .wait_for(
            "the first live update",
            "return document.body.dataset.liveUpdates !== undefined",
        )
        .await;
    let before = browser
        .eval("return document.querySelector('figure[data-chart=\"loss\"]').innerHTML")
        .await;

    // A new step reaches the server: the open page shows it without a reload.
    browser.eval("window.notReloaded = true; return null").await;
    app.ingest(run, json!([{"step": 41, "metrics": {"loss": 3.0}}]))
        .await;
    browser
        .wait_for(
            "step 41 on the page",
            "return document.body.dataset.liveStep === '41' && window.notReloaded === true",
        )
        .await;
    let after = browser
        .eval("return document.querySelector('figure[data-chart=\"loss\"]').innerHTML")
        .await;
    assert_ne!(before, after, "the loss chart was redrawn");
    let step = browser
        .eval("return document.getElementById('step').textContent.trim()")
        .await;
    assert_eq!(step, json!("41"), "the run's facts were refreshed");
    let loss = browser
        .eval("return document.getElementById('loss').textContent.trim()")
        .await;
    assert_eq!(loss, json!("3"), "the last loss follows the new step");
    let violations = browser.eval("return window.cspViolations").await;
    assert_eq!(violations, json!([]), "the live page broke its CSP");
    browser.screenshot("run.png").await;

    // A rule firing shows in the open page's rule events, live too.
    app.ingest(run, json!([{"step": 42, "metrics": {"loss": "NaN"}}]))
        .await;
    browser
        .wait_for(
            "the non-finite rule's event on the page",
            "const row = document.querySelector('#rule-events tr.critical'); \
             return !!row && row.textContent.includes('presets/non-finite') && window.notReloaded === true",
        )
        .await;

    browser.open(&app.url("/rules/presets")).await;
    let source = browser
        .eval("return document.getElementById('source').textContent")
        .await;
    assert!(
        source.as_str().unwrap().contains("topk-entropy-reversal"),
        "the preset file is shown"
    );
    browser.screenshot("rules.png").await;

    compare_page(&browser, &app, run).await;
}

/// The page runs under the server's Content-Security-Policy: its stylesheet applies, and every
/// violation from here on (live updates, redrawn charts) is kept in `window.cspViolations`.
async fn watch_csp(browser: &Browser) {
    let styled = browser
        .eval(
            "return document.styleSheets.length > 0 && document.styleSheets[0].cssRules.length > 0",
        )
        .await;
    assert_eq!(
        styled,
        Value::Bool(true),
        "redline.css applies under the CSP"
    );
    browser
        .eval(
            "window.cspViolations = []; document.addEventListener('securitypolicyviolation', \
             e => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI)); return null",
        )
        .await;
}

async fn compare_page(browser: &Browser, app: &TestApp, run: &str) {
    browser
        .open(&app.url(&format!("/compare?runs={run}&metric=topk_entropy/chosen")))
        .await;
    let legend = browser
        .eval("return document.querySelector('figure.chart svg').textContent")
        .await;
    assert!(
        legend.as_str().unwrap().contains("tiny DPO (sigmoid)"),
        "{legend}"
    );
    browser.screenshot("compare.png").await;
}
