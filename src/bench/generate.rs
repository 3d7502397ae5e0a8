//! `redline bench generate`: greedy generation from SmolLM2-135M-Instruct (its GGUF file, in f32)
//! against transformers' `generate` with its KV cache, on the same prompt token ids, the same
//! number of new tokens and the same number of threads. Each side loads the model once and warms
//! up with one untimed generation; then they take turns, so that load from elsewhere on the
//! machine falls on both. Reports the medians, their ratio, and how many completions agree.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::Device;
use redline_trainer::data::PairTokenizer;
use redline_trainer::generate::{Sampling, complete};
use redline_trainer::model::{load_weights, trainable_model};

use crate::cli::BenchGenerateArgs;

/// The transformers side; run from the repository root.
const SCRIPT: &str = "scripts/hf_generate.py";

pub fn run(args: &BenchGenerateArgs) -> anyhow::Result<()> {
    let threads = match (args.threads, std::env::var("RAYON_NUM_THREADS")) {
        (Some(n), _) => n,
        (None, Ok(n)) => n.parse().context("RAYON_NUM_THREADS is not a number")?,
        (None, Err(_)) => std::thread::available_parallelism().map_or(1, usize::from),
    };
    if std::env::var("RAYON_NUM_THREADS").ok() != Some(threads.to_string()) {
        return rerun_with_threads(threads);
    }
    check_inputs(args)?;
    let device = Device::Cpu;
    let loaded = load_weights(&args.model, &device)?;
    let cfg = loaded.config.clone();
    // The trainable policy, as evaluation generates with it during training.
    let (model, _params) = trainable_model(&cfg, Some(&loaded.tensors), &device)?;
    drop(loaded);
    let tok = PairTokenizer::for_model(&args.model, cfg.family, cfg.eos_token_id)?;
    let eos = cfg
        .eos_token_id
        .context("the model names no EOS token, which both sides stop at")?;
    let prompts = read_prompts(&args.prompts, &tok)?;

    let mut peer = Peer::start(args, &prompts, eos, threads)?;
    let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let greedy = Sampling {
        temperature: 0.0,
        top_p: 1.0,
        max_new_tokens: args.max_new_tokens,
    };
    // Generation runs inside candle's thread pool, as evaluation does in training.
    let ours = || device.with_context(|| complete(&model, &refs, &greedy, Some(eos), 0));
    ours()?;
    let (mut our_seconds, mut their_seconds) = (Vec::new(), Vec::new());
    let (mut our_tokens, mut their_tokens) = (Vec::new(), Vec::new());
    for run in 1..=args.runs {
        let start = Instant::now();
        our_tokens = ours()?;
        our_seconds.push(start.elapsed().as_secs_f64());
        let (seconds, tokens) = peer.generate()?;
        their_seconds.push(seconds);
        their_tokens = tokens;
        eprintln!(
            "run {run}/{}: Redline {:.2} s, transformers {seconds:.2} s",
            args.runs,
            our_seconds[run - 1]
        );
    }
    let (ours_median, theirs_median) = (median(&our_seconds), median(&their_seconds));
    let count = |c: &[Vec<u32>]| c.iter().map(Vec::len).sum::<usize>();
    let agreement = Agreement::of(&our_tokens, &their_tokens);
    println!(
        "| prompts | new tokens (at most) | threads | runs | Redline s (median) | transformers s (median) \
         | transformers s / Redline s | tokens generated (Redline, transformers) | identical completions | tokens before the first difference |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {threads} | {} | {ours_median:.2} | {theirs_median:.2} | **{:.2}×** | {}, {} | {}/{} | {}/{} |",
        prompts.len(),
        args.max_new_tokens,
        args.runs,
        theirs_median / ours_median,
        count(&our_tokens),
        count(&their_tokens),
        agreement.identical,
        prompts.len(),
        agreement.common,
        agreement.longest,
    );
    println!();
    println!(
        "Redline runs (s): {}; transformers runs (s): {}. transformers {} (torch {}, {} attention, {} threads).",
        list(&our_seconds),
        list(&their_seconds),
        peer.ready["transformers"].as_str().unwrap_or("?"),
        peer.ready["torch"].as_str().unwrap_or("?"),
        peer.ready["attention"].as_str().unwrap_or("?"),
        peer.ready["threads"],
    );
    for (i, at) in &agreement.differences {
        println!("Prompt {i}: the completions differ from token {at}.");
    }
    Ok(())
}

