//! The spool: `metrics.jsonl`, every step of the run as one JSON line, and `metrics.jsonl.sent`,
//! the byte offset up to which the server has taken them. What lies after the offset is what has
//! not been delivered yet; the trainer's sender and `redline push` both ship from there.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use redline_core::wire::StepRecord;

/// Steps per ingest request.
const BATCH_STEPS: usize = 1_000;

/// The spool of the run folder it was opened on.
#[derive(Debug, Clone)]
pub struct Spool {
    log: PathBuf,
}

impl Spool {
    pub const LOG: &'static str = "metrics.jsonl";
    pub const OFFSET: &'static str = "metrics.jsonl.sent";

    pub fn of_run(dir: &Path) -> Self {
        Self {
            log: dir.join(Self::LOG),
        }
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    fn offset_path(&self) -> PathBuf {
        self.log.with_file_name(Self::OFFSET)
    }

    /// Where the undelivered steps start; 0 when nothing was ever delivered.
    pub fn offset(&self) -> u64 {
        std::fs::read_to_string(self.offset_path())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Written to a temp file and renamed, so a crash never leaves a torn offset.
    pub fn save_offset(&self, offset: u64) -> std::io::Result<()> {
        crate::atomic::write(&self.offset_path(), offset.to_string())
    }

    /// Complete lines after `offset`, at most `BATCH_STEPS`, and the offset after them. Lines that
    /// are not steps (a torn line ended by a restart) are passed over: nothing could ever deliver
    /// them.
    pub fn pending(&self, offset: u64) -> std::io::Result<(Vec<StepRecord>, u64)> {
        self.read_from(offset, BATCH_STEPS)
    }

    /// How many steps after the offset the server has not taken.
    pub fn undelivered(&self) -> std::io::Result<usize> {
        match self.read_from(self.offset(), usize::MAX) {
            Ok((steps, _)) => Ok(steps.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn read_from(&self, offset: u64, most: usize) -> std::io::Result<(Vec<StepRecord>, u64)> {
        let mut file = File::open(&self.log)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut reader = BufReader::new(file);
        let (mut steps, mut end, mut line) = (Vec::new(), offset, String::new());
        while steps.len() < most {
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
}

#[cfg(test)]
mod tests {
    use super::Spool;

    #[test]
    fn undelivered_steps_are_the_complete_lines_after_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::of_run(dir.path());
        assert_eq!(spool.undelivered().unwrap(), 0, "no log yet: nothing owed");
        let first = "{\"step\":1,\"metrics\":{}}\n";
        std::fs::write(
            spool.log(),
            format!("{first}{{\"step\":2,\"metrics\":{{}}}}\n{{\"step\":3,\"me"),
        )
        .unwrap();
        assert_eq!(
            spool.undelivered().unwrap(),
            2,
            "a torn last line is not a step yet"
        );
        spool.save_offset(first.len() as u64).unwrap();
        assert_eq!(spool.undelivered().unwrap(), 1);
        let (steps, end) = spool.pending(spool.offset()).unwrap();
        assert_eq!(steps[0].step, 2);
        spool.save_offset(end).unwrap();
        assert_eq!(spool.undelivered().unwrap(), 0);
    }
}
