//! Streams a run's steps to a Redline server without ever blocking a training step, and without
//! losing or duplicating one.
//!
//! The training thread appends each step to `metrics.jsonl` (the run's local log, readable with no
//! server at all) and returns. A sender thread ships the file's unsent tail to the server in
//! batches; `metrics.jsonl.sent` holds the byte offset the server has acknowledged, so a server
//! that is down, or a trainer that restarts, resends from there. Resending is safe: ingest is
//! idempotent. Signals arrive in ingest answers and on the server's event stream; the training
//! loop takes them at step boundaries and acknowledges them here.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redline_core::MetricValue;
use redline_core::wire::{IngestResult, Signal, StepRecord};

use crate::error::{Result, TrainError};

/// Steps per ingest request.
const BATCH_STEPS: usize = 1_000;
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long `finish` waits for the server before leaving the rest in the spool.
const FINISH_GRACE: Duration = Duration::from_secs(30);

/// Where and as whom to report.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    pub url: String,
    pub token: Option<String>,
    pub run_id: String,
    /// Body of the create-or-resume call.
    pub run: serde_json::Value,
}

enum Msg {
    Wake,
    Ack {
        id: i64,
        step: i64,
    },
    Finish {
        status: String,
        reason: Option<String>,
    },
}

#[derive(Debug)]
pub struct Reporter {
    log: File,
    tx: Option<mpsc::Sender<Msg>>,
    inbox: Arc<Mutex<Vec<Signal>>>,
    taken: HashSet<i64>,
    sender: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Reporter {
    /// Opens (appending) `dir/metrics.jsonl`; with a target, starts the sender and signal threads.
    pub fn start(dir: &Path, target: Option<ServerTarget>) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let path = dir.join("metrics.jsonl");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::io(&path, e))?;
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, sender) = match target {
            None => (None, None),
            Some(t) => {
                let (tx, rx) = mpsc::channel();
                let client = Client::new(&t)?;
                let listen = SignalListener {
                    client: client.clone(),
                    inbox: inbox.clone(),
                    stop: stop.clone(),
                };
                std::thread::Builder::new()
                    .name("redline-signals".into())
                    .spawn(move || listen.run())
                    .map_err(|e| {
                        TrainError::Config(format!("cannot start the signal thread: {e}"))
                    })?;
                let sender = Sender {
                    client,
                    spool: path,
                    inbox: inbox.clone(),
                    rx,
                    run: t.run,
                };
                let handle = std::thread::Builder::new()
                    .name("redline-reporter".into())
                    .spawn(move || sender.run())
                    .map_err(|e| {
                        TrainError::Config(format!("cannot start the reporter thread: {e}"))
                    })?;
                (Some(tx), Some(handle))
            }
        };
        Ok(Self {
            log,
            tx,
            inbox,
            taken: HashSet::new(),
            sender,
            stop,
        })
    }

    /// Appends one step to the local log and wakes the sender. Never waits for the network.
    pub fn record(
        &mut self,
        step: usize,
        time: f64,
        metrics: &BTreeMap<String, f64>,
    ) -> Result<()> {
        let record = StepRecord {
            step: step as i64,
            time: Some(time),
            metrics: metrics
                .iter()
                .map(|(k, v)| (k.clone(), MetricValue(*v)))
                .collect(),
        };
        let mut line =
            serde_json::to_string(&record).map_err(|e| TrainError::Data(e.to_string()))?;
        line.push('\n');
        self.log
            .write_all(line.as_bytes())
            .map_err(|e| TrainError::Data(format!("cannot write metrics.jsonl: {e}")))?;
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Wake);
        }
        Ok(())
    }

    /// Signals received since the last call, oldest first, each handed out once.
    pub fn take_signals(&mut self) -> Vec<Signal> {
        let mut inbox = self.inbox.lock().expect("signal inbox");
        let mut fresh: Vec<Signal> = inbox
            .drain(..)
            .filter(|s| self.taken.insert(s.id))
            .collect();
        fresh.sort_by_key(|s| s.id);
        fresh
    }

    /// Reports that signal `id` took effect at `step` (sent in the background).
    pub fn ack(&self, id: i64, step: usize) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Ack {
                id,
                step: step as i64,
            });
        }
    }

    /// Sends what is left and finishes the run on the server, waiting at most a short grace
    /// period; whatever could not be sent stays in the spool for the next start.
    pub fn finish(mut self, status: &str, reason: Option<String>) {
        let _ = self.log.flush();
        // A stop's reason quotes the rule's message, which can outgrow the server's text limit;
        // the whole message stays in the run's rule events.
        let reason = reason.map(|r| fit_text(&r));
        self.stop.store(true, Ordering::Relaxed);
        if let (Some(tx), Some(handle)) = (self.tx.take(), self.sender.take()) {
            let _ = tx.send(Msg::Finish {
                status: status.to_owned(),
                reason,
            });
            let _ = handle.join();
        }
    }
}