/// candle asks the operating system for the CPU count on every CPU matrix product unless
/// `RAYON_NUM_THREADS` is set (docs/benchmarks.md, "What did not help"), which costs each decoding
/// step hundreds of reads; and this process cannot set it for itself (`std::env::set_var` is
/// unsafe, and the workspace forbids unsafe code). So the command runs itself again with it set,
/// to the thread count transformers is given.
fn rerun_with_threads(threads: usize) -> anyhow::Result<()> {
    let status = Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env("RAYON_NUM_THREADS", threads.to_string())
        .status()
        .context("running this command again with RAYON_NUM_THREADS set")?;
    if !status.success() {
        bail!("the benchmark failed ({status})");
    }
    Ok(())
}

fn check_inputs(args: &BenchGenerateArgs) -> anyhow::Result<()> {
    super::peer_python(
        &args.peers_venv,
        SCRIPT,
        "run ../shared/peers/setup.sh on it and pip install gguf there first (transformers is the \
         other side of this benchmark)",
    )?;
    if !args.model.is_file() {
        bail!(
            "no model at {}: scripts/fetch-smollm2.sh fetches SmolLM2-135M-Instruct",
            args.model.display()
        );
    }
    Ok(())
}

/// The `prompt` field of each line of a JSON-lines file, tokenised as training tokenises prompts.
pub(super) fn read_prompts(path: &Path, tok: &PairTokenizer) -> anyhow::Result<Vec<Vec<u32>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line)?;
            let prompt = row["prompt"]
                .as_str()
                .with_context(|| format!("{}: a line without a prompt", path.display()))?;
            Ok(tok.encode_text(prompt)?)
        })
        .collect()
}

/// transformers, loaded and warmed up in a child process that generates once per line it reads.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// What the script reported once loaded: versions, threads, attention implementation.
    ready: serde_json::Value,
    /// Keeps the prompt file for the script's lifetime.
    _prompts: tempfile::NamedTempFile,
}

impl Peer {
    fn start(
        args: &BenchGenerateArgs,
        prompts: &[Vec<u32>],
        eos: u32,
        threads: usize,
    ) -> anyhow::Result<Self> {
        let mut file = tempfile::NamedTempFile::new()?;
        serde_json::to_writer(
            &mut file,
            &serde_json::json!({ "prompts": prompts, "eos": eos }),
        )?;
        file.flush()?;
        eprintln!("loading the model in transformers…");
        let mut child = Command::new(args.peers_venv.join("bin/python"))
            .arg(SCRIPT)
            .arg(&args.model)
            .arg(file.path())
            .args(["--max-new-tokens", &args.max_new_tokens.to_string()])
            .args(["--threads", &threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {SCRIPT}"))?;
        let stdin = child.stdin.take().context("the script's stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("the script's stdout")?);
        let mut peer = Self {
            child,
            stdin,
            stdout,
            ready: serde_json::Value::Null,
            _prompts: file,
        };
        peer.ready = peer.read_line()?;
        Ok(peer)
    }

    fn read_line(&mut self) -> anyhow::Result<serde_json::Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!("{SCRIPT} stopped ({status}); its errors are above");
        }
        serde_json::from_str(&line).with_context(|| format!("{SCRIPT} said {line:?}"))
    }

    /// One timed generation: its seconds and the completions (each ending at its EOS).
    fn generate(&mut self) -> anyhow::Result<(f64, Vec<Vec<u32>>)> {
        writeln!(self.stdin, "go")?;
        self.stdin.flush()?;
        let v = self.read_line()?;
        let seconds = v["seconds"].as_f64().context("no seconds")?;
        Ok((seconds, serde_json::from_value(v["completions"].clone())?))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // The script ends when its stdin closes; kill it only if it does not.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How far two sides' completions of the same prompts agree.
#[derive(Debug, PartialEq)]
struct Agreement {
    identical: usize,
    /// Tokens before each prompt's first difference, summed; and the longer completion's length,
    /// summed.
    common: usize,
    longest: usize,
    /// Prompts whose completions differ, with the index of the first differing token.
    differences: Vec<(usize, usize)>,
}

impl Agreement {
    fn of(a: &[Vec<u32>], b: &[Vec<u32>]) -> Self {
        let mut out = Self {
            identical: 0,
            common: 0,
            longest: 0,
            differences: Vec::new(),
        };
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let same = x.iter().zip(y).take_while(|(p, q)| p == q).count();
            out.common += same;
            out.longest += x.len().max(y.len());
            if x == y {
                out.identical += 1;
            } else {
                out.differences.push((i, same));
            }
        }
        out
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => f64::midpoint(s[n / 2 - 1], s[n / 2]),
    }
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_counts_identical_completions_and_where_others_part() {
        let a = vec![vec![1, 2, 3], vec![4, 5, 6, 2], vec![7]];
        let b = vec![vec![1, 2, 3], vec![4, 5, 9], vec![8, 2]];
        assert_eq!(
            Agreement::of(&a, &b),
            Agreement {
                identical: 1,
                common: 5,
                longest: 9,
                differences: vec![(1, 2), (2, 0)],
            }
        );
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
