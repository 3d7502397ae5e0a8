//! The sender: ships the spool's undelivered steps and the trainer's answers to signals, then the
//! run's end. Whatever state the server is in (down, refusing, erroring), the sender returns once
//! the finish grace has passed without progress after it was asked to finish: no failure can keep
//! it, or the trainer waiting on it, alive.

use std::collections::VecDeque;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redline_core::wire::{
    AckSignal, CreateRun, FinalStatus, FinishRun, IngestResult, Signal, StepBatch, StepRecord,
};

use super::client::{CallError, Client, Next, Trouble, retry_wait};
use super::spool::Spool;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often an idle sender looks at the spool without being woken.
const IDLE: Duration = Duration::from_secs(1);

pub(super) enum Msg {
    Wake,
    /// The trainer's answer to signal `id`: applied at a step, or refused there and why.
    Answer {
        id: i64,
        ack: AckSignal,
    },
    /// Send what is left, then the run's end (`None`: leave the run as it is), and return.
    Finish(Option<FinishRun>),
}

/// What reached the server by the time the sender returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Steps in the spool the server has not taken.
    pub undelivered: usize,
    /// Whether the server recorded the run's end (false when there was none to send).
    pub finished: bool,
    /// Why the sender stopped short of delivering everything; `None` when it did not.
    pub problem: Option<String>,
    /// Whether trying again later can help: false when the server refused the token or the run.
    pub retryable: bool,
}

impl Delivery {
    pub fn complete(&self) -> bool {
        self.problem.is_none()
    }
}

/// Which call failed: the same status means different things for each.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Open,
    Steps,
    Answer,
    Finish,
}

#[derive(Debug)]
struct Failure {
    stage: Stage,
    error: CallError,
}

fn at(stage: Stage) -> impl Fn(CallError) -> Failure {
    move |error| Failure { stage, error }
}

#[derive(Debug, PartialEq)]
enum Round {
    /// Something reached the server: go on at once.
    Progress,
    /// Nothing to send.
    Idle,
    /// Everything is delivered, the end included.
    Done,
}

/// Whether the trainer has asked to finish, and with what end (`None`: leave the run as it is).
#[derive(Debug)]
enum Phase {
    Training,
    Finishing(Option<FinishRun>),
}

struct State {
    created: bool,
    answers: VecDeque<(i64, AckSignal)>,
    phase: Phase,
    /// When to give up: the grace after the finish request, renewed by each bit of progress.
    deadline: Option<Instant>,
    backoff: Duration,
    /// No call before this, after a failure: the trainer's messages wake the sender at every
    /// step, and must not cut short a backoff or the server's `Retry-After`.
    retry_at: Option<Instant>,
    /// Whether `retry_at` is the server's own `Retry-After`, which even finishing honours.
    server_asked: bool,
    /// The retryable failure last told, so a long outage is said once, not at every retry.
    trouble: Option<Trouble>,
    /// A failure no retry can mend: nothing more is sent.
    blocked: Option<String>,
    disconnected: bool,
}

