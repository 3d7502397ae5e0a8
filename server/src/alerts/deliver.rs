//! One delivery attempt: resolve and check the address, sign, send, and decide what happens next
//! (delivered, retry after a backoff, or give up).

use secrecy::ExposeSecret;
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::Rng;
use redline_core::WebhookName;
use redline_core::wire::DeliveryAttempt;

use super::guard::{self, Allowlist};
use super::{payload, sign};
use crate::store::alerts::{AttemptRecord, Due, NextStep};
use crate::store::{Store, StoreResult};

/// How webhooks are delivered; `--webhook-*` flags set it.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Non-public hosts and networks webhooks may reach.
    pub allow: Allowlist,
    /// Per attempt, connection included.
    pub timeout: Duration,
    /// Attempts per message before giving up.
    pub max_attempts: u32,
    /// The wait after the first failure; it doubles after each further one, up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How often an idle worker looks for work queued by other servers.
    pub poll: Duration,
}

impl Default for DeliveryConfig {
    /// 8 attempts over about 11 minutes at most: 5 s, 10 s, 20 s … 5 min between them.
    fn default() -> Self {
        Self {
            allow: Allowlist::default(),
            timeout: Duration::from_secs(10),
            max_attempts: 8,
            backoff_base: Duration::from_secs(5),
            backoff_max: Duration::from_secs(300),
            poll: Duration::from_secs(1),
        }
    }
}

impl DeliveryConfig {
    /// How long a claimed message stays leased: an attempt cannot outlast it.
    pub fn lease(&self) -> Duration {
        self.timeout + Duration::from_secs(5)
    }

    /// The wait before attempt `done + 1`, with `done` attempts failed: exponential with jitter
    /// (between half and all of the step, so retries of many messages spread out), or the
    /// receiver's `Retry-After` when it sent one, capped at `backoff_max`.
    pub fn backoff(&self, done: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(self.backoff_max);
        }
        let step = self
            .backoff_base
            .saturating_mul(1 << done.saturating_sub(1).min(20))
            .min(self.backoff_max);
        step.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// Makes one attempt at `due`; never fails, it reports.
pub async fn attempt(cfg: &DeliveryConfig, due: &Due) -> AttemptRecord {
    let started_at = Utc::now();
    let clock = Instant::now();
    let sent = send(cfg, due, started_at).await;
    let latency_ms = clock.elapsed().as_secs_f64() * 1e3;
    let done = u32::try_from(due.attempts).unwrap_or(0) + 1;
    let (status, error, retry_after) = match sent {
        Ok((status, _)) if (200..300).contains(&status) => {
            return AttemptRecord {
                started_at,
                status: Some(status),
                latency_ms,
                error: None,
                next: NextStep::Delivered,
            };
        }
        Ok((status, retry_after)) => (Some(status), format!("HTTP {status}"), retry_after),
        Err(e) => (None, e, None),
    };
    let next = if done >= cfg.max_attempts {
        NextStep::GiveUp
    } else {
        let wait = cfg.backoff(done, retry_after);
        NextStep::RetryAt(started_at + chrono::Duration::from_std(wait).unwrap_or_default())
    };
    AttemptRecord {
        started_at,
        status,
        latency_ms,
        error: Some(error),
        next,
    }
}

/// Sends the message once: the status and any `Retry-After`, or why nothing came back.
async fn send(
    cfg: &DeliveryConfig,
    due: &Due,
    now: chrono::DateTime<Utc>,
) -> Result<(u16, Option<Duration>), String> {
    let url = reqwest::Url::parse(&due.webhook.url).map_err(|e| format!("bad URL: {e}"))?;
    let addr = guard::resolve(&url, &cfg.allow).await?;
    let key = sign::secret_key(due.webhook.secret.expose_secret())
        .map_err(|e| format!("signing secret {e}"))?;
    let body = payload::body(
        due.webhook.format,
        &due.webhook.name,
        due.event.as_ref(),
        now,
    );
    let timestamp = now.timestamp();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(cfg.timeout)
        .resolve(url.host_str().unwrap_or_default(), addr)
        .user_agent(concat!("redline/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &due.message_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            sign::signature(&key, &due.message_id, timestamp, &body),
        )
        .body(body)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                format!("timed out after {:?}", cfg.timeout)
            } else {
                format!("request failed: {e}")
            }
        })?;
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    Ok((resp.status().as_u16(), retry_after))
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v.trim()).ok()?;
    (at.with_timezone(&Utc) - Utc::now()).to_std().ok()
}

/// Sends a test message to `name` now, once, and logs the attempt like any other.
pub async fn deliver_now(
    store: &dyn Store,
    cfg: &DeliveryConfig,
    name: &WebhookName,
) -> StoreResult<DeliveryAttempt> {
    let lease = Utc::now() + chrono::Duration::from_std(cfg.lease()).unwrap_or_default();
    let due = store.enqueue_test(name, lease).await?;
    let mut record = attempt(cfg, &due).await;
    // A test is not retried: a failure is the answer.
    if matches!(record.next, NextStep::RetryAt(_)) {
        record.next = NextStep::GiveUp;
    }
    store.record_attempt(&due, &record).await?;
    Ok(DeliveryAttempt {
        message_id: due.message_id,
        event_id: None,
        attempt: 1,
        started_at: record.started_at,
        status: record.status,
        latency_ms: record.latency_ms,
        error: record.error,
        outcome: record.next.outcome().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_honours_retry_after() {
        let cfg = DeliveryConfig::default();
        for done in 1..=8 {
            let step = (5u64 << (done - 1)).min(300);
            let wait = cfg.backoff(done, None).as_secs_f64();
            assert!(
                wait >= step as f64 / 2.0 && wait <= step as f64,
                "attempt {done}: {wait}"
            );
        }
        assert_eq!(
            cfg.backoff(1, Some(Duration::from_secs(42))),
            Duration::from_secs(42)
        );
        assert_eq!(
            cfg.backoff(1, Some(Duration::from_secs(9_999))),
            cfg.backoff_max
        );
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        let later = (Utc::now() + chrono::Duration::seconds(60)).to_rfc2822();
        let wait = parse_retry_after(&later).unwrap().as_secs();
        assert!((55..=60).contains(&wait), "{wait}");
        assert_eq!(parse_retry_after("soon"), None);
    }
}
