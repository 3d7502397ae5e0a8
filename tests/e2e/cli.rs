//! The real `redline` binary: serving with defaults on the embedded store, tokens, shutdown.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::harness::{SseReader, assert_writes_need_token};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_redline");

/// Runs `cmd` to its end and checks that it succeeded, showing its stderr where it did not.
pub(crate) async fn succeeded(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(crate) fn redline(cwd: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(cwd)
        .env("REDLINE_LOG", "warn")
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("REDLINE_") && k != "REDLINE_LOG" {
            c.env_remove(k);
        }
    }
    c
}

/// Starts `redline serve` and returns it with the base URL it printed.
async fn serve(cmd: &mut Command) -> (Child, String) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("redline starts");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(60),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .expect("redline prints where it listens")
    .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    (child, url)
}

async fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = Pid::from_raw(child.id().expect("running") as i32);
    kill(pid, Signal::SIGTERM).expect("SIGTERM sent");
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("redline exits after SIGTERM")
        .unwrap()
}

#[tokio::test]
async fn serve_creates_the_embedded_store_and_shuts_down_cleanly_on_sigterm() {
    let cwd = tempfile::tempdir().unwrap();
    let (mut child, url) =
        serve(redline(cwd.path()).args(["serve", "--listen", "127.0.0.1:0"])).await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(
        cwd.path().join("redline-data/redline.db").is_file(),
        "store created in ./redline-data"
    );

    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{url}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let ready: serde_json::Value = http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["store"], "sqlite");
    let r = http
        .put(format!("{url}/api/v1/runs/r"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = http
        .post(format!("{url}/api/v1/runs/r/signals"))
        .json(&json!({"kind": "checkpoint", "reason": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let resp = http
        .get(format!("{url}/api/v1/runs/r/signals/stream"))
        .send()
        .await
        .unwrap();
    let mut stream = SseReader::new(resp);
    assert!(stream.next().await.is_some());

    let status = terminate(&mut child).await;
    assert!(status.success(), "{status}");
    assert!(
        stream.next().await.is_none(),
        "open event streams end on shutdown"
    );
}

#[tokio::test]
async fn a_created_token_is_required_for_writes() {
    let cwd = tempfile::tempdir().unwrap();
    let out = succeeded(redline(cwd.path()).args([
        "token",
        "create",
        "trainer-1",
        "--data-dir",
        "store",
    ]))
    .await;
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("rl_"), "{token}");
    let again = redline(cwd.path())
        .args(["token", "create", "trainer-1", "--data-dir", "store"])
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // Options can come from the environment too.
    let (mut child, url) = serve(
        redline(cwd.path())
            .args(["serve"])
            .env("REDLINE_LISTEN", "127.0.0.1:0")
            .env("REDLINE_DATA_DIR", "store"),
    )
    .await;
    assert_writes_need_token(&url, &token).await;
    terminate(&mut child).await;

    let list = redline(cwd.path())
        .args(["token", "list", "--data-dir", "store"])
        .output()
        .await
        .unwrap();
    let listed = String::from_utf8(list.stdout).unwrap();
    assert!(
        listed.starts_with("trainer-1\t") && listed.contains("active"),
        "{listed}"
    );
    assert!(!listed.contains(&token), "secrets are never listed");
}

#[tokio::test]
async fn tokens_are_trimmed_and_empty_or_short_ones_refused_at_start() {
    let cwd = tempfile::tempdir().unwrap();
    for (token, says) in [(" ", "empty"), ("short", "at least 16")] {
        let out = redline(cwd.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--token", token])
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{token:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{token:?}: {stderr}");
    }
    // A list in the environment with the usual space after the comma: both tokens work.
    let (mut child, url) = serve(
        redline(cwd.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", "store"])
            .env(
                "REDLINE_TOKENS",
                "first-token-0123456, second-token-0123456",
            ),
    )
    .await;
    assert_writes_need_token(&url, "second-token-0123456").await;
    terminate(&mut child).await;
}

#[tokio::test]
async fn help_explains_every_option_and_its_environment_variable() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .await
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "--database-url",
        "REDLINE_DATABASE_URL",
        "--listen",
        "REDLINE_LISTEN",
        "127.0.0.1:8080",
        "--token",
        "REDLINE_TOKENS",
        "--public-read",
        "./redline-data",
        "--public-host",
        "REDLINE_PUBLIC_HOSTS",
        "--header-timeout",
        "--body-timeout",
        "--idle-timeout",
        "--max-connections",
    ] {
        assert!(
            help.contains(needle),
            "serve --help lacks {needle}:\n{help}"
        );
    }
    let bad = Command::new(BIN)
        .args(["serve", "--database-url", "mysql://x"])
        .env("REDLINE_LOG", "error")
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("postgres://"),
        "the error says what is supported"
    );
}

/// `redline demo` with a small budget: the URL first, both runs on its own server, the server
/// kept up after training until a signal.
#[tokio::test]
async fn demo_trains_on_its_own_server_and_serves_until_sigterm() {
    let cwd = tempfile::tempdir().unwrap();
    let mut child = redline(cwd.path())
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--train-pairs",
            "64",
            "--eval-prompts",
            "4",
            "--warmup-steps",
            "6",
            "--dpo-steps",
            "6",
            "--eval-every",
            "3",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("redline starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(600), lines.next_line())
            .await
            .expect("the demo goes on printing")
            .unwrap()
            .expect("the demo prints until it is done")
    };
    let first = next_line().await;
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("the URL comes first: {first:?}"))
        .trim_end_matches('/')
        .to_owned();
    let mut printed = vec![first];
    while !printed.last().unwrap().contains("until Ctrl-C") {
        printed.push(next_line().await);
    }
    let printed = printed.join("\n");
    assert!(printed.contains("held-out exact match peaked"), "{printed}");
    assert!(
        printed.contains("Cross-check with the gold answers: held-out-score-drop"),
        "{printed}"
    );
    assert!(
        printed.contains("/compare?runs=demo-dpo,demo-dpo-regulated&metric=eval/score"),
        "{printed}"
    );

    let runs = get_json(format!("{url}/api/v1/runs")).await;
    let mut ids: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["demo-dpo", "demo-dpo-regulated", "demo-warmup"],
        "{runs}"
    );
    let score = get_json(format!(
        "{url}/api/v1/runs/demo-dpo/series?metric=eval/score"
    ))
    .await;
    // The starting model (step 0), then every 3 steps.
    let steps: Vec<i64> = score["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["step"].as_i64().unwrap())
        .collect();
    assert_eq!(steps, [0, 3, 6], "{score}");
    assert_eq!(
        rule_sets(&url, "demo-dpo").await,
        ["label-free"],
        "the label-free presets watch the DPO run"
    );
    assert_eq!(
        rule_sets(&url, "demo-dpo-regulated").await,
        ["label-free", "regulate"]
    );
    assert!(terminate(&mut child).await.success());
}

/// A folder that is not an earlier demo's is left alone.
#[tokio::test]
async fn demo_leaves_a_folder_that_is_not_its_own_alone() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir(cwd.path().join("mine")).unwrap();
    std::fs::write(cwd.path().join("mine/notes.txt"), "keep").unwrap();
    let refused = redline(cwd.path())
        .args(["demo", "--dir", "mine", "--listen", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not empty and not an earlier demo"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(cwd.path().join("mine/notes.txt").is_file());
}

/// The JSON body a GET of `url` answers (the demo's own server, not the harness's).
async fn get_json(url: String) -> serde_json::Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// The names of the rule sets that watch `run`, in order.
async fn rule_sets(url: &str, run: &str) -> Vec<String> {
    let rules = get_json(format!("{url}/api/v1/runs/{run}/rules")).await;
    rules["rule_sets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect()
}

/// `redline study` on a tiny grid and two seed groups: a report with every arm per group, a row
/// per run and a plot per held-out run; `--reuse` keeps the finished runs; a seed in both groups is
/// refused.
#[tokio::test]
async fn study_writes_a_report_with_a_row_and_a_plot_per_run() {
    let cwd = tempfile::tempdir().unwrap();
    // The tiny grid, with `extra` added; a flag in `extra` replaces the default of that flag.
    let study = |extra: &[&str]| {
        let defaults = [
            ("--train-pairs", "64"),
            ("--eval-prompts", "4"),
            ("--warmup-steps", "4"),
            ("--losses", "sigmoid,hinge"),
            ("--betas", "0.1"),
            ("--lrs", "1e-4"),
            ("--steps", "4"),
            ("--eval-every", "2"),
            ("--tuning-seeds", "1"),
            ("--held-out-seeds", "2"),
            ("--report", "out/study.md"),
        ];
        let mut cmd = redline(cwd.path());
        cmd.arg("study");
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                cmd.args([flag, value]);
            }
        }
        cmd.args(extra);
        cmd
    };
    succeeded(&mut study(&[])).await;
    let report = std::fs::read_to_string(cwd.path().join("out/study.md")).unwrap();
    for row in [
        "| sigmoid β=0.1 lr=1e-4 | 1 |",
        "| hinge β=0.1 lr=1e-4 | 2 |",
        "## The arms, held-out seeds",
        "## The arms, tuning seeds",
        "Tuning seeds (their runs were read",
        // Every arm, gold and label-free, side by side.
        "| (a) label-free presets | no |",
        "| (b) all presets (score rule included) | yes |",
        "| (c) score patience (gold) | yes |",
        "| (d) eval-loss patience | no |",
        "| (e) final checkpoint | no |",
        "## How the thresholds were chosen (tuning seeds only)",
        "`held-out-likelihood-drop`:",
        "## Arm (f): the `regulate` set in the loop",
    ] {
        assert!(report.contains(row), "{row} in {report}");
    }
    assert!(
        report.contains("![sigmoid β=0.1 lr=1e-4, seed 2](study/seed-2-sigmoid-b0.1-lr1e-4.svg)"),
        "{report}"
    );
    let svg =
        std::fs::read_to_string(cwd.path().join("out/study/seed-2-hinge-b0.1-lr1e-4.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");

    // --reuse trains nothing again: every finished run's log is left as it was.
    let log = cwd
        .path()
        .join("redline-study/seed-2/runs/hinge-b0.1-lr1e-4/metrics.jsonl");
    let before = std::fs::metadata(&log).unwrap().modified().unwrap();
    succeeded(&mut study(&["--reuse"])).await;
    assert_eq!(std::fs::metadata(&log).unwrap().modified().unwrap(), before);

    // A model of one's own (here the trainer's test fixture), no warm-up and no tuning seeds: a
    // report only, each run's own step-0 evaluation as its start.
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/trainer/tests/fixtures/tiny-llama"
    );
    succeeded(&mut study(&[
        "--model",
        fixture,
        "--warmup-steps",
        "0",
        "--dir",
        "other",
        "--tuning-seeds",
        "--report",
        "out/other.md",
    ]))
    .await;
    let other = std::fs::read_to_string(cwd.path().join("out/other.md")).unwrap();
    assert!(other.contains("This study has no tuning seeds"), "{other}");
    assert!(
        other.contains(&format!("no warm-up of `{fixture}`")),
        "{other}"
    );
    assert!(
        !cwd.path().join("other/seed-2/runs/warmup").exists(),
        "no warm-up run"
    );

    let refused = study(&["--tuning-seeds", "1", "--held-out-seeds", "1"])
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("seed 1 is in both --tuning-seeds and --held-out-seeds"),
        "{stderr}"
    );
}
