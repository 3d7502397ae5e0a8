//! Iterative RPO (arXiv 2404.19733, REFERENCE.md): each iteration samples K completions of the
//! training prompts from the current model, scores them by exact match against the gold answer,
//! pairs a correct completion (winner) with a wrong one (loser), and trains DPO + NLL on those
//! pairs from the current model, which is also the reference. The next iteration starts from the
//! result. Every iteration is its own run, whose config names the iteration and the run before it.

use std::io::Write as _;
use std::path::Path;

use candle_core::Device;
use redline_core::catalogue;

use crate::config::{TrainArgs, TrainConfig};
use crate::data::{PairTokenizer, load_pairs};
use crate::error::{Result, TrainError};
use crate::generate::{Sampling, final_answer, generation_metrics, sample_completions};
use crate::model::{Decoder, load_weights, reference_model, write_model_folder};
use crate::rng::SplitMix64;
use crate::train::{Checkpoints, Outcome, train};

/// How the iterations sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub iterations: usize,
    /// Completions sampled per prompt (the paper samples 30).
    pub samples: usize,
    /// Training prompts sampled per iteration, from the start of the training data.
    pub prompts: usize,
    pub temperature: f64,
}

/// What one iteration did.
#[derive(Debug, Clone)]
pub struct Iteration {
    pub iteration: usize,
    pub run_id: String,
    /// Prompts with both a correct and a wrong completion among the samples.
    pub pairs: usize,
    /// Exact match on the held-out prompts after the iteration.
    pub score: f64,
    pub outcome: Outcome,
    /// What the run left undelivered and how to send it, for people (see [`crate::train::leftover`]).
    pub leftover: Option<String>,
}

/// Where a run sits in a series of runs, recorded in its config as `iterative`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lineage {
    pub iteration: usize,
    /// How many iterations the series has.
    pub of: usize,
    pub previous_run: Option<String>,
    /// Training pairs this iteration sampled.
    pub pairs: usize,
    pub samples_per_prompt: usize,
}

/// The report: the starting model's score, then each iteration's.
#[derive(Debug, Clone)]
pub struct Report {
    pub start_score: f64,
    pub iterations: Vec<Iteration>,
}

/// Runs `plan.iterations` iterations from `base` (the settings every iteration shares: model,
/// data, loss, β, learning rate, server, run id as the stem of the iterations' run ids).
pub fn train_iterative(base: &TrainArgs, plan: &Plan, now: u64) -> Result<Report> {
    if plan.iterations == 0 || plan.samples < 2 || plan.prompts == 0 {
        return Err(TrainError::Config(
            "iterative: needs at least 1 iteration, 2 samples per prompt and 1 prompt".into(),
        ));
    }
    // Resolving the base checks every shared setting once, before any sampling.
    let first = TrainConfig::resolve(base.clone(), now)?;
    let eval_data = first.eval_data.clone().ok_or_else(|| {
        TrainError::Config(
            "iterative: needs eval_data with gold answers, to score each iteration".into(),
        )
    })?;
    let root = first.output_dir.clone();
    let mut model = first.model.clone();
    // Each model is loaded once: it is scored, then sampled by the next iteration.
    let mut policy = Policy::open(&model, &first)?;
    let start_score = policy.score(&eval_data, &first)?;
    tracing::info!(
        iteration = 0,
        score = start_score,
        "the starting model's held-out score"
    );
    let mut iterations: Vec<Iteration> = Vec::new();
    for i in 1..=plan.iterations {
        let dir = root.join(format!("iteration-{i}"));
        let pairs_path = dir.join("pairs.jsonl");
        let pairs = policy.write_pairs(&first, plan, i, &pairs_path)?;
        if pairs < first.batch_size {
            return Err(TrainError::Data(format!(
                "iteration {i}: only {pairs} prompts had both a right and a wrong completion, fewer \
                 than batch_size {}: sample more prompts or more completions",
                first.batch_size
            )));
        }
        let run_id = format!("{}-iter{i}", first.run_id);
        let mut tags = first.tags.clone();
        tags.extend(["iterative".to_owned(), format!("iteration-{i}")]);
        // The run evaluates at its last step at least, so its page shows the iteration's score.
        let steps = first
            .max_steps
            .unwrap_or(first.epochs * (pairs / (first.batch_size * first.grad_accum)).max(1));
        let eval_every = Some(match first.eval_every {
            0 => steps,
            every => every,
        });
        let args = TrainArgs {
            model: Some(model.clone()),
            // The current model is its own reference.
            reference: None,
            train_data: Some(pairs_path),
            eval_data: Some(eval_data.clone()),
            eval_every,
            nll_alpha: Some(base.nll_alpha.unwrap_or(1.0)),
            output_dir: Some(dir.join("run")),
            checkpoint_every: Some(0),
            run_id: Some(run_id.clone()),
            run_name: Some(format!(
                "{} · iteration {i} of {}",
                first.run_name, plan.iterations
            )),
            tags: Some(tags),
            ..base.clone()
        };
        let mut config = TrainConfig::resolve(args, now)?;
        config.lineage = Some(Lineage {
            iteration: i,
            of: plan.iterations,
            previous_run: iterations.last().map(|p| p.run_id.clone()),
            pairs,
            samples_per_prompt: plan.samples,
        });
        let outcome = train(&config)?;
        let leftover = crate::train::leftover(&config, &outcome);
        let next = dir.join("model");
        export_run(&model, &config, outcome.last_step, &next)?;
        model = next;
        policy = Policy::open(&model, &first)?;
        let score = policy.score(&eval_data, &first)?;
        tracing::info!(iteration = i, pairs, score, "iteration trained and scored");
        iterations.push(Iteration {
            iteration: i,
            run_id,
            pairs,
            score,
            outcome,
            leftover,
        });
    }
    Ok(Report {
        start_score,
        iterations,
    })
}

