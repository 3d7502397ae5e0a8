use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{Backend, TestApp, both_stores};

both_stores!(the_openapi_document_describes_every_route);

async fn the_openapi_document_describes_every_route(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (s, doc) = app.get("/api/v1/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let operations: Vec<(&String, &String, &Value)> = paths
        .iter()
        .flat_map(|(path, ops)| {
            let ops = ops.as_object().unwrap();
            ops.iter().map(move |(method, op)| (path, method, op))
        })
        .collect();
    // The routes are registered from their documentation (utoipa-axum), so the document is the
    // list of routes; what remains to prove is that each documented operation is served, and
    // that its documented parameters are the ones its handler reads.
    assert!(operations.len() >= 21, "{} operations", operations.len());
    let http = reqwest::Client::new();
    for (path, method, op) in operations {
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        let named = |place: &str| -> Vec<String> {
            params
                .iter()
                .filter(|p| p["in"] == place)
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let in_path: Vec<String> = path
            .split('{')
            .skip(1)
            .map(|s| s.split('}').next().unwrap().to_owned())
            .collect();
        assert_eq!(named("path"), in_path, "{method} {path}: path parameters");
        let concrete = path
            .replace("{run_id}", "nope")
            .replace("{signal_id}", "1")
            .replace("{name}", "nope");
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (s, body) = app
            .send(http.request(method.clone(), app.url(&concrete)))
            .await;
        let unrouted = s == StatusCode::METHOD_NOT_ALLOWED
            || body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("no route"));
        assert!(
            !unrouted,
            "{method} {path} is documented but not served: {s} {body}"
        );
        // An unknown query parameter is refused with the list the handler accepts: it must be
        // the documented list.
        let query = named("query");
        if !query.is_empty() {
            let url = app.url(&format!("{concrete}?zzz=1"));
            let (s, body) = app.send(http.request(method.clone(), url)).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{method} {path}: {body}");
            assert_eq!(body["error"]["field"], "zzz", "{method} {path}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(
                message.ends_with(&format!("known are {}", query.join(", "))),
                "{method} {path}: documented {query:?}, handler says {message:?}"
            );
        }
    }
    let update = &doc["components"]["schemas"]["UpdateRun"]["properties"];
    assert!(
        update["name"].is_object() && update["tags"].is_object(),
        "{update}"
    );
    let value = &doc["components"]["schemas"]["MetricValue"];
    assert!(
        value.to_string().contains("Infinity"),
        "the non-finite encoding is documented: {value}"
    );
}
