//! The dashboard's rule-set, webhook and rule-event views, and their forms: each goes through the
//! API's own validation, and a refused form comes back with the error and what was typed.

use reqwest::StatusCode;
use reqwest::header::LOCATION;
use serde_json::{Value, json};

use crate::harness::{TestApp, both_stores};
use crate::pages::hidden;
use crate::receiver::{Receiver, SECRET};
use crate::rules::local_delivery;

const V1: &str = "[[rules]]\nname = \"high-loss\"\nactions = [\"alert\"]\n\n[[rules.when]]\nmetric = \"loss\"\nabove = 5.0\n";
const V2: &str = "[[rules]]\nname = \"higher-loss\"\nactions = [\"alert\"]\n\n[[rules.when]]\nmetric = \"loss\"\nabove = 9.0\n";

/// Posts a form as the browser would, without following the redirect; the status, the
/// `Location` (if any) and the body.
async fn submit(app: &TestApp, path: &str, form: &[(&str, &str)]) -> (StatusCode, String, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client.post(app.url(path)).form(form).send().await.unwrap();
    let status = resp.status();
    let location = resp
        .headers()
        .get(LOCATION)
        .map(|l| l.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, location, resp.text().await.unwrap())
}

async fn csrf(app: &TestApp) -> String {
    let (s, html) = app.get_text("/rules").await;
    assert_eq!(s, StatusCode::OK, "{html}");
    hidden(&html, "csrf")
}

both_stores!(
    rule_sets_are_listed_shown_and_edited_on_the_dashboard,
    webhooks_are_added_tested_and_removed_on_the_dashboard,
    a_run_page_shows_its_rule_sets_and_what_they_did,
);

