//! `redline push DIR`: delivers what a run folder still owes a server (the steps after the spool
//! offset, and the run's end as the trainer recorded it) with no trainer running. It ships through
//! the trainer's own sender, so the offset moves the same way and nothing is sent twice.

use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use redline_core::wire::FinishRun;

use super::client::{Client, check_server};
use super::record::RunRecord;
use super::sender::{Delivery, Msg, Sender};
use super::spool::Spool;
use super::{ServerTarget, fit_end, leftover};
use crate::error::{Result, TrainError};

/// What a push did.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub run_id: String,
    pub url: String,
    /// Steps the server took (or refused as invalid, which no retry changes).
    pub sent: usize,
    /// How the trainer ended the run; `None` when it recorded no end (it was interrupted).
    pub ended: Option<FinishRun>,
    pub delivery: Delivery,
}

impl Pushed {
    /// What is left to deliver and how, when the push stopped short.
    pub fn leftover(&self, dir: &Path) -> Option<String> {
        leftover(&self.delivery, &self.url, dir, &self.run_id)
    }
}

/// Sends the undelivered steps of the run in `dir` to `server` (default: the server it was
/// trained against), creating or resuming the run there, then finishes the run with the status
/// the trainer recorded. Gives up after `grace` without progress.
pub fn push(
    dir: &Path,
    server: Option<&str>,
    token: Option<String>,
    grace: Duration,
) -> Result<Pushed> {
    let record = RunRecord::read(dir)?;
    let url = server
        .map(|s| s.trim_end_matches('/').to_owned())
        .or(record.server.clone())
        .ok_or_else(|| {
            TrainError::Config(format!(
                "run {} trained offline: give the server to push to with --server",
                record.run_id
            ))
        })?;
    let spool = Spool::of_run(dir);
    if !spool.log().is_file() {
        return Err(TrainError::Config(format!(
            "{} has no {}: there are no steps to push",
            dir.display(),
            Spool::LOG
        )));
    }
    let target = ServerTarget {
        url: url.clone(),
        token,
        run_id: record.run_id.clone(),
        run: record.create.clone(),
        finish_grace: grace,
    };
    // A refused token or run fails here, clearly, before anything is sent.
    let start = check_server(&target)?;
    if let Some(t) = &start {
        tracing::warn!(
            problem = %t.said,
            grace_seconds = grace.as_secs_f64(),
            "server unavailable; retrying"
        );
    }
    let before = spool
        .undelivered()
        .map_err(|e| TrainError::io(spool.log(), e))?;
    let (tx, rx) = mpsc::channel();
    // Asked to finish from the start: it sends everything, then the end, then returns.
    let end = record.ended.clone().map(fit_end);
    let _ = tx.send(Msg::Finish(end));
    let sender = Sender {
        client: Client::new(&target)?,
        spool,
        // Signals that ingest answers carry stay pending on the server for the next trainer.
        inbox: Arc::new(Mutex::new(Vec::new())),
        rx,
        run: record.create,
        grace,
        start,
    };
    let delivery = sender.run();
    Ok(Pushed {
        run_id: record.run_id,
        url,
        sent: before.saturating_sub(delivery.undelivered),
        ended: record.ended,
        delivery,
    })
}
