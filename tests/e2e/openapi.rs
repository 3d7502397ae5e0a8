use reqwest::StatusCode;

use crate::harness::{Backend, TestApp, both_stores};

both_stores!(the_openapi_document_describes_every_route);

async fn the_openapi_document_describes_every_route(b: Backend) {
    let app = TestApp::spawn(b).await;
    let (s, doc) = app.get("/api/v1/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let routes = [
        ("/api/v1/runs", "get"),
        ("/api/v1/runs/{run_id}", "put"),
        ("/api/v1/runs/{run_id}", "get"),
        ("/api/v1/runs/{run_id}", "patch"),
        ("/api/v1/runs/{run_id}", "delete"),
        ("/api/v1/runs/{run_id}/finish", "post"),
        ("/api/v1/runs/{run_id}/steps", "post"),
        ("/api/v1/runs/{run_id}/metrics", "get"),
        ("/api/v1/runs/{run_id}/series", "get"),
        ("/api/v1/runs/{run_id}/signals", "post"),
        ("/api/v1/runs/{run_id}/signals", "get"),
        ("/api/v1/runs/{run_id}/signals/stream", "get"),
        ("/api/v1/runs/{run_id}/signals/{signal_id}/ack", "post"),
    ];
    for (path, method) in routes {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not described"
        );
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
