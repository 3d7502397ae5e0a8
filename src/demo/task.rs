//! The demo's synthetic task: two-digit addition with a short chain of thought and a gold answer
//! per prompt, as preference pairs (the right answer against the carry mishandled), and the
//! small model that learns it.

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

/// Writes `train.jsonl` (`train` pairs) and `eval.jsonl` (`eval` held-out problems, none of
/// which is in the training set) for two-digit addition.
pub fn write_data(dir: &Path, train: usize, eval: usize, seed: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rng = SplitMix64(seed);
    let mut all: Vec<Problem> = (0..100)
        .flat_map(|a| (0..100).map(move |b| Problem { a, b }))
        .collect();
    // Fisher–Yates, seeded: the same split on every machine.
    for i in (1..all.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        all.swap(i, j);
    }
    anyhow::ensure!(
        train + eval <= all.len(),
        "the task has {} problems",
        all.len()
    );
    let (held_out, rest) = all.split_at(eval);
    for (name, problems) in [("eval.jsonl", held_out), ("train.jsonl", &rest[..train])] {
        let path = dir.join(name);
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        for p in problems {
            writeln!(out, "{}", p.json())?;
        }
        out.flush()?;
    }
    Ok(())
}
