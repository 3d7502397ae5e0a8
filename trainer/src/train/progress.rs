//! The progress line: the one piece of the trainer's output that is not a log event.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Instant;

use redline_core::catalogue::{LOSS, REWARD_MARGIN, Side, TOPK_ENTROPY};

/// One status line: redrawn in place on a terminal, printed every 10 steps otherwise.
pub(super) struct Progress {
    total: usize,
    first: usize,
    started: Instant,
    tty: bool,
}

impl Progress {
    pub(super) fn new(total: usize, first: usize) -> Self {
        Self {
            total,
            first,
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    pub(super) fn show(&mut self, step: usize, m: &BTreeMap<String, f64>) {
        if !self.tty && !step.is_multiple_of(10) && step != self.total {
            return;
        }
        let done = (step + 1 - self.first) as f64;
        let rate = done / self.started.elapsed().as_secs_f64().max(1e-9);
        let eta = (self.total - step) as f64 / rate.max(1e-9);
        let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
        let line = format!(
            "step {step}/{} loss {:.4} margin {:.4} topk_entropy {:.3} {rate:.2} steps/s ETA {}m{:02}s",
            self.total,
            get(LOSS.name),
            get(REWARD_MARGIN.name),
            get(TOPK_ENTROPY.on(Side::Chosen).name),
            (eta / 60.0) as u64,
            (eta % 60.0) as u64
        );
        if self.tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }

    pub(super) fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
