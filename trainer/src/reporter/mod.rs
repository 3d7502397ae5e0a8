//! Streams a run's steps to a Redline server without ever blocking a training step, and without
//! losing or duplicating one.
//!
//! The training thread appends each step to `metrics.jsonl` (the run's local log, readable with no
//! server at all) and returns. A sender thread ships the file's unsent tail to the server in
//! batches; `metrics.jsonl.sent` holds the byte offset the server has acknowledged, so a server
//! that is down, or a trainer that restarts, resends from there, and so does `redline push`.
//! Resending is safe: ingest is idempotent. Signals arrive in ingest answers and on the server's
//! event stream; the training loop takes them at step boundaries and answers each here, as
//! applied or as refused.

mod client;
mod listener;
mod push;
mod record;
mod sender;
mod spool;

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use redline_core::MetricValue;
use redline_core::wire::{AckSignal, CreateRun, FinishRun, Signal, StepRecord};

pub use push::{Pushed, push};
pub use record::RunRecord;
pub use sender::Delivery;
pub use spool::Spool;

use crate::error::{Result, TrainError};
use listener::SignalListener;
use sender::{Msg, Sender};

/// How long, by default, `finish` waits for the server without progress before leaving the rest
/// in the spool.
pub const FINISH_GRACE: Duration = Duration::from_secs(30);
/// How much longer than the grace `finish` waits for the sender's own account: a call already in
/// flight when the trainer finished was started without the grace's deadline.
const SLACK: Duration = Duration::from_secs(5);

/// Where and as whom to report.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    pub url: String,
    pub token: Option<String>,
    pub run_id: String,
    /// Body of the create-or-resume call.
    pub run: CreateRun,
    /// After training, how long the sender may go without progress before it gives up and
    /// leaves the rest in the spool.
    pub finish_grace: Duration,
}

#[derive(Debug)]
pub struct Reporter {
    log: File,
    dir: PathBuf,
    tx: Option<mpsc::Sender<Msg>>,
    inbox: Arc<Mutex<Vec<Signal>>>,
    taken: HashSet<i64>,
    /// The sender's account of what it delivered, sent as it returns.
    done: Option<mpsc::Receiver<Delivery>>,
    target: Option<ServerTarget>,
    stop: Arc<AtomicBool>,
}

impl Reporter {
    /// With a target, first creates or resumes the run on the server: a refused token or run is
    /// [`TrainError::Refused`], and nothing is written; an unreachable server is said once, and
    /// steps wait in the spool. Then opens (appending) `dir/metrics.jsonl` and, with a target,
    /// starts the sender and signal threads.
    pub fn start(dir: &Path, target: Option<ServerTarget>) -> Result<Self> {
        let spool = Spool::of_run(dir);
        let start = match &target {
            Some(t) => client::check_server(t)?,
            None => None,
        };
        if let Some(t) = &start {
            tracing::warn!(
                problem = %t.said,
                spool = %spool.log().display(),
                "server unavailable; training goes on, and the steps kept in the spool are sent \
                 once it answers"
            );
        }
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(spool.log())
            .map_err(|e| TrainError::io(spool.log(), e))?;
        end_torn_line(&mut log).map_err(|e| TrainError::io(spool.log(), e))?;
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, done) = match &target {
            None => (None, None),
            Some(t) => {
                let (tx, rx) = mpsc::channel();
                let client = client::Client::new(t)?;
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
                    spool,
                    inbox: inbox.clone(),
                    rx,
                    run: t.run.clone(),
                    grace: t.finish_grace,
                    start,
                };
                let (report, done) = mpsc::channel();
                std::thread::Builder::new()
                    .name("redline-reporter".into())
                    .spawn(move || {
                        let _ = report.send(sender.run());
                    })
                    .map_err(|e| {
                        TrainError::Config(format!("cannot start the reporter thread: {e}"))
                    })?;
                (Some(tx), Some(done))
            }
        };
        Ok(Self {
            log,
            dir: dir.to_path_buf(),
            tx,
            inbox,
            taken: HashSet::new(),
            done,
            target,
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
        self.send(Msg::Wake);
        Ok(())
    }

    fn send(&self, msg: Msg) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(msg);
        }
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
        self.send(Msg::Answer {
            id,
            ack: AckSignal {
                step: step as i64,
                refused: None,
            },
        });
    }

    /// Reports that the trainer could not apply signal `id` at `step`, and why: the server keeps
    /// it as refused, never as applied.
    pub fn refuse(&self, id: i64, step: usize, why: &str) {
        self.send(Msg::Answer {
            id,
            ack: AckSignal {
                step: step as i64,
                refused: Some(fit_text(why)),
            },
        });
    }

    /// Sends what is left and finishes the run on the server, giving up once the grace passes
    /// without progress; whatever could not be sent stays in the spool, and the [`Delivery`]
    /// says so ([`leftover`] words it for people). `None` for an offline run.
    pub fn finish(mut self, end: FinishRun) -> Option<Delivery> {
        let _ = self.log.flush();
        self.stop.store(true, Ordering::Relaxed);
        let (tx, done, target) = (self.tx.take()?, self.done.take()?, self.target.take()?);
        let _ = tx.send(Msg::Finish(Some(fit_end(end))));
        // The sender keeps to the grace itself; this bound only guards against a sender stuck
        // in a call, which must not keep the trainer alive either.
        let delivery = done
            .recv_timeout(target.finish_grace + SLACK)
            .unwrap_or_else(|_| {
                let spool = Spool::of_run(&self.dir);
                Delivery {
                    undelivered: spool.undelivered().unwrap_or(0),
                    finished: false,
                    problem: Some(format!(
                        "the server at {} did not answer in time",
                        target.url
                    )),
                    retryable: true,
                }
            });
        if let Some(problem) = &delivery.problem {
            tracing::warn!(
                run = %target.run_id,
                undelivered = delivery.undelivered,
                retryable = delivery.retryable,
                problem = %problem,
                "the run's delivery stopped short; what is left stays in the spool"
            );
        }
        Some(delivery)
    }
}