impl State {
    /// The wait before the next try, lengthening the next one.
    fn backoff(&mut self, next: Next) -> Duration {
        self.server_asked = matches!(next, Next::Retry(Some(_)));
        let wait = retry_wait(next, self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        wait
    }
}

pub(super) struct Sender {
    pub(super) client: Client,
    pub(super) spool: Spool,
    pub(super) inbox: Arc<Mutex<Vec<Signal>>>,
    pub(super) rx: mpsc::Receiver<Msg>,
    /// Body of the create-or-resume call.
    pub(super) run: CreateRun,
    pub(super) grace: Duration,
    /// What the check before starting found: `None`, the run is open; else why it is not, which
    /// was told already.
    pub(super) start: Option<Trouble>,
}

impl Sender {
    pub(super) fn run(self) -> Delivery {
        let mut st = State {
            created: self.start.is_none(),
            answers: VecDeque::new(),
            phase: Phase::Training,
            deadline: None,
            backoff: FIRST_BACKOFF,
            retry_at: None,
            server_asked: false,
            trouble: self.start.clone(),
            blocked: None,
            disconnected: false,
        };
        loop {
            let now = Instant::now();
            let wait = if st.blocked.is_some() {
                IDLE
            } else if let Some(at) = st.retry_at.filter(|at| *at > now) {
                at - now
            } else {
                st.retry_at = None;
                match self.sync(&mut st) {
                    Ok(Round::Done) => return self.delivery(&st, true),
                    Ok(round) => {
                        if st.trouble.take().is_some() {
                            tracing::info!(
                                server = %self.client.url,
                                "the server answers again; sending the steps kept meanwhile"
                            );
                        }
                        st.backoff = FIRST_BACKOFF;
                        if round == Round::Progress {
                            if let Some(d) = &mut st.deadline {
                                *d = Instant::now() + self.grace;
                            }
                            Duration::ZERO
                        } else {
                            IDLE
                        }
                    }
                    Err(f) => {
                        let wait = self.failed(&mut st, &f);
                        st.retry_at = Some(now + wait);
                        wait
                    }
                }
            };
            // Refused for good: waiting cannot help, so finishing does not wait.
            if st.blocked.is_some() && !matches!(st.phase, Phase::Training) {
                return self.delivery(&st, false);
            }
            let wait = match st.deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return self.delivery(&st, false);
                    }
                    wait.min(left)
                }
                None => wait,
            };
            self.receive(&mut st, wait);
        }
    }

    /// One round: the run exists, the unsent steps and answers go out, then the end.
    fn sync(&self, st: &mut State) -> Result<Round, Failure> {
        if !st.created {
            self.client
                .open_run(&self.run, st.deadline)
                .map_err(at(Stage::Open))?;
            st.created = true;
        }
        let mut progress = self.ship(st.deadline).map_err(at(Stage::Steps))?;
        while let Some((id, body)) = st.answers.front() {
            let path = format!("/signals/{id}/ack");
            match self
                .client
                .call(reqwest::Method::POST, &path, Some(body), st.deadline)
            {
                Ok(_) => {}
                // Unknown signal, answered already another way, or an answer the server will never
                // take: nothing left to say, and no reason to hold back the steps behind it.
                Err(e) if matches!(e.status(), Some(400 | 404 | 409 | 413 | 422)) => {
                    tracing::warn!(signal = id, error = %e, "answering a signal failed for good");
                }
                Err(e) => return Err(at(Stage::Answer)(e)),
            }
            st.answers.pop_front();
            progress = true;
        }
        if progress {
            return Ok(Round::Progress);
        }
        match &st.phase {
            Phase::Training => Ok(Round::Idle),
            Phase::Finishing(None) => Ok(Round::Done),
            Phase::Finishing(Some(end)) => {
                self.client
                    .call(reqwest::Method::POST, "/finish", Some(end), st.deadline)
                    .map_err(at(Stage::Finish))?;
                Ok(Round::Done)
            }
        }
    }

    /// Sends the next batch of the spool; whether the offset moved.
    fn ship(&self, deadline: Option<Instant>) -> Result<bool, CallError> {
        let unreadable =
            |what: &str, e: std::io::Error| CallError::Transport(format!("cannot {what}: {e}"));
        let offset = self.spool.offset();
        let (steps, end) = match self.spool.pending(offset) {
            Ok(batch) => batch,
            // Nothing recorded yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(unreadable("read the spool", e)),
        };
        if end == offset {
            return Ok(false);
        }
        if !steps.is_empty() {
            match self.post_steps(&steps, deadline) {
                // The server will never take this batch as it is: send its steps one by one and
                // skip only those it refuses (they stay in metrics.jsonl), rather than hold back
                // every later step.
                Err(e) if matches!(e.status(), Some(400 | 413 | 422)) => {
                    for step in &steps {
                        match self.post_steps(std::slice::from_ref(step), deadline) {
                            Err(e) if matches!(e.status(), Some(400 | 413 | 422)) => {
                                tracing::warn!(
                                    step = step.step,
                                    error = %e,
                                    "the server refused a step; skipped (it stays in the spool)"
                                );
                            }
                            other => other?,
                        }
                    }
                }
                other => other?,
            }
        }
        self.spool
            .save_offset(end)
            .map_err(|e| unreadable("save the spool offset", e))?;
        Ok(true)
    }

    fn post_steps(&self, steps: &[StepRecord], deadline: Option<Instant>) -> Result<(), CallError> {
        let body = StepBatch {
            steps: steps.to_vec(),
        };
        let answer = self
            .client
            .call(reqwest::Method::POST, "/steps", Some(&body), deadline)?;
        let result: IngestResult = serde_json::from_str(&answer)
            .map_err(|e| CallError::Transport(format!("unreadable answer: {e}")))?;
        super::push_signals(&self.inbox, result.signals);
        Ok(())
    }

    /// Says what went wrong (once per kind of trouble) and returns how long to wait.
    fn failed(&self, st: &mut State, f: &Failure) -> Duration {
        let url = &self.client.url;
        let log = self.spool.log().display();
        // The run is gone (a new database?): create it again, then resend.
        if f.stage != Stage::Open && f.error.status() == Some(404) {
            tracing::warn!(server = %url, "the run is gone from the server; creating it again");
            st.created = false;
            return st.backoff(Next::Retry(None));
        }
        let said = match f.stage {
            Stage::Finish if f.error.status().is_some_and(|s| s < 500) => {
                format!(
                    "the server at {url} did not take the run's end ({})",
                    f.error
                )
            }
            _ => f.error.explain(url),
        };
        let next = f.error.next();
        match next {
            Next::GiveUp => {
                tracing::warn!(
                    problem = %said,
                    spool = %log,
                    "no more steps are sent; they are kept in the spool"
                );
                st.blocked = Some(said);
                IDLE
            }
            Next::Retry(_) => {
                let status = f.error.status();
                if st.trouble.as_ref().is_none_or(|t| t.status != status) {
                    tracing::warn!(
                        problem = %said,
                        spool = %log,
                        "steps are kept in the spool and sent once the server answers"
                    );
                }
                st.trouble = Some(Trouble { status, said });
                st.backoff(next)
            }
        }
    }

    /// Waits up to `wait` for the trainer, then takes everything it sent.
    fn receive(&self, st: &mut State, wait: Duration) {
        if st.disconnected {
            std::thread::sleep(wait);
            return;
        }
        let first = match self.rx.recv_timeout(wait) {
            Ok(msg) => Some(msg),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                st.disconnected = true;
                if matches!(st.phase, Phase::Training) {
                    self.finish(
                        st,
                        Some(FinishRun {
                            status: FinalStatus::Failed,
                            reason: Some("trainer exited".into()),
                        }),
                    );
                }
                None
            }
        };
        for msg in first
            .into_iter()
            .chain(std::iter::from_fn(|| self.rx.try_recv().ok()))
        {
            match msg {
                Msg::Wake => {}
                Msg::Answer { id, ack } => st.answers.push_back((id, ack)),
                Msg::Finish(end) => self.finish(st, end),
            }
        }
    }

    fn finish(&self, st: &mut State, end: Option<FinishRun>) {
        st.phase = Phase::Finishing(end);
        st.deadline = Some(Instant::now() + self.grace);
        // Training is over: one more try at once, rather than lose the grace to our own backoff.
        if !st.server_asked {
            st.retry_at = None;
        }
    }

    fn delivery(&self, st: &State, done: bool) -> Delivery {
        let undelivered = self.spool.undelivered().unwrap_or_else(|e| {
            tracing::warn!(spool = %self.spool.log().display(), error = %e, "cannot read the spool");
            0
        });
        let problem = (!done).then(|| {
            st.blocked
                .clone()
                .or_else(|| st.trouble.as_ref().map(|t| t.said.clone()))
                .unwrap_or_else(|| "the server did not answer in time".into())
        });
        Delivery {
            undelivered,
            finished: done && matches!(st.phase, Phase::Finishing(Some(_))),
            problem,
            retryable: st.blocked.is_none(),
        }
    }
}
