//! What the server measures for `/metrics`: requests by route, ingested points, rule firings and
//! open event streams, counted in memory by this server; pending signals and webhook delivery
//! figures, read from the store at scrape time because every server sharing the database sees
//! the same ones. Encoded as OpenMetrics text, which Prometheus scrapes natively.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use redline_core::rules::Firing;

use crate::store::{Store, StoreResult};

/// The `Content-Type` of [`Telemetry::scrape`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Request latency buckets, in seconds: from a cached read to a large batch on a slow disk.
const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The route label of a request no route matched: never its path, which anyone can vary.
const UNMATCHED: &str = "unmatched";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    /// The route's template (`/api/v1/runs/{run_id}`), so runs do not multiply the series.
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PointLabels {
    /// `new`, or `duplicate` for points already stored (a resent batch).
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FiringLabels {
    action: &'static str,
    severity: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    stream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The Server-Sent Events streams the server keeps open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// A trainer's signal stream (`/api/v1/runs/{run_id}/signals/stream`).
    Signals,
    /// A live dashboard page (`/events`, `/runs/{run_id}/events`).
    Pages,
}

impl StreamKind {
    const ALL: [Self; 2] = [Self::Signals, Self::Pages];

    fn label(self) -> StreamLabels {
        StreamLabels {
            stream: match self {
                Self::Signals => "signals",
                Self::Pages => "pages",
            },
        }
    }
}

type LatencyFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// The server's metrics and the registry that encodes them.
pub struct Telemetry {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    points: Family<PointLabels, Counter>,
    firings: Family<FiringLabels, Counter>,
    streams: Family<StreamLabels, Gauge>,
    signals_pending: Gauge,
    outbox_pending: Gauge,
    failed_attempts: Family<OutcomeLabels, Gauge>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::default();
        registry.register(
            "redline_http_requests",
            "HTTP requests answered, by method, route template and status",
            requests.clone(),
        );
        let latency: LatencyFamily =
            Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        registry.register(
            "redline_http_request_duration_seconds",
            "Time to the response head (an event stream counts until it opens), by method, route template and status",
            latency.clone(),
        );
        let points = Family::default();
        registry.register(
            "redline_ingest_points",
            "Metric points received by ingest: new ones stored, duplicates already stored",
            points.clone(),
        );
        let firings = Family::default();
        registry.register(
            "redline_rule_firings",
            "Rule firings on ingested steps, by action and severity",
            firings.clone(),
        );
        let streams = Family::default();
        registry.register(
            "redline_sse_connections",
            "Server-Sent Events streams open now: trainers' signal streams and live pages",
            streams.clone(),
        );
        let signals_pending = Gauge::default();
        registry.register(
            "redline_signals_pending",
            "Signals of running runs not yet answered by their trainer (store-wide)",
            signals_pending.clone(),
        );
        let outbox_pending = Gauge::default();
        registry.register(
            "redline_webhook_outbox_pending",
            "Webhook messages waiting for delivery (store-wide)",
            outbox_pending.clone(),
        );
        let failed_attempts = Family::default();
        registry.register(
            "redline_webhook_failed_attempts",
            "Failed webhook delivery attempts in the delivery log (store-wide): retry (to be tried again) or failed (given up)",
            failed_attempts.clone(),
        );
        let telemetry = Self {
            registry,
            requests,
            latency,
            points,
            firings,
            streams,
            signals_pending,
            outbox_pending,
            failed_attempts,
        };
        // Series that exist from the start, so a dashboard shows 0 rather than nothing.
        for result in ["new", "duplicate"] {
            drop(telemetry.points.get_or_create(&PointLabels { result }));
        }
        for kind in StreamKind::ALL {
            drop(telemetry.streams.get_or_create(&kind.label()));
        }
        telemetry
    }
}

impl Telemetry {
    fn observe_request(&self, method: &Method, route: String, status: u16, took: Duration) {
        let labels = RequestLabels {
            method: method_label(method),
            route,
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Counts one ingest's points.
    pub fn ingested(&self, new: u64, duplicate: u64) {
        for (result, n) in [("new", new), ("duplicate", duplicate)] {
            self.points.get_or_create(&PointLabels { result }).inc_by(n);
        }
    }

    /// Counts what the rules did with one ingest.
    pub fn fired(&self, firings: &[Firing]) {
        for f in firings {
            let labels = FiringLabels {
                action: f.action.name(),
                severity: f.severity.as_str(),
            };
            self.firings.get_or_create(&labels).inc();
        }
    }

    /// Counts a stream as open until the returned guard is dropped (with the stream).
    pub fn stream_opened(&self, kind: StreamKind) -> OpenStream {
        let gauge = self.streams.get_or_create_owned(&kind.label());
        gauge.inc();
        OpenStream(gauge)
    }

    /// Every metric as OpenMetrics text, the store's figures read now.
    pub async fn scrape(&self, store: &dyn Store) -> StoreResult<String> {
        let counts = store.ops_counts().await?;
        self.signals_pending.set(counts.signals_pending);
        self.outbox_pending.set(counts.outbox_pending);
        for (outcome, n) in [
            ("retry", counts.attempts_retried),
            ("failed", counts.attempts_failed),
        ] {
            self.failed_attempts
                .get_or_create(&OutcomeLabels { outcome })
                .set(n);
        }
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        Ok(text)
    }
}

/// Methods as labels: the standard ones by name, any other as `other`, since a client may
/// send any token as a method and each would be a new series.
fn method_label(m: &Method) -> &'static str {
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ]
    .into_iter()
    .zip(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    .find_map(|(known, label)| (known == m).then_some(label))
    .unwrap_or("other")
}

/// An open event stream, counted in `redline_sse_connections` while it lives.
#[derive(Debug)]
pub struct OpenStream(Gauge);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Middleware: counts and times every request by its matched route. It wraps each route, where
/// axum has already put the [`MatchedPath`] in the request.
pub async fn track(State(t): State<Arc<Telemetry>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    t.observe_request(
        &method,
        route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_counted_while_open() {
        let t = Telemetry::default();
        let gauge = || t.streams.get_or_create(&StreamKind::Signals.label()).get();
        let a = t.stream_opened(StreamKind::Signals);
        let b = t.stream_opened(StreamKind::Signals);
        assert_eq!(gauge(), 2);
        drop(a);
        assert_eq!(gauge(), 1);
        drop(b);
        assert_eq!(gauge(), 0);
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
