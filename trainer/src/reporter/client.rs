//! Calls to the server's run API, and what each kind of failure means for the caller: try again
//! (now, later, or when the server says), or stop trying because no retry can succeed.

use std::time::{Duration, Instant};

use redline_core::wire::CreateRun;

use super::ServerTarget;
use crate::error::TrainError;

/// The longest a single call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured: a server asking for more is still retried after this.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub(super) struct Client {
    pub(super) http: reqwest::blocking::Client,
    /// `URL/api/v1/runs/RUN_ID`.
    pub(super) base: String,
    pub(super) url: String,
    pub(super) token: Option<String>,
}

impl Client {
    pub(super) fn new(t: &ServerTarget) -> Result<Self, TrainError> {
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(None)
            .build()
            .map_err(|e| TrainError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: format!("{}/api/v1/runs/{}", t.url, t.run_id),
            url: t.url.clone(),
            token: t.token.clone(),
        })
    }

    /// One call; with a `deadline`, it is abandoned there, so giving up after training is never
    /// held back by a call that hangs.
    pub(super) fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl serde::Serialize>,
        deadline: Option<Instant>,
    ) -> Result<String, CallError> {
        let timeout = deadline.map_or(CALL_TIMEOUT, |d| {
            d.saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), CALL_TIMEOUT)
        });
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().map_err(|e| CallError::Transport(transport(e)))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = resp
            .text()
            .map_err(|e| CallError::Transport(transport(e)))?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(CallError::Status {
                status: status.as_u16(),
                body: error_message(&text),
                retry_after,
            })
        }
    }

    /// Creates or resumes the run (`PUT`).
    pub(super) fn open_run(
        &self,
        run: &CreateRun,
        deadline: Option<Instant>,
    ) -> Result<(), CallError> {
        self.call(reqwest::Method::PUT, "", Some(run), deadline)
            .map(drop)
    }
}

/// What failed and its root cause ("connection refused"), without the URL the message names
/// already.
fn transport(e: reqwest::Error) -> String {
    let mut root: &dyn std::error::Error = &e;
    while let Some(next) = root.source() {
        root = next;
    }
    let root = root.to_string();
    let top = e.without_url().to_string();
    if root == top {
        top
    } else {
        format!("{top}: {root}")
    }
}

/// The `message` of the server's JSON error body, or the body as it came.
fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned())
}

/// `Retry-After` in seconds, the form Redline's server sends. (An HTTP date is not read: the
/// sender's own backoff applies then.)
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Why a call to the server failed.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum CallError {
    /// No answer: the server is down or unreachable.
    Transport(String),
    /// An answer other than success.
    Status {
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transport(e) => write!(f, "no answer: {e}"),
            Self::Status { status, body, .. } => write!(f, "it answered {status}: {body}"),
        }
    }
}

/// What to do after a failed call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Next {
    /// Try again after the sender's own backoff, or after the server's `Retry-After` (capped).
    Retry(Option<Duration>),
    /// Every retry would fail the same way (a refused token, a run the server will not take).
    GiveUp,
}

impl CallError {
    pub(super) fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::Transport(_) => None,
        }
    }

    /// Server errors, timeouts and rate limits pass; other refusals do not.
    pub(super) fn next(&self) -> Next {
        match self {
            Self::Transport(_) => Next::Retry(None),
            Self::Status {
                status,
                retry_after,
                ..
            } => match status {
                408 | 429 | 500.. => Next::Retry(retry_after.map(|d| d.min(MAX_RETRY_AFTER))),
                _ => Next::GiveUp,
            },
        }
    }

    /// What went wrong, for people: names the server and, for a refused token, says so.
    pub(super) fn explain(&self, url: &str) -> String {
        match self.status() {
            Some(401 | 403) => format!("the server at {url} refused the token ({self})"),
            None => format!("the server at {url} is unreachable ({self})"),
            Some(_) => format!("the server at {url} refused the run ({self})"),
        }
    }
}

/// The wait before the next try: the server's `Retry-After` when it gave one, else `backoff`.
pub(super) fn retry_wait(next: Next, backoff: Duration) -> Duration {
    match next {
        Next::Retry(Some(after)) => after,
        Next::Retry(None) | Next::GiveUp => backoff,
    }
}

/// A failure already told to people: its kind (the status; `None` for no answer) and the words,
/// so a long outage is said once, not at every retry.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Trouble {
    pub(super) status: Option<u16>,
    pub(super) said: String,
}

/// Creates or resumes the run before anything else, so a wrong token or a refused run fails at
/// once ([`TrainError::Refused`]) instead of after hours of training. `Ok(Some(_))`: the server
/// could not be reached, or is briefly unavailable; the caller goes on and retries later.
pub(super) fn check_server(target: &ServerTarget) -> Result<Option<Trouble>, TrainError> {
    let client = Client::new(target)?;
    match client.open_run(&target.run, None) {
        Ok(()) => Ok(None),
        Err(e) => match e.next() {
            Next::Retry(_) => Ok(Some(Trouble {
                status: e.status(),
                said: e.explain(&target.url),
            })),
            Next::GiveUp => Err(TrainError::Refused(e.explain(&target.url))),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{CallError, MAX_RETRY_AFTER, Next, parse_retry_after, retry_wait};

    fn status(status: u16, retry_after: Option<Duration>) -> CallError {
        CallError::Status {
            status,
            body: "x".into(),
            retry_after,
        }
    }

    #[test]
    fn an_unavailable_server_is_retried_when_it_says_and_no_later_than_the_cap() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
        let backoff = Duration::from_millis(400);
        let outage = status(503, Some(Duration::from_secs(7)));
        assert_eq!(retry_wait(outage.next(), backoff), Duration::from_secs(7));
        let long = status(503, Some(Duration::from_secs(3_600)));
        assert_eq!(retry_wait(long.next(), backoff), MAX_RETRY_AFTER);
        assert_eq!(retry_wait(status(503, None).next(), backoff), backoff);
        let down = CallError::Transport("connection refused".into());
        assert_eq!(retry_wait(down.next(), backoff), backoff);
    }

    #[test]
    fn refusals_that_no_retry_can_change_are_given_up() {
        for code in [400, 401, 403, 404, 409, 422] {
            assert_eq!(status(code, None).next(), Next::GiveUp, "{code}");
        }
        for code in [408, 429, 500, 502, 503] {
            assert!(
                matches!(status(code, None).next(), Next::Retry(_)),
                "{code}"
            );
        }
        let refused = status(401, None).explain("http://h");
        assert!(refused.contains("refused the token"), "{refused}");
    }
}
