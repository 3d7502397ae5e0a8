//! The synthetic tasks of the demo and the study, as preference pairs with a gold answer per
//! prompt: two-digit addition with a short chain of thought (the right answer against the carry
//! mishandled) for the tiny model the demo warms up, and one-digit sums asked in ChatML for a chat
//! model such as SmolLM2-Instruct; and the tiny model itself.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context;
use redline_trainer::rng::SplitMix64;

/// The tiny Llama of the trainer's tests (2 layers, width 64): its configuration, its seeded
/// initial weights and a byte-level tokenizer fitted to this prompt format.
const MODEL_FILES: [(&str, &[u8]); 4] = [
    (
        "config.json",
        include_bytes!("../../trainer/tests/fixtures/tiny-llama/config.json"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../../trainer/tests/fixtures/tiny-llama/tokenizer.json"),
    ),
    (
        "tokenizer_config.json",
        include_bytes!("../../trainer/tests/fixtures/tiny-llama/tokenizer_config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../../trainer/tests/fixtures/tiny-llama/model.safetensors"),
    ),
];

/// Writes the starting model folder.
pub fn write_model(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, bytes) in MODEL_FILES {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// One problem: `a + b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Problem {
    a: u32,
    b: u32,
}

impl Problem {
    /// The worked answer, units first with the carry: " 9+7=16, 4+9+1=14, so 146.".
    fn chain(self) -> (String, u32) {
        let (a1, a0, b1, b0) = (self.a / 10, self.a % 10, self.b / 10, self.b % 10);
        let units = a0 + b0;
        let carry = units / 10;
        let tens = a1 + b1 + carry;
        let tens_sum = if carry > 0 {
            format!("{a1}+{b1}+{carry}")
        } else {
            format!("{a1}+{b1}")
        };
        let total = tens * 10 + units % 10;
        (format!(" {a0}+{b0}={units}, {tens_sum}={tens}, so"), total)
    }

    /// The right chain, then the right answer (chosen) or the carry mishandled in the answer
    /// (rejected): the pair differs in the last step only, so what DPO learns is that step.
    fn json(self) -> String {
        let (chain, sum) = self.chain();
        let carried = (self.a % 10 + self.b % 10) >= 10;
        let wrong = if carried { sum - 10 } else { sum + 10 };
        serde_json::json!({
            "prompt": format!("Q: {}+{}=", self.a, self.b),
            "chosen": format!("{chain} {sum}."),
            "rejected": format!("{chain} {wrong}."),
            "answer": sum.to_string(),
        })
        .to_string()
    }
}

/// One-digit sums asked in the ChatML template chat models are tuned on
/// (`<|im_start|>user\nWhat is 3+5?<|im_end|>…`); the chosen answer is the bare sum ("3+5=8."),
/// the rejected one is off by one or two. SmolLM2-135M-Instruct answers them at length and gets
/// about a quarter right within 24 tokens: DPO has something to teach (the short answer, the
/// right sum) and something to break.
fn chat_sum_json(p: Problem, rng: &mut SplitMix64) -> String {
    let sum = p.a + p.b;
    let off = [1, 2][(rng.next_u64() % 2) as usize];
    let wrong = if sum >= off && rng.next_u64().is_multiple_of(2) {
        sum - off
    } else {
        sum + off
    };
    serde_json::json!({
        "prompt": format!(
            "<|im_start|>user\nWhat is {}+{}?<|im_end|>\n<|im_start|>assistant\n",
            p.a, p.b
        ),
        "chosen": format!("{}+{}={sum}.", p.a, p.b),
        "rejected": format!("{}+{}={wrong}.", p.a, p.b),
        "answer": sum.to_string(),
    })
    .to_string()
}

/// Which task the demo or the study trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    /// Two-digit addition with a short chain of thought (10,000 problems): the demo's, for the
    /// tiny model it warms up.
    Sums,
    /// One-digit sums asked in ChatML (100 problems; training pairs cycle through those not held
    /// out, each time with a fresh wrong answer): for a chat model such as SmolLM2-Instruct.
    ChatSums,
}

impl Task {
    /// For reports: what the task is.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Sums => "two-digit addition with a short chain of thought",
            Self::ChatSums => {
                "one-digit sums asked in ChatML, answered as `a+b=s.` (the rejected answer off by \
                 one or two)"
            }
        }
    }
}

/// Writes `train.jsonl` (`train` pairs) and `eval.jsonl` (`eval` held-out problems, none of
/// which is in the training set) for `task`.
pub fn write_data(
    task: Task,
    dir: &Path,
    train: usize,
    eval: usize,
    seed: u64,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rng = SplitMix64(seed);
    let digits = match task {
        Task::Sums => 100,
        Task::ChatSums => 10,
    };
    let mut all: Vec<Problem> = (0..digits)
        .flat_map(|a| (0..digits).map(move |b| Problem { a, b }))
        .collect();
    // Fisher–Yates, seeded: the same split on every machine.
    for i in (1..all.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        all.swap(i, j);
    }
    anyhow::ensure!(
        eval < all.len() && (task == Task::ChatSums || train + eval <= all.len()),
        "the task has {} problems: {eval} held out and {train} to train on do not fit",
        all.len()
    );
    let (held_out, rest) = all.split_at(eval);
    let train_problems: Vec<Problem> = rest.iter().copied().cycle().take(train).collect();
    for (name, problems) in [
        ("eval.jsonl", held_out),
        ("train.jsonl", &train_problems[..]),
    ] {
        let path = dir.join(name);
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        for &p in problems {
            let line = match task {
                Task::Sums => p.json(),
                Task::ChatSums => chat_sum_json(p, &mut rng),
            };
            writeln!(out, "{line}")?;
        }
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Task, write_data};

    fn rows(path: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn chat_sums_hold_out_problems_never_trained_on_and_cycle_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        write_data(Task::ChatSums, dir.path(), 150, 32, 7).unwrap();
        let (eval, train) = (
            rows(&dir.path().join("eval.jsonl")),
            rows(&dir.path().join("train.jsonl")),
        );
        assert_eq!((eval.len(), train.len()), (32, 150));
        let held: std::collections::HashSet<_> = eval.iter().map(|r| r["prompt"].clone()).collect();
        assert!(train.iter().all(|r| !held.contains(&r["prompt"])));
        for r in eval.iter().chain(&train) {
            let answer = r["answer"].as_str().unwrap();
            assert!(
                r["prompt"]
                    .as_str()
                    .unwrap()
                    .starts_with("<|im_start|>user\nWhat is ")
            );
            assert!(
                r["chosen"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("={answer}.")),
                "{r}"
            );
            assert_ne!(r["chosen"], r["rejected"], "{r}");
        }
        // The 68 problems left are taken in turn: the 69th pair repeats the first problem.
        assert_eq!(train[68]["prompt"], train[0]["prompt"]);
        // Two-digit sums keep their limit: no problem is trained on twice.
        assert!(write_data(Task::Sums, dir.path(), 9_990, 32, 7).is_err());
    }
}