async fn rule_sets_are_listed_shown_and_edited_on_the_dashboard(b: crate::harness::Backend) {
    let app = TestApp::spawn(b).await;
    let (_, list) = app.get_text("/rules").await;
    assert!(list.contains(r#"href="/rules/presets""#), "{list}");
    assert!(list.contains("topk-entropy-reversal") && list.contains("non-finite"));
    let (s, presets) = app.get_text("/rules/presets").await;
    assert_eq!(s, StatusCode::OK);
    assert!(presets.contains("version 1 of 1"), "{presets}");

    let csrf = csrf(&app).await;
    let (s, _, _) = submit(
        &app,
        "/rules",
        &[("csrf", &"0".repeat(64)), ("name", "mine"), ("source", V1)],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a forged form is refused");

    // A refused file stores nothing and comes back in the form, with the line named.
    let bad = "[[rules]]\nname = \"x\"\nactions = [\"alert\"]\n\n[[rules.when]]\nmetric = \"loss\"\nema = 1.5\nabove = 1.0\n";
    let (s, _, html) = submit(
        &app,
        "/rules",
        &[("csrf", &csrf), ("name", "mine"), ("source", bad)],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{html}");
    assert!(
        html.contains("source: line 7") && html.contains("ema = 1.5"),
        "{html}"
    );
    assert!(html.contains(r#"name="name" required maxlength="64" value="mine""#));
    let (s, _) = app.get("/api/v1/rule-sets/mine").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, html) = submit(
        &app,
        "/rules",
        &[("csrf", &csrf), ("name", "no spaces"), ("source", V1)],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(html.contains("name: rule set name"), "{html}");

    // Browsers send CRLF; the stored file is the same file either way.
    let crlf = V1.replace('\n', "\r\n");
    let (s, to, _) = submit(
        &app,
        "/rules",
        &[("csrf", &csrf), ("name", "mine"), ("source", &crlf)],
    )
    .await;
    assert_eq!(
        (s, to.as_str()),
        (StatusCode::SEE_OTHER, "/rules/mine?version=1")
    );
    let (s, to, _) = submit(&app, "/rules/mine", &[("csrf", &csrf), ("source", V1)]).await;
    assert_eq!(
        (s, to.as_str()),
        (StatusCode::SEE_OTHER, "/rules/mine?version=1"),
        "unchanged"
    );
    let (s, to, _) = submit(&app, "/rules/mine", &[("csrf", &csrf), ("source", V2)]).await;
    assert_eq!(
        (s, to.as_str()),
        (StatusCode::SEE_OTHER, "/rules/mine?version=2")
    );
    let (_, stored) = app.get("/api/v1/rule-sets/mine").await;
    assert_eq!(stored["source"], V2);
    assert_eq!(stored["rules"], json!(["higher-loss"]));

    // An edit that does not validate keeps the draft and the stored version.
    let (s, _, html) = submit(
        &app,
        "/rules/mine",
        &[("csrf", &csrf), ("source", "[[rules]]\nname = 3\n")],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{html}");
    assert!(
        html.contains("source: line 2") && html.contains("name = 3"),
        "{html}"
    );
    let (_, stored) = app.get("/api/v1/rule-sets/mine").await;
    assert_eq!(stored["version"], 2);

    let (_, v1) = app.get_text("/rules/mine?version=1").await;
    assert!(
        v1.contains("version 1 of 2") && v1.contains("high-loss"),
        "{v1}"
    );
    let (s, _, _) = submit(&app, "/rules/nope", &[("csrf", &csrf), ("source", V1)]).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "editing needs an existing set");
    let (s, _) = app.get_text("/rules/mine?version=9").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn webhooks_are_added_tested_and_removed_on_the_dashboard(b: crate::harness::Backend) {
    let app = TestApp::spawn_with(b, local_delivery).await;
    let receiver = Receiver::start(0).await;
    let csrf = csrf(&app).await;
    let (_, empty) = app.get_text("/webhooks").await;
    assert!(empty.contains("No webhooks."), "{empty}");

    let (s, _, html) = submit(
        &app,
        "/webhooks",
        &[
            ("csrf", &csrf),
            ("name", "hook"),
            ("url", "ftp://example.com"),
            ("format", "slack"),
            ("min_severity", "warning"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{html}");
    assert!(html.contains("url: must start with http"), "{html}");
    assert!(
        html.contains(r#"value="ftp://example.com""#) && html.contains("<option selected>slack")
    );
    let (_, list) = app.get("/api/v1/webhooks").await;
    assert_eq!(list["webhooks"], json!([]), "a refused form stores nothing");

    let url = format!("{}?token=secret-in-url", receiver.url);
    let (s, _, html) = submit(
        &app,
        "/webhooks",
        &[
            ("csrf", &csrf),
            ("name", "hook"),
            ("url", &url),
            ("format", "json"),
            ("min_severity", "info"),
            ("secret", SECRET),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{html}");
    assert!(
        html.contains(&format!(r#"<code id="secret">{SECRET}</code>"#)),
        "the secret is shown once"
    );
    let (_, page) = app.get_text("/webhooks").await;
    assert!(
        !page.contains(SECRET) && !page.contains("secret-in-url"),
        "{page}"
    );
    assert!(page.contains("No deliveries yet."));

    let (s, to, _) = submit(&app, "/webhooks/hook/test", &[("csrf", &csrf)]).await;
    assert_eq!(
        (s, to.as_str()),
        (StatusCode::SEE_OTHER, "/webhooks#hook-hook")
    );
    assert_eq!(receiver.accepted().len(), 1);
    let (_, page) = app.get_text("/webhooks").await;
    assert!(
        page.contains("<td>delivered</td>") && page.contains(r#"<span class="muted">test</span>"#),
        "{page}"
    );

    let (s, _, html) = submit(
        &app,
        "/webhooks",
        &[
            ("csrf", &csrf),
            ("name", "hook"),
            ("url", &url),
            ("format", "json"),
            ("min_severity", "info"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{html}");
    let (s, to, _) = submit(&app, "/webhooks/hook/remove", &[("csrf", &csrf)]).await;
    assert_eq!((s, to.as_str()), (StatusCode::SEE_OTHER, "/webhooks"));
    let (_, list) = app.get("/api/v1/webhooks").await;
    assert_eq!(list["webhooks"], json!([]));
    let (s, _, _) = submit(&app, "/webhooks/hook/remove", &[("csrf", &csrf)]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn a_run_page_shows_its_rule_sets_and_what_they_did(b: crate::harness::Backend) {
    let app = TestApp::spawn(b).await;
    app.create_run("r").await;
    let (_, html) = app.get_text("/runs/r").await;
    assert!(
        html.contains(r#"href="/rules/presets?version=1">presets v1</a>"#),
        "{html}"
    );
    assert!(html.contains("No rule has fired."));
    let answer: Value = app
        .ingest("r", json!([{"step": 1, "metrics": {"loss": 0.69}}, {"step": 2, "metrics": {"loss": "NaN"}}]))
        .await;
    assert_eq!(answer["signals"][0]["kind"], "stop", "{answer}");
    let (_, html) = app.get_text("/runs/r").await;
    let row = html
        .split("<tr class=\"critical\">")
        .nth(1)
        .expect("a critical rule event row");
    assert!(
        row.contains("presets/non-finite") && row.contains("<td>stop</td>"),
        "{row}"
    );
    assert!(row.contains("loss = NaN"), "{row}");
}