/// `text` cut to the server's limit on free text, marked with an ellipsis where cut.
fn fit_text(text: &str) -> String {
    let limit = redline_core::wire::MAX_TEXT;
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(limit - 1).collect();
    cut.push('…');
    cut
}

#[derive(Debug, Clone)]
struct Client {
    http: reqwest::blocking::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(t: &ServerTarget) -> Result<Self> {
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(None)
            .build()
            .map_err(|e| TrainError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: format!("{}/api/v1/runs/{}", t.url, t.run_id),
            token: t.token.clone(),
        })
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> std::result::Result<String, CallError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let status = resp.status();
        let text = resp
            .text()
            .map_err(|e| CallError::Transport(e.to_string()))?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(CallError::Status(status, text))
        }
    }
}

/// Why a call to the server failed, which decides what the sender does next.
#[derive(Debug)]
enum CallError {
    /// No answer: the server is down or unreachable. Retry.
    Transport(String),
    /// An answer other than success.
    Status(reqwest::StatusCode, String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transport(e) => write!(f, "server unreachable: {e}"),
            Self::Status(s, body) => write!(f, "server answered {s}: {body}"),
        }
    }
}

impl CallError {
    fn status(&self) -> Option<u16> {
        match self {
            Self::Status(s, _) => Some(s.as_u16()),
            Self::Transport(_) => None,
        }
    }
}

fn push_signals(inbox: &Mutex<Vec<Signal>>, signals: Vec<Signal>) {
    if !signals.is_empty() {
        inbox.lock().expect("signal inbox").extend(signals);
    }
}

struct Sender {
    client: Client,
    spool: PathBuf,
    inbox: Arc<Mutex<Vec<Signal>>>,
    rx: mpsc::Receiver<Msg>,
    run: serde_json::Value,
}

impl Sender {
    fn offset_path(&self) -> PathBuf {
        self.spool.with_extension("jsonl.sent")
    }

    fn offset(&self) -> u64 {
        std::fs::read_to_string(self.offset_path())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Written to a temp file and renamed, so a crash never leaves a torn offset.
    fn save_offset(&self, offset: u64) -> std::io::Result<()> {
        let tmp = self.spool.with_extension("jsonl.sent.tmp");
        std::fs::write(&tmp, offset.to_string())?;
        std::fs::rename(tmp, self.offset_path())
    }

    /// Complete lines after `offset`, at most `BATCH_STEPS`, and the offset after them.
    fn pending(&self, offset: u64) -> std::io::Result<(Vec<serde_json::Value>, u64)> {
        let mut file = File::open(&self.spool)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut reader = BufReader::new(file);
        let (mut steps, mut end, mut line) = (Vec::new(), offset, String::new());
        while steps.len() < BATCH_STEPS {
            line.clear();
            let n = reader.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                break; // the end, or a line still being written
            }
            end += n as u64;
            if let Ok(v) = serde_json::from_str(&line) {
                steps.push(v);
            }
        }
        Ok((steps, end))
    }

    fn post_steps(&self, steps: &[serde_json::Value]) -> std::result::Result<(), CallError> {
        let body = serde_json::json!({ "steps": steps });
        let answer = self
            .client
            .call(reqwest::Method::POST, "/steps", Some(&body))?;
        let result: IngestResult = serde_json::from_str(&answer)
            .map_err(|e| CallError::Transport(format!("unreadable answer: {e}")))?;
        push_signals(&self.inbox, result.signals);
        Ok(())
    }

    fn ship(&self) -> std::result::Result<bool, CallError> {
        let offset = self.offset();
        let (steps, end) = self
            .pending(offset)
            .map_err(|e| CallError::Transport(format!("cannot read the spool: {e}")))?;
        if end == offset {
            return Ok(false);
        }
        if !steps.is_empty() {
            match self.post_steps(&steps) {
                // The server will never take this batch as it is: send its steps one by one and
                // skip only those it refuses (they stay in metrics.jsonl), rather than hold back
                // every later step.
                Err(e) if matches!(e.status(), Some(400 | 413 | 422)) => {
                    for step in &steps {
                        match self.post_steps(std::slice::from_ref(step)) {
                            Err(e) if matches!(e.status(), Some(400 | 413 | 422)) => {
                                eprintln!(
                                    "redline: the server refused step {}, skipped ({e})",
                                    step["step"]
                                );
                            }
                            other => other?,
                        }
                    }
                }
                other => other?,
            }
        }
        self.save_offset(end)
            .map_err(|e| CallError::Transport(format!("cannot save the spool offset: {e}")))?;
        Ok(true)
    }

