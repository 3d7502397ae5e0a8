//! Follows the run's signal stream (Server-Sent Events), so a signal reaches the trainer even when
//! no ingest answer carries it.

use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redline_core::wire::Signal;

use super::client::Client;

const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Follows the run's signal stream (SSE), reconnecting after the last event id it saw.
pub(super) struct SignalListener {
    pub(super) client: Client,
    pub(super) inbox: Arc<Mutex<Vec<Signal>>>,
    pub(super) stop: Arc<AtomicBool>,
}

impl SignalListener {
    pub(super) fn run(self) {
        let mut last = 0i64;
        let mut backoff = Duration::from_millis(200);
        while !self.stop.load(Ordering::Relaxed) {
            let mut req = self
                .client
                .http
                .get(format!("{}/signals/stream", self.client.base))
                .header("Last-Event-ID", last.to_string());
            if let Some(t) = &self.client.token {
                req = req.bearer_auth(t);
            }
            match req.send() {
                Ok(resp) if resp.status().is_success() => {
                    backoff = Duration::from_millis(200);
                    last = self.read_events(resp, last);
                }
                _ => {}
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Reads `data:` lines until the stream ends; returns the last signal id seen.
    fn read_events(&self, resp: impl Read, mut last: i64) -> i64 {
        for line in BufReader::new(resp).lines() {
            let Ok(line) = line else { break };
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(data) = line.strip_prefix("data:")
                && let Ok(signal) = serde_json::from_str::<Signal>(data.trim())
            {
                last = last.max(signal.id);
                super::push_signals(&self.inbox, vec![signal]);
            }
        }
        last
    }
}