/// A model loaded for generation, with its tokenizer.
struct Policy {
    model: Decoder,
    tok: PairTokenizer,
    eos: Option<u32>,
    device: Device,
}

impl Policy {
    fn open(dir: &Path, cfg: &TrainConfig) -> Result<Self> {
        let device = cfg.device.open()?;
        let loaded = load_weights(dir, &device)?;
        let eos = loaded.config.eos_token_id;
        Ok(Self {
            model: reference_model(&loaded.config, &loaded.tensors, &device)?,
            tok: PairTokenizer::for_model(dir, loaded.config.family, eos)?,
            eos,
            device,
        })
    }

    /// Samples the training prompts and writes the winner/loser pairs; returns how many.
    fn write_pairs(&self, cfg: &TrainConfig, plan: &Plan, i: usize, to: &Path) -> Result<usize> {
        let (rows, _) = load_pairs(&cfg.train_data, &self.tok, cfg.max_length)?;
        let rows: Vec<_> = rows
            .into_iter()
            .filter(|r| r.answer.is_some())
            .take(plan.prompts)
            .collect();
        if rows.is_empty() {
            return Err(TrainError::Data(format!(
                "{}: iterative training needs rows with an `answer` to score samples against",
                cfg.train_data.display()
            )));
        }
        let prompts: Vec<&[u32]> = rows.iter().map(|r| r.prompt.as_slice()).collect();
        let sampling = Sampling {
            temperature: plan.temperature,
            top_p: 1.0,
            max_new_tokens: cfg.sampling.max_new_tokens,
        };
        let seed = cfg.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let samples = sample_completions(
            &self.model,
            &prompts,
            plan.samples,
            &sampling,
            self.eos,
            seed,
        )?;
        std::fs::create_dir_all(to.parent().unwrap_or(Path::new(".")))
            .map_err(|e| TrainError::io(to, e))?;
        let mut out =
            std::io::BufWriter::new(std::fs::File::create(to).map_err(|e| TrainError::io(to, e))?);
        let mut rng = SplitMix64(seed);
        // As the paper: a random winner among the right ones, a random loser among the wrong.
        let pick = |v: &[String], rng: &mut SplitMix64| {
            v[(rng.next_u64() % v.len() as u64) as usize].clone()
        };
        let mut written = 0;
        for (row, completions) in rows.iter().zip(samples) {
            let gold = final_answer(row.answer.as_deref().unwrap_or_default());
            let mut right = Vec::new();
            let mut wrong = Vec::new();
            for c in completions {
                let text = self.tok.decode(&c)?;
                if text.trim().is_empty() {
                    continue;
                }
                if final_answer(&text) == gold {
                    right.push(text);
                } else {
                    wrong.push(text);
                }
            }
            if right.is_empty() || wrong.is_empty() {
                continue;
            }
            let line = serde_json::json!({
                "prompt": self.tok.decode(&row.prompt)?,
                "chosen": pick(&right, &mut rng),
                "rejected": pick(&wrong, &mut rng),
                "answer": row.answer,
            });
            writeln!(out, "{line}").map_err(|e| TrainError::io(to, e))?;
            written += 1;
        }
        out.flush().map_err(|e| TrainError::io(to, e))?;
        Ok(written)
    }

    /// Exact match on the held-out rows, decoded as `cfg` says.
    fn score(&self, eval_data: &Path, cfg: &TrainConfig) -> Result<f64> {
        let (pairs, _) = load_pairs(eval_data, &self.tok, cfg.max_length)?;
        let prompts = &pairs[..cfg.gen_prompts.clamp(1, pairs.len())];
        let m = generation_metrics(
            &self.model,
            &self.tok,
            prompts,
            &cfg.sampling,
            cfg.top_k.max(1),
            self.eos,
            cfg.seed,
            &self.device,
        )?;
        m.get(catalogue::EVAL_SCORE.name).copied().ok_or_else(|| {
            TrainError::Data(format!(
                "{}: the held-out rows need an `answer` to be scored",
                eval_data.display()
            ))
        })
    }
}