    /// One round: make sure the run exists, ship what is unsent, send pending acks. Returns
    /// whether there was anything to do.
    fn sync(
        &self,
        created: &mut bool,
        acks: &mut Vec<(i64, i64)>,
    ) -> std::result::Result<bool, CallError> {
        if !*created {
            self.client
                .call(reqwest::Method::PUT, "", Some(&self.run))?;
            *created = true;
        }
        let mut busy = self.ship()?;
        while let Some(&(id, step)) = acks.first() {
            let body = serde_json::json!({ "step": step });
            match self.client.call(
                reqwest::Method::POST,
                &format!("/signals/{id}/ack"),
                Some(&body),
            ) {
                Ok(_) => {}
                // Unknown signal, or acknowledged already at another step: nothing left to say.
                Err(e) if matches!(e.status(), Some(404 | 409)) => {
                    eprintln!("redline: acknowledging signal {id} failed for good ({e})");
                }
                Err(e) => return Err(e),
            }
            acks.remove(0);
            busy = true;
        }
        Ok(busy)
    }

    fn run(self) {
        let mut backoff = Duration::from_millis(100);
        let mut created = false;
        let mut acks: Vec<(i64, i64)> = Vec::new();
        let mut finish: Option<(String, Option<String>, Instant)> = None;
        loop {
            let outcome = self.sync(&mut created, &mut acks);
            let busy = match outcome {
                Ok(busy) => {
                    backoff = Duration::from_millis(100);
                    busy
                }
                Err(e) => {
                    match e.status() {
                        // The run is gone (a new database?): create it again, then resend.
                        Some(404) => created = false,
                        Some(401 | 403) => eprintln!(
                            "redline: the server refused the token ({e}); steps are kept in \
                             metrics.jsonl: restart with the right --token to send them"
                        ),
                        _ => eprintln!("redline: {e}; steps are kept in metrics.jsonl and resent"),
                    }
                    if finish
                        .as_ref()
                        .is_some_and(|f| f.2.elapsed() > FINISH_GRACE)
                    {
                        eprintln!("redline: giving up for now; the next start resends the rest");
                        return;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if !busy && let Some((status, reason, _)) = &finish {
                let body = serde_json::json!({ "status": status, "reason": reason });
                if let Err(e) = self
                    .client
                    .call(reqwest::Method::POST, "/finish", Some(&body))
                {
                    eprintln!("redline: could not finish the run on the server: {e}");
                }
                return;
            }
            let wait = if busy {
                Duration::ZERO
            } else {
                Duration::from_secs(1)
            };
            let first = match self.rx.recv_timeout(wait) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    finish.get_or_insert_with(|| {
                        (
                            "failed".into(),
                            Some("trainer exited".into()),
                            Instant::now(),
                        )
                    });
                    None
                }
            };
            for msg in first
                .into_iter()
                .chain(std::iter::from_fn(|| self.rx.try_recv().ok()))
            {
                match msg {
                    Msg::Wake => {}
                    Msg::Ack { id, step } => acks.push((id, step)),
                    Msg::Finish { status, reason } => {
                        finish = Some((status, reason, Instant::now()));
                    }
                }
            }
        }
    }
}

/// Follows the run's signal stream (SSE), reconnecting after the last event id it saw.
struct SignalListener {
    client: Client,
    inbox: Arc<Mutex<Vec<Signal>>>,
    stop: Arc<AtomicBool>,
}

impl SignalListener {
    fn run(self) {
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
                push_signals(&self.inbox, vec![signal]);
            }
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::fit_text;
    use redline_core::wire::MAX_TEXT;

    #[test]
    fn a_long_reason_is_cut_to_the_servers_limit_on_a_character_boundary() {
        assert_eq!(fit_text("stopped"), "stopped");
        let long = "é".repeat(MAX_TEXT + 30);
        let cut = fit_text(&long);
        assert_eq!(cut.chars().count(), MAX_TEXT);
        assert!(cut.ends_with('…') && cut.starts_with("éé"));
        let exact = "x".repeat(MAX_TEXT);
        assert_eq!(fit_text(&exact), exact);
    }
}
