//! A webhook receiver on a loopback port: records every request, answers the first `fail`
//! of them with 503, and checks Standard Webhooks signatures the way a receiver would.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// A fixed secret, so tests can verify signatures independently of the server's code.
pub const SECRET: &str = "whsec_c2VjcmV0LWtleS1mb3ItcmVkbGluZS10ZXN0cyE=";

#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Vec<u8>,
    /// What the receiver answered.
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook bodies are JSON")
    }

    /// Whether the signature is HMAC-SHA256 of `id.timestamp.body` under [`SECRET`].
    pub fn signature_is_valid(&self) -> bool {
        let key = STANDARD
            .decode(SECRET.trim_start_matches("whsec_"))
            .unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{}.{}.", self.id, self.timestamp).as_bytes());
        mac.update(&self.body);
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        self.signature.split(' ').any(|s| s == expected)
    }
}

#[derive(Debug, Default)]
struct Script {
    /// Requests still to refuse.
    fail: usize,
    received: Vec<Received>,
}

#[derive(Debug, Clone)]
pub struct Receiver {
    pub url: String,
    script: Arc<Mutex<Script>>,
}

impl Receiver {
    /// Starts a receiver that refuses the first `fail` requests.
    pub async fn start(fail: usize) -> Self {
        let script = Arc::new(Mutex::new(Script {
            fail,
            received: Vec::new(),
        }));
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, script }
    }

    pub fn received(&self) -> Vec<Received> {
        self.script.lock().unwrap().received.clone()
    }

    /// Requests it accepted (answered 200).
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.status == 200)
            .collect()
    }

    pub fn set_failures(&self, fail: usize) {
        self.script.lock().unwrap().fail = fail;
    }
}

async fn receive(
    State(script): State<Arc<Mutex<Script>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut s = script.lock().unwrap();
    let status = if s.fail > 0 {
        s.fail -= 1;
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    s.received.push(Received {
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: body.to_vec(),
        status: status.as_u16(),
    });
    status
}