/// The model folder a finished run leaves: `from`'s configuration and tokenizer with the
/// weights of the checkpoint a stop kept, else of its last step.
fn export_run(from: &Path, run: &TrainConfig, last_step: usize, to: &Path) -> Result<()> {
    let checkpoints = Checkpoints::of_run(&run.output_dir);
    let step = checkpoints.best()?.unwrap_or(last_step);
    write_model_folder(from, &checkpoints.weights(step), to)
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::path::PathBuf;

    use super::*;

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama")
    }

    fn write_task(dir: &Path) -> (PathBuf, PathBuf) {
        let mut rows = String::new();
        for (q, right, wrong) in [("1+1", 2, 3), ("2+2", 4, 5)] {
            let _ = writeln!(
                rows,
                "{{\"prompt\":\"Q: {q}=\",\"chosen\":\" {right}.\",\"rejected\":\" {wrong}.\",\"answer\":\"{right}\"}}"
            );
        }
        let train = dir.join("train.jsonl");
        let eval = dir.join("eval.jsonl");
        std::fs::write(&train, rows.repeat(16)).unwrap();
        std::fs::write(&eval, &rows).unwrap();
        (train, eval)
    }

    /// A short supervised warm-up teaches the two answers, so sampling hot gives both right and
    /// wrong completions; two iterations then pair and train on them.
    #[test]
    fn iterations_pair_right_with_wrong_samples_and_train_from_the_last_model() {
        let out = tempfile::tempdir().unwrap();
        let (train_data, eval_data) = write_task(out.path());
        let base = TrainArgs {
            train_data: Some(train_data),
            eval_data: Some(eval_data),
            batch_size: Some(4),
            schedule: Some(crate::optim::Schedule::Constant),
            gen_temperature: Some(0.0),
            gen_max_tokens: Some(3),
            gen_prompts: Some(2),
            ..TrainArgs::default()
        };
        let warm = TrainArgs {
            model: Some(fixture()),
            lr: Some(1e-2),
            beta: Some(0.001),
            nll_alpha: Some(1.0),
            max_steps: Some(25),
            output_dir: Some(out.path().join("warm")),
            run_id: Some("warm".into()),
            ..base.clone()
        };
        let warm = TrainConfig::resolve(warm, 0).unwrap();
        let done = train(&warm).unwrap();
        let warmed = out.path().join("warmed");
        export_run(&fixture(), &warm, done.last_step, &warmed).unwrap();

        let plan = Plan {
            iterations: 2,
            samples: 8,
            prompts: 32,
            temperature: 1.5,
        };
        let args = TrainArgs {
            model: Some(warmed),
            lr: Some(1e-3),
            max_steps: Some(2),
            output_dir: Some(out.path().join("iterative")),
            run_id: Some("it".into()),
            ..base
        };
        let report = train_iterative(&args, &plan, 0).unwrap();
        assert_eq!(report.iterations.len(), 2);
        assert!((0.0..=1.0).contains(&report.start_score));
        for it in &report.iterations {
            assert_eq!(it.run_id, format!("it-iter{}", it.iteration));
            assert!(it.pairs >= 4, "{it:?}");
            assert_eq!(
                it.outcome.status,
                redline_core::wire::FinalStatus::Completed
            );
            assert!((0.0..=1.0).contains(&it.score));
            let dir = out
                .path()
                .join(format!("iterative/iteration-{}", it.iteration));
            assert!(dir.join("model/model.safetensors").is_file());
            assert!(dir.join("model/tokenizer.json").is_file());
            let pairs = std::fs::read_to_string(dir.join("pairs.jsonl")).unwrap();
            for line in pairs.lines() {
                let row: serde_json::Value = serde_json::from_str(line).unwrap();
                let gold = row["answer"].as_str().unwrap();
                assert_eq!(final_answer(row["chosen"].as_str().unwrap()), gold, "{row}");
                assert_ne!(
                    final_answer(row["rejected"].as_str().unwrap()),
                    gold,
                    "{row}"
                );
            }
        }
    }

    #[test]
    fn a_plan_without_samples_to_compare_is_refused() {
        let plan = Plan {
            iterations: 1,
            samples: 1,
            prompts: 8,
            temperature: 1.0,
        };
        let err = train_iterative(&TrainArgs::default(), &plan, 0).unwrap_err();
        assert!(err.to_string().contains("2 samples per prompt"), "{err}");
    }
}
