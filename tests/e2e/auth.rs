use std::net::SocketAddr;

use redline_server::auth::{generate_token, hash_token};
use redline_server::config::ApiToken;
use redline_server::{Server, ServerConfig};
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Backend, TestApp, assert_writes_need_token, both_stores, fresh_database};

const TOKEN: &str = "s3cret-token-for-tests";

both_stores!(
    tokens_guard_writes_and_reads_unless_reads_are_public,
    stored_tokens_work_until_revoked,
    without_tokens_only_loopback_is_allowed,
);

async fn tokens_guard_writes_and_reads_unless_reads_are_public(b: Backend) {
    let mut app =
        TestApp::spawn_with(b, |c| c.tokens = vec![ApiToken::parse(TOKEN).unwrap()]).await;
    let (s, e) = app.put("/api/v1/runs/r", &json!({})).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    let resp = app
        .http
        .put(app.url("/api/v1/runs/r"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    app.token = Some("wrong".into());
    assert_eq!(
        app.put("/api/v1/runs/r", &json!({})).await.0,
        StatusCode::UNAUTHORIZED
    );
    app.token = Some(TOKEN.into());
    assert_eq!(
        app.put("/api/v1/runs/r", &json!({})).await.0,
        StatusCode::CREATED
    );
    assert_eq!(app.get("/api/v1/runs/r").await.0, StatusCode::OK);
    app.token = None;
    assert_eq!(
        app.get("/api/v1/runs/r").await.0,
        StatusCode::UNAUTHORIZED,
        "reads are private by default"
    );
    assert_eq!(
        app.get("/healthz").await.0,
        StatusCode::OK,
        "health stays open"
    );
    assert_eq!(
        app.get("/api/v1/openapi.json").await.0,
        StatusCode::OK,
        "the API description stays open"
    );

    let public = TestApp::spawn_with(b, |c| {
        c.tokens = vec![ApiToken::parse(TOKEN).unwrap()];
        c.public_read = true;
    })
    .await;
    assert_eq!(public.get("/api/v1/runs").await.0, StatusCode::OK);
    assert_eq!(
        public.put("/api/v1/runs/r", &json!({})).await.0,
        StatusCode::UNAUTHORIZED
    );
}

async fn stored_tokens_work_until_revoked(b: Backend) {
    let (db, _dir) = fresh_database(b).await;
    let store = redline_server::store::connect(&db).await.unwrap();
    let token = generate_token();
    store.create_token("ci", &hash_token(&token)).await.unwrap();
    assert!(
        store
            .create_token("ci", &hash_token("other"))
            .await
            .is_err(),
        "names are unique"
    );

    let server = Server::with_store(ServerConfig::local(db), store.clone())
        .await
        .unwrap();
    assert!(server.auth_enabled(), "a stored token switches auth on");
    let base = format!("http://{}", server.local_addr());
    let _stop = server.shutdown_token().drop_guard();
    tokio::spawn(server.run());
    assert_writes_need_token(&base, &token).await;
    store.revoke_token("ci").await.unwrap();
    let revoked = reqwest::Client::new()
        .put(format!("{base}/api/v1/runs/r"))
        .json(&json!({}))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::UNAUTHORIZED);
    let listed = store.tokens().await.unwrap();
    assert!(listed[0].revoked_at.is_some());
    assert!(store.revoke_token("nobody").await.is_err());
}

async fn without_tokens_only_loopback_is_allowed(b: Backend) {
    let (db, _dir) = fresh_database(b).await;
    let mut config = ServerConfig::local(db);
    config.listen = SocketAddr::from(([0, 0, 0, 0], 0));
    let err = Server::build(config.clone()).await.unwrap_err().to_string();
    assert!(
        err.contains("without auth") && err.contains("redline token create"),
        "{err}"
    );
    config.allow_unauthenticated_remote = true;
    let server = Server::build(config.clone())
        .await
        .expect("allowed when told");
    drop(server);
    config.allow_unauthenticated_remote = false;
    config.tokens = vec![ApiToken::parse(TOKEN).unwrap()];
    Server::build(config).await.expect("allowed with a token");
}