/// What a delivery that stopped short left behind, and how to send it, for people; `None` when
/// nothing is left.
pub fn leftover(delivery: &Delivery, url: &str, dir: &Path, run_id: &str) -> Option<String> {
    let problem = delivery.problem.as_ref()?;
    let shown = dir.display();
    let how = if delivery.retryable {
        format!(
            "`redline push {shown}` (or running the same `redline train` again, with --run-id \
             {run_id} and --output-dir {shown}, to resume)"
        )
    } else {
        format!("`redline push {shown} --token TOKEN` with a token the server accepts")
    };
    Some(if delivery.undelivered > 0 {
        let (n, steps, they) = match delivery.undelivered {
            1 => (1, "step was", "it is"),
            n => (n, "steps were", "they are"),
        };
        format!(
            "redline: {problem}.\nredline: {n} {steps} not delivered to {url}; {they} kept in \
             {}/{} (spool offset in {}); {how} sends {}.",
            shown,
            Spool::LOG,
            Spool::OFFSET,
            if n == 1 { "it" } else { "them" }
        )
    } else {
        format!(
            "redline: {problem}.\nredline: every step reached {url}, but not how the run ended; \
             {how} sends it."
        )
    })
}

/// A process that died mid-write left a torn last line: ends it, so the steps appended now are
/// lines of their own (the torn one is not JSON, so the sender passes over it).
fn end_torn_line(log: &mut File) -> std::io::Result<()> {
    let len = log.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8];
    // In append mode a seek moves reads only; writes still go to the end.
    log.seek(SeekFrom::Start(len - 1))?;
    log.read_exact(&mut last)?;
    if last[0] != b'\n' {
        log.write_all(b"\n")?;
    }
    Ok(())
}

/// A stop's reason quotes the rule's message, which can outgrow the server's text limit; the
/// whole message stays in the run's rule events.
fn fit_end(end: FinishRun) -> FinishRun {
    FinishRun {
        reason: end.reason.map(|r| fit_text(&r)),
        ..end
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

pub(crate) fn push_signals(inbox: &Mutex<Vec<Signal>>, signals: Vec<Signal>) {
    if !signals.is_empty() {
        inbox.lock().expect("signal inbox").extend(signals);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{Delivery, Reporter, fit_text, leftover};
    use redline_core::wire::MAX_TEXT;

    #[test]
    fn what_was_not_delivered_is_said_with_its_count_and_how_to_send_it() {
        let mut d = Delivery {
            undelivered: 3,
            finished: false,
            problem: Some("the server at http://h is unreachable (no answer)".into()),
            retryable: true,
        };
        let said = leftover(&d, "http://h", Path::new("runs/a"), "a").unwrap();
        assert!(
            said.contains("3 steps were not delivered to http://h")
                && said.contains("kept in runs/a/metrics.jsonl")
                && said.contains("`redline push runs/a`")
                && said.contains("--run-id a"),
            "{said}"
        );
        d.undelivered = 0;
        let said = leftover(&d, "http://h", Path::new("runs/a"), "a").unwrap();
        assert!(said.contains("not how the run ended"), "{said}");
        d.retryable = false;
        let said = leftover(&d, "http://h", Path::new("runs/a"), "a").unwrap();
        assert!(said.contains("--token"), "{said}");
        d.problem = None;
        assert_eq!(leftover(&d, "http://h", Path::new("runs/a"), "a"), None);
    }

    #[test]
    fn steps_after_a_crash_mid_write_start_a_line_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("metrics.jsonl");
        std::fs::write(&log, "{\"step\":1,\"metrics\":{}}\n{\"step\":2,\"me").unwrap();
        let mut reporter = Reporter::start(dir.path(), None).unwrap();
        reporter
            .record(3, 0.0, &[("loss".to_owned(), 0.5)].into())
            .unwrap();
        drop(reporter);
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[2].starts_with("{\"step\":3"), "{text}");
    }

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
