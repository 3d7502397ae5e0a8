//! The training loop: data order, gradient accumulation, the optimizer step, signals applied at
//! step boundaries, evaluation, checkpoints and exact resume, and reporting.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use redline_core::hparams::Steerable;
use redline_core::wire::{Signal, SignalKind};
use serde::{Deserialize, Serialize};

use crate::config::{Objective, TrainConfig};
use crate::cut::{CutExample, cut_forward, load_cut_rows};
use crate::data::{Pair, PairTokenizer, collate, load_pairs};
use crate::error::{Result, TrainError};
use crate::generate::generation_metrics;
use crate::losses::LossKind;
use crate::model::{
    Decoder, checkpoint_tensors, load_weights, reference_model, relayout, trainable_model,
};
use crate::optim::{AdamW, clip_coefficient, grad_norm};
use crate::reporter::{Delivery, Ending, Reporter, RunRecord, ServerTarget};
use crate::rng::SplitMix64;
use crate::step::{Reference, StepResult, StepSettings, forward, reference_logps};

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: &'static str,
    pub last_step: usize,
    pub message: String,
    /// What reached the server; `None` for an offline run.
    pub delivery: Option<Delivery>,
}

/// What a checkpoint records beside the weights and optimizer moments.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct TrainerState {
    run_id: String,
    step: usize,
    beta: f64,
    nll_alpha: f64,
    lr_scale: f64,
    seed: u64,
}

pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        other => {
            let ordinal = other
                .strip_prefix("cuda")
                .map(|r| r.trim_start_matches(':'))
                .unwrap_or_default();
            let ordinal = if ordinal.is_empty() {
                0
            } else {
                ordinal.parse().map_err(|_| {
                    TrainError::Config(format!("device: bad GPU number in {other:?}"))
                })?
            };
            Device::new_cuda(ordinal).map_err(|e| {
                TrainError::Config(format!(
                    "device {other}: {e} (build with --features cuda on a machine with a GPU)"
                ))
            })
        }
    }
}

/// The order of pairs in `epoch`: a seeded shuffle, the same on every machine.
fn epoch_order(n: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = SplitMix64::stream(seed, epoch as u64);
        for i in (1..n).rev() {
            order.swap(i, rng.below(i + 1));
        }
    }
    order
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A run's `checkpoints/` folder: `step-N/` per checkpoint, `latest.json` (the newest complete
/// one) and `best.json` (the one a stop asked to keep).
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
}

impl Checkpoints {
    /// The checkpoints of the run written to `output_dir`.
    pub fn of_run(output_dir: &Path) -> Self {
        Self {
            dir: output_dir.join("checkpoints"),
        }
    }

    fn step_dir(&self, step: usize) -> PathBuf {
        self.dir.join(format!("step-{step}"))
    }

    /// The weights of the checkpoint of `step`, a model folder's `model.safetensors`.
    pub fn weights(&self, step: usize) -> PathBuf {
        self.step_dir(step).join("model.safetensors")
    }

    /// The step a stop kept as best, if one did.
    pub fn best(&self) -> Option<usize> {
        Self::step_in(&self.dir.join("best.json"))
    }

    fn step_in(file: &Path) -> Option<usize> {
        let text = std::fs::read_to_string(file).ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?["step"]
            .as_u64()
            .map(|s| s as usize)
    }

    fn save(&self, varmap: &VarMap, opt: &AdamW, state: &TrainerState) -> Result<PathBuf> {
        let dir = self.step_dir(state.step);
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        // Hugging Face names and layouts: a checkpoint is also a model folder's weights.
        candle_core::safetensors::save(&checkpoint_tensors(varmap)?, self.weights(state.step))?;
        candle_core::safetensors::save(&opt.state()?, dir.join("optimizer.safetensors"))?;
        let json =
            serde_json::to_string_pretty(state).map_err(|e| TrainError::Data(e.to_string()))?;
        std::fs::write(dir.join("trainer_state.json"), json)
            .map_err(|e| TrainError::io(&dir, e))?;
        // Written last, and atomically: a checkpoint is only "latest" once it is complete, and a
        // crash while writing the pointer must not lose the previous one.
        let latest = self.dir.join("latest.json");
        crate::atomic::write(
            &latest,
            serde_json::json!({ "step": state.step }).to_string(),
        )
        .map_err(|e| TrainError::io(&latest, e))?;
        Ok(dir)
    }

    /// The newest complete checkpoint.
    pub fn latest(&self) -> Option<usize> {
        Self::step_in(&self.dir.join("latest.json"))
    }

    fn restore(
        &self,
        step: usize,
        varmap: &VarMap,
        opt: &mut AdamW,
        device: &Device,
    ) -> Result<TrainerState> {
        let dir = self.step_dir(step);
        let text = std::fs::read_to_string(dir.join("trainer_state.json"))
            .map_err(|e| TrainError::io(&dir, e))?;
        let state: TrainerState = serde_json::from_str(&text)
            .map_err(|e| TrainError::Config(format!("{}: {e}", dir.display())))?;
        let weights = candle_core::safetensors::load(self.weights(step), device)?;
        for (name, var) in varmap.data().lock().expect("varmap lock").iter() {
            let t = weights.get(name).ok_or_else(|| {
                TrainError::Config(format!("{}: no tensor {name}", dir.display()))
            })?;
            var.set(&relayout(name, t)?)?;
        }
        let moments = candle_core::safetensors::load(dir.join("optimizer.safetensors"), device)?;
        opt.load_state(&moments, state.step)?;
        Ok(state)
    }

    /// The newest checkpoint at or before `step`, recorded as the one to keep; `None` when
    /// there is none. An I/O error is an error, not "no checkpoint": the caller would otherwise
    /// report the starting model as the best.
    fn mark_best(&self, step: usize) -> Result<Option<usize>> {
        let io = |e| TrainError::io(&self.dir, e);
        let mut best = None;
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            if let Some(s) = name
                .to_str()
                .and_then(|n| n.strip_prefix("step-"))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|s| *s <= step)
            {
                best = best.max(Some(s));
            }
        }
        let Some(best) = best else { return Ok(None) };
        let path = self.dir.join("best.json");
        let json = serde_json::json!({ "step": best, "path": self.step_dir(best) }).to_string();
        crate::atomic::write(&path, json).map_err(|e| TrainError::io(&path, e))?;
        Ok(Some(best))
    }
}

/// Mean of each metric over micro-batches.
fn average(maps: &[BTreeMap<String, f64>]) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for m in maps {
        for (k, v) in m {
            *out.entry(k.clone()).or_default() += v / maps.len() as f64;
        }
    }
    out
}

fn add_grads(
    total: Option<GradStore>,
    next: GradStore,
    vars: &[candle_core::Var],
) -> Result<GradStore> {
    let Some(mut total) = total else {
        return Ok(next);
    };
    for v in vars {
        if let Some(g) = next.get(v.as_tensor()) {
            let sum = match total.remove(v.as_tensor()) {
                Some(t) => (t + g)?,
                None => g.clone(),
            };
            total.insert(v.as_tensor(), sum);
        }
    }
    Ok(total)
}

struct Run<'a> {
    cfg: &'a TrainConfig,
    policy: Decoder,
    reference: Decoder,
    varmap: VarMap,
    opt: AdamW,
    settings: StepSettings,
    lr_scale: f64,
    pairs: Vec<Pair>,
    /// Reference log-likelihoods (chosen, rejected) of each training pair, when precomputed.
    ref_logps: Option<Vec<[f32; 2]>>,
    eval_pairs: Vec<Pair>,
    /// The rows of a CUT run (then `pairs` is empty), and its held-out rows.
    cut_rows: Vec<CutExample>,
    cut_eval: Vec<CutExample>,
    tokenizer: PairTokenizer,
    eos_id: Option<u32>,
    pad_id: u32,
    device: Device,
    checkpoints: Checkpoints,
}

impl Run<'_> {
    fn state(&self, step: usize) -> TrainerState {
        TrainerState {
            run_id: self.cfg.run_id.clone(),
            step,
            beta: self.settings.beta,
            nll_alpha: self.settings.nll_alpha,
            lr_scale: self.lr_scale,
            seed: self.cfg.seed,
        }
    }

    /// Training examples: pairs, or CUT rows.
    fn examples(&self) -> usize {
        self.pairs.len().max(self.cut_rows.len())
    }

    fn has_eval(&self) -> bool {
        !self.eval_pairs.is_empty() || !self.cut_eval.is_empty()
    }

    /// Indices into the examples of each micro-batch of `step`.
    fn micro_batches(&self, step: usize) -> Vec<Vec<usize>> {
        let per_step = self.cfg.batch_size * self.cfg.grad_accum;
        let steps_per_epoch = (self.examples() / per_step).max(1);
        let epoch = (step - 1) / steps_per_epoch;
        let within = (step - 1) % steps_per_epoch;
        let order = epoch_order(self.examples(), self.cfg.seed, epoch, self.cfg.shuffle);
        (0..self.cfg.grad_accum)
            .map(|m| {
                let start = (within * per_step + m * self.cfg.batch_size) % self.examples();
                (0..self.cfg.batch_size)
                    .map(|i| order[(start + i) % order.len()])
                    .collect()
            })
            .collect()
    }

    fn preference_forward(&self, micro: &[usize], tokens: &mut f64) -> Result<StepResult> {
        let pairs: Vec<Pair> = micro.iter().map(|&i| self.pairs[i].clone()).collect();
        let batch = collate(&pairs, self.cfg.max_length, self.pad_id, &self.device)?;
        *tokens += batch.input_ids.elem_count() as f64;
        let precomputed = match &self.ref_logps {
            Some(all) => {
                let rows: Vec<f32> = (0..2)
                    .flat_map(|side| micro.iter().map(move |&i| all[i][side]))
                    .collect();
                Some(Tensor::from_vec(rows, 2 * micro.len(), &self.device)?)
            }
            None => None,
        };
        let reference = precomputed
            .as_ref()
            .map_or(Reference::Model(&self.reference), Reference::Precomputed);
        Ok(forward(&self.policy, reference, &batch, &self.settings)?)
    }

    fn train_step(&mut self, step: usize, total: usize) -> Result<BTreeMap<String, f64>> {
        let started = Instant::now();
        let vars = self.opt.vars();
        let mut grads = None;
        let mut metrics = Vec::new();
        let mut tokens = 0.0;
        for micro in self.micro_batches(step) {
            let result = if let Objective::Cut(cut) = self.cfg.objective {
                let rows: Vec<CutExample> =
                    micro.iter().map(|&i| self.cut_rows[i].clone()).collect();
                tokens += rows
                    .iter()
                    .map(|r| (r.plain.len() + r.judged.len()) as f64)
                    .sum::<f64>();
                cut_forward(&self.policy, &rows, &cut, self.settings.top_k, self.pad_id)?
            } else {
                self.preference_forward(&micro, &mut tokens)?
            };
            let scaled = (result.loss / self.cfg.grad_accum as f64)?;
            grads = Some(add_grads(grads, scaled.backward()?, &vars)?);
            metrics.push(result.metrics);
        }
        let grads = grads.expect("grad_accum ≥ 1");
        let norm = grad_norm(&grads, &vars)?;
        let scale = if self.cfg.max_grad_norm > 0.0 {
            clip_coefficient(norm, self.cfg.max_grad_norm)
        } else {
            1.0
        };
        let lr = self.cfg.lr
            * self
                .cfg
                .schedule
                .factor(step - 1, self.cfg.warmup_steps, total)
            * self.lr_scale;
        self.opt.step(&grads, lr, scale)?;
        let mut m = average(&metrics);
        m.insert("grad_norm".into(), norm);
        m.insert("learning_rate".into(), lr);
        m.insert("lr_scale".into(), self.lr_scale);
        let seconds = started.elapsed().as_secs_f64();
        // `average` took the mean over micro-batches; the step spent their sum.
        if let Some(t) = m.get_mut("time/topk_seconds") {
            *t *= self.cfg.grad_accum as f64;
        }
        m.insert("time/step_seconds".into(), seconds);
        m.insert("tokens_per_second".into(), tokens / seconds.max(1e-9));
        Ok(m)
    }

    /// The eval pairs' metrics under `eval/`, and the generation metrics on their prompts.
    fn evaluate(&self, step: usize) -> Result<BTreeMap<String, f64>> {
        let mut all = Vec::new();
        if let Objective::Cut(cut) = self.cfg.objective {
            for chunk in self.cut_eval.chunks(self.cfg.batch_size) {
                all.push(
                    cut_forward(&self.policy, chunk, &cut, self.settings.top_k, self.pad_id)?
                        .metrics,
                );
            }
        }
        for chunk in self.eval_pairs.chunks(self.cfg.batch_size) {
            if self.settings.loss.uses_batch_statistics() && chunk.len() < 2 {
                continue;
            }
            let batch = collate(chunk, self.cfg.max_length, self.pad_id, &self.device)?;
            let reference = Reference::Model(&self.reference);
            all.push(forward(&self.policy, reference, &batch, &self.settings)?.metrics);
        }
        // The settings and timings are the training ones: only measurements get an eval/ twin.
        let mut out: BTreeMap<String, f64> = average(&all)
            .into_iter()
            .filter(|(k, _)| k != "beta" && k != "nll_alpha" && !k.starts_with("time/"))
            .map(|(k, v)| (format!("eval/{k}"), v))
            .collect();
        let prompts = &self.eval_pairs[..self.cfg.gen_prompts.min(self.eval_pairs.len())];
        if !prompts.is_empty() {
            out.extend(generation_metrics(
                &self.policy,
                &self.tokenizer,
                prompts,
                &self.cfg.sampling,
                self.settings.top_k.max(1),
                self.eos_id,
                self.cfg.seed ^ step as u64,
                &self.device,
            )?);
        }
        Ok(out)
    }

    /// Applies a signal at the boundary before `next_step`; returns the stop reason for a stop.
    fn apply(
        &mut self,
        s: &Signal,
        next_step: usize,
        reporter: &Reporter,
    ) -> Result<Option<String>> {
        let done = next_step - 1;
        match s.kind {
            SignalKind::SetHparam => {
                let name = s.name.as_deref().unwrap_or_default();
                match steer(s, self.cfg.objective) {
                    Ok((h, value)) => {
                        match h {
                            Steerable::Beta => self.settings.beta = value,
                            Steerable::NllAlpha => self.settings.nll_alpha = value,
                            Steerable::LrScale => self.lr_scale = value,
                        }
                        eprintln!("redline: step {next_step}: {h} = {value} ({})", s.reason);
                        reporter.ack(s.id, next_step);
                    }
                    Err(why) => {
                        eprintln!(
                            "redline: step {next_step}: refused signal {} to set {name}: {why}",
                            s.id
                        );
                        reporter.refuse(s.id, next_step, &why);
                    }
                }
                Ok(None)
            }
            SignalKind::Checkpoint => {
                let dir = self
                    .checkpoints
                    .save(&self.varmap, &self.opt, &self.state(done))?;
                eprintln!(
                    "redline: checkpoint at step {done} in {} ({})",
                    dir.display(),
                    s.reason
                );
                reporter.ack(s.id, done);
                Ok(None)
            }
            SignalKind::Stop => {
                reporter.ack(s.id, done);
                Ok(Some(format!("stop signal {}: {}", s.id, s.reason)))
            }
        }
    }
}

/// What a `set_hparam` signal sets, or why this run cannot apply it. The server refuses names
/// and values outside [`Steerable`] already; this also guards against an older server, and knows
/// what only the trainer knows: which settings the run's objective uses.
fn steer(s: &Signal, objective: Objective) -> std::result::Result<(Steerable, f64), String> {
    let h = Steerable::parse(s.name.as_deref().unwrap_or_default())?;
    let value = h.check(s.value.ok_or_else(|| format!("no value given for {h}"))?)?;
    if matches!(objective, Objective::Cut(_)) && h != Steerable::LrScale {
        return Err(format!(
            "{h} does not apply to a CUT run: its loss has no {h}; only lr_scale steers it"
        ));
    }
    Ok((h, value))
}

/// Loads models and data and sets up the optimizer; returns the run and its number of steps.
fn prepare(cfg: &TrainConfig) -> Result<(Run<'_>, usize)> {
    let device = device(&cfg.device)?;
    let loaded = load_weights(&cfg.model, &device)?;
    let reference_weights = if cfg.reference == cfg.model {
        None
    } else {
        Some(load_weights(&cfg.reference, &device)?)
    };
    let reference = match &reference_weights {
        Some(r) => reference_model(&r.config, &r.tensors, &device)?,
        None => reference_model(&loaded.config, &loaded.tensors, &device)?,
    }
    .with_compute_dtype(cfg.dtype);
    let (policy, varmap) = trainable_model(&loaded.config, Some(&loaded.tensors), &device)?;
    let policy = policy.with_compute_dtype(cfg.dtype);
    drop(reference_weights);
    let tok =
        PairTokenizer::for_model(&cfg.model, loaded.config.family, loaded.config.eos_token_id)?;
    let eval_on = |p: &Option<PathBuf>| p.as_ref().filter(|_| cfg.eval_every > 0).cloned();
    let (mut pairs, mut eval_pairs, mut cut_rows, mut cut_eval) = (vec![], vec![], vec![], vec![]);
    let (examples, dropped) = if let Objective::Cut(_) = cfg.objective {
        let (rows, dropped) = load_cut_rows(&cfg.train_data, &tok, cfg.max_length)?;
        cut_rows = rows;
        if let Some(p) = eval_on(&cfg.eval_data) {
            cut_eval = load_cut_rows(&p, &tok, cfg.max_length)?.0;
        }
        (cut_rows.len(), dropped)
    } else {
        let (rows, dropped) = load_pairs(&cfg.train_data, &tok, cfg.max_length)?;
        pairs = rows;
        if let Some(p) = eval_on(&cfg.eval_data) {
            eval_pairs = load_pairs(&p, &tok, cfg.max_length)?.0;
        }
        (pairs.len(), dropped)
    };
    if dropped > 0 {
        eprintln!(
            "redline: dropped {dropped} rows whose prompt leaves no room within max_length {}",
            cfg.max_length
        );
    }
    if examples < cfg.batch_size {
        return Err(TrainError::Data(format!(
            "{}: {examples} rows, fewer than batch_size {}",
            cfg.train_data.display(),
            cfg.batch_size
        )));
    }
    let pad_id = loaded
        .config
        .pad_token_id
        .or(loaded.config.eos_token_id)
        .unwrap_or(0);
    let total = cfg
        .max_steps
        .unwrap_or(cfg.epochs * (examples / (cfg.batch_size * cfg.grad_accum)).max(1));
    let opt = AdamW::new(&varmap, cfg.weight_decay)?;
    let run = Run {
        cfg,
        policy,
        reference,
        varmap,
        opt,
        settings: StepSettings {
            // CUT steps take their settings from the objective; this one is for pairs.
            loss: cfg.objective.preference().unwrap_or(LossKind::Sigmoid),
            beta: cfg.beta,
            nll_alpha: cfg.nll_alpha,
            top_k: cfg.top_k,
        },
        lr_scale: 1.0,
        ref_logps: None,
        pairs,
        eval_pairs,
        cut_rows,
        cut_eval,
        tokenizer: tok,
        eos_id: loaded.config.eos_token_id,
        pad_id,
        device: device.clone(),
        checkpoints: Checkpoints::of_run(&cfg.output_dir),
    };
    Ok((run, total))
}

impl Run<'_> {
    /// Runs the reference over every training pair once, so steps need no reference pass.
    fn precompute_reference(&mut self) -> Result<()> {
        let mut all = Vec::with_capacity(self.pairs.len());
        for chunk in self.pairs.chunks(self.cfg.batch_size) {
            let batch = collate(chunk, self.cfg.max_length, self.pad_id, &self.device)?;
            let rows: Vec<f32> = reference_logps(&self.reference, &batch)?.to_vec1()?;
            let n = chunk.len();
            all.extend((0..n).map(|i| [rows[i], rows[n + i]]));
        }
        self.ref_logps = Some(all);
        Ok(())
    }

    /// Restores the latest checkpoint of this run, if any; returns the first step to run.
    fn resume(&mut self) -> Result<usize> {
        let Some(step) = self.checkpoints.latest() else {
            return Ok(1);
        };
        let state = self
            .checkpoints
            .restore(step, &self.varmap, &mut self.opt, &self.device)?;
        if state.run_id != self.cfg.run_id {
            return Err(TrainError::Config(format!(
                "{} holds run {}, not {}: use another output_dir or the same run_id",
                self.cfg.output_dir.display(),
                state.run_id,
                self.cfg.run_id
            )));
        }
        (self.settings.beta, self.settings.nll_alpha, self.lr_scale) =
            (state.beta, state.nll_alpha, state.lr_scale);
        eprintln!(
            "redline: resuming run {} after step {step}",
            self.cfg.run_id
        );
        Ok(step + 1)
    }

    /// Writes the final checkpoint and says how the run ended.
    fn conclude(
        &self,
        stopped: Option<(usize, String, Option<i64>)>,
        total: usize,
    ) -> Result<Outcome> {
        let Some((last, reason, keep)) = stopped else {
            self.checkpoints
                .save(&self.varmap, &self.opt, &self.state(total))?;
            return Ok(Outcome {
                status: "completed",
                last_step: total,
                message: format!("completed {total} steps"),
                delivery: None,
            });
        };
        self.checkpoints
            .save(&self.varmap, &self.opt, &self.state(last))?;
        let kept = match keep {
            Some(k) => self.checkpoints.mark_best(k as usize)?,
            None => None,
        };
        let best = match (keep, kept) {
            (Some(k), Some(b)) => {
                format!("; checkpoint of step {b} kept as best (asked for step {k})")
            }
            (Some(k), None) => {
                format!("; no checkpoint at or before step {k}: the starting model is the best")
            }
            (None, _) => String::new(),
        };
        Ok(Outcome {
            status: "stopped",
            last_step: last,
            message: format!("stopped after step {last}: {reason}{best}"),
            delivery: None,
        })
    }
}

/// What a server is told about the run when it is created or resumed.
fn run_record(cfg: &TrainConfig) -> RunRecord {
    let mut create = serde_json::json!({
        "name": cfg.run_name, "project": cfg.project, "tags": cfg.tags, "config": cfg.to_json(),
    });
    if let Some(rules) = &cfg.rules {
        create["rules"] = serde_json::json!(rules);
    }
    RunRecord {
        run_id: cfg.run_id.clone(),
        server: cfg.server.clone(),
        create,
        ended: None,
    }
}

fn server_target(cfg: &TrainConfig, record: &RunRecord) -> Option<ServerTarget> {
    cfg.server.as_ref().map(|url| ServerTarget {
        url: url.clone(),
        token: cfg.token.clone(),
        run_id: cfg.run_id.clone(),
        run: record.create.clone(),
        finish_grace: cfg.finish_grace,
    })
}

/// Trains as configured; see [`Outcome`] for how it ended.
pub fn train(cfg: &TrainConfig) -> Result<Outcome> {
    let mut record = run_record(cfg);
    let (mut run, total) = prepare(cfg)?;
    let first = run.resume()?;
    // Before the first step: a refused token or run is found out now, not after the training it
    // would have lost.
    let mut reporter =
        Reporter::start(&cfg.output_dir, server_target(cfg, &record)).map_err(|e| match e {
            TrainError::Refused(why) => TrainError::Refused(format!("{why}; nothing was trained")),
            other => other,
        })?;
    record.write(&cfg.output_dir)?;
    if cfg.precompute_ref {
        let started = Instant::now();
        run.precompute_reference()?;
        eprintln!(
            "redline: reference log-probs of {} pairs precomputed in {:.1}s",
            run.pairs.len(),
            started.elapsed().as_secs_f64()
        );
    }
    let mut progress = Progress::new(total, first);
    let mut outcome = None;
    if first == 1 && cfg.eval_on_start && cfg.eval_every > 0 && run.has_eval() {
        // Step 0 is the starting model: no training metrics, only its evaluation.
        let device = run.device.clone();
        let metrics = device.with_context(|| run.evaluate(0))?;
        reporter.record(0, unix_now(), &metrics)?;
    }
    for step in first..=total {
        for s in reporter.take_signals() {
            if let Some(reason) = run.apply(&s, step, &reporter)? {
                outcome = Some((step - 1, reason, s.keep_step));
            }
        }
        if outcome.is_some() {
            break;
        }
        // Inside candle's CPU thread pool a step's parallel sections (matrix products, the fused
        // kernels) start on the calling pool thread instead of waking a worker and blocking on it.
        let device = run.device.clone();
        let mut metrics = device.with_context(|| run.train_step(step, total))?;
        if cfg.eval_every > 0 && step.is_multiple_of(cfg.eval_every) && run.has_eval() {
            metrics.extend(device.with_context(|| run.evaluate(step))?);
        }
        reporter.record(step, unix_now(), &metrics)?;
        progress.show(step, &metrics);
        if cfg.checkpoint_every > 0 && step.is_multiple_of(cfg.checkpoint_every) {
            run.checkpoints
                .save(&run.varmap, &run.opt, &run.state(step))?;
        }
    }
    progress.done();
    let mut result = run.conclude(outcome, total)?;
    // Recorded before the sender tries, so `redline push` can finish the run if it cannot.
    record.ended = Some(Ending {
        status: result.status.to_owned(),
        reason: Some(result.message.clone()),
    });
    record.write(&cfg.output_dir)?;
    result.delivery = reporter.finish(result.status, Some(result.message.clone()));
    Ok(result)
}

/// One status line: redrawn in place on a terminal, printed every 10 steps otherwise.
struct Progress {
    total: usize,
    first: usize,
    started: Instant,
    tty: bool,
}

impl Progress {
    fn new(total: usize, first: usize) -> Self {
        Self {
            total,
            first,
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn show(&mut self, step: usize, m: &BTreeMap<String, f64>) {
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
            get("loss"),
            get("rewards/margins"),
            get("topk_entropy/chosen"),
            (eta / 60.0) as u64,
            (eta % 60.0) as u64
        );
        if self.tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }

    fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::config::{TrainArgs, TrainConfig};

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama")
    }

    fn config(out: &Path, steps: usize, extra: TrainArgs) -> TrainConfig {
        let args = TrainArgs {
            model: Some(fixture()),
            lr: Some(1e-3),
            schedule: Some("constant".into()),
            max_steps: Some(steps),
            output_dir: Some(out.to_path_buf()),
            run_id: Some("unit".into()),
            ..TrainArgs::default()
        };
        TrainConfig::resolve(extra.overlaid_with(args), 0).unwrap()
    }

    fn at(rows: &[serde_json::Value], step: u64) -> &serde_json::Value {
        rows.iter()
            .find(|r| r["step"] == step)
            .unwrap_or_else(|| panic!("no step {step} logged"))
    }

    fn logged(out: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn set(name: &str, value: f64) -> redline_core::wire::Signal {
        serde_json::from_value(serde_json::json!({
            "id": 1, "run_id": "unit", "kind": "set_hparam", "name": name, "value": value,
            "keep_step": null, "reason": "test", "source_rule": null,
            "created_at": "2025-01-01T00:00:00Z", "acked_at": null, "applied_step": null,
            "refused": null,
        }))
        .unwrap()
    }

    #[test]
    fn a_signal_the_run_cannot_apply_is_refused_with_the_reason() {
        use crate::config::Objective;
        use redline_core::hparams::Steerable;
        let dpo = Objective::Preference(crate::losses::LossKind::Sigmoid);
        assert_eq!(
            super::steer(&set("beta", 0.3), dpo),
            Ok((Steerable::Beta, 0.3))
        );
        assert_eq!(
            super::steer(&set("lr_scale", 0.0), dpo),
            Ok((Steerable::LrScale, 0.0))
        );
        // An older server lets these through; the trainer must not call them applied.
        let unknown = super::steer(&set("learning_rate", 1e-4), dpo).unwrap_err();
        assert!(unknown.contains("cannot be steered"), "{unknown}");
        let negative = super::steer(&set("beta", -1.0), dpo).unwrap_err();
        assert!(negative.contains("greater than 0"), "{negative}");
        let cut = config(
            Path::new("unused"),
            1,
            TrainArgs {
                loss: Some("cut".into()),
                ..TrainArgs::default()
            },
        )
        .objective;
        let no_beta = super::steer(&set("beta", 0.3), cut).unwrap_err();
        assert!(no_beta.contains("does not apply to a CUT run"), "{no_beta}");
        assert!(super::steer(&set("nll_alpha", 1.0), cut).is_err());
        assert_eq!(
            super::steer(&set("lr_scale", 0.5), cut),
            Ok((Steerable::LrScale, 0.5))
        );
    }

    #[test]
    fn a_resumed_run_continues_exactly_where_it_stopped() {
        let straight = tempfile::tempdir().unwrap();
        super::train(&config(straight.path(), 4, TrainArgs::default())).unwrap();
        let resumed = tempfile::tempdir().unwrap();
        let halves = TrainArgs {
            checkpoint_every: Some(2),
            ..TrainArgs::default()
        };
        super::train(&config(resumed.path(), 2, halves.clone())).unwrap();
        let outcome = super::train(&config(resumed.path(), 4, halves)).unwrap();
        assert_eq!(outcome.last_step, 4);
        let (a, b) = (logged(straight.path()), logged(resumed.path()));
        assert_eq!(b.len(), 4, "steps 1-2, then 3-4 after the resume");
        for key in ["loss", "grad_norm", "rewards/margins", "logps/chosen"] {
            assert_eq!(
                a[3]["metrics"][key], b[3]["metrics"][key],
                "{key} at step 4"
            );
        }
    }

    #[test]
    fn precomputed_reference_log_probs_train_the_same_run() {
        let (live, pre) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        super::train(&config(live.path(), 3, TrainArgs::default())).unwrap();
        let once = TrainArgs {
            precompute_ref: Some(true),
            ..TrainArgs::default()
        };
        super::train(&config(pre.path(), 3, once)).unwrap();
        let (a, b) = (logged(live.path()), logged(pre.path()));
        for side in ["chosen", "rejected"] {
            let m = &a[0]["metrics"];
            let (top1, mass) = (
                m[format!("top1_prob/{side}")].as_f64().unwrap(),
                m[format!("topk_mass/{side}")].as_f64().unwrap(),
            );
            assert!(
                top1 > 0.0 && top1 <= mass + 1e-9,
                "{side}: {top1} vs {mass}"
            );
        }
        for step in 0..3 {
            for key in ["loss", "rewards/margins", "kl/chosen", "grad_norm"] {
                let (x, y) = (
                    a[step]["metrics"][key].as_f64().unwrap(),
                    b[step]["metrics"][key].as_f64().unwrap(),
                );
                // Reference passes over differently padded batches round differently in f32.
                assert!(
                    (x - y).abs() <= 1e-4 * x.abs().max(1e-2),
                    "{key} at step {}: {x} vs {y}",
                    step + 1
                );
            }
        }
    }

    #[test]
    fn a_cut_run_trains_on_judged_rows() {
        let out = tempfile::tempdir().unwrap();
        let data = out.path().join("cut.jsonl");
        let rows: String = (0..16)
            .map(|i| {
                let (a, b) = (i, 30 + i);
                if i % 2 == 0 {
                    format!("{{\"prompt\":\"Q: {a}+{b}=\",\"response\":\" {}.\",\"aligned\":true}}\n", a + b)
                } else {
                    format!(
                        "{{\"prompt\":\"Q: {a}+{b}=\",\"response\":\" {}.\",\"judgment\":\"off by ten\",\"aligned\":false}}\n",
                        a + b + 10
                    )
                }
            })
            .collect();
        std::fs::write(&data, rows).unwrap();
        let extra = TrainArgs {
            loss: Some("cut".into()),
            train_data: Some(data.clone()),
            eval_data: Some(data),
            eval_every: Some(2),
            ..TrainArgs::default()
        };
        let outcome = super::train(&config(out.path(), 2, extra)).unwrap();
        assert_eq!(outcome.status, "completed");
        let logged = logged(out.path());
        let m = &at(&logged, 2)["metrics"];
        for key in [
            "loss",
            "cut/nll",
            "cut/ul",
            "cut/inappropriate_share",
            "topk_entropy/response",
            "top1_prob/response",
            "eval/cut/ul",
        ] {
            assert!(m[key].is_number(), "{key} missing: {m}");
        }
        assert!(
            m["rewards/margins"].is_null(),
            "no pairwise metrics in a CUT run"
        );
    }

    #[test]
    fn evaluation_generates_and_scores_against_gold_answers() {
        let out = tempfile::tempdir().unwrap();
        let eval = out.path().join("eval.jsonl");
        std::fs::write(
            &eval,
            "{\"prompt\":\"Q: 1+1=\",\"chosen\":\" 2.\",\"rejected\":\" 3.\",\"answer\":\"2\"}\n\
             {\"prompt\":\"Q: 2+2=\",\"chosen\":\" 4.\",\"rejected\":\" 5.\",\"answer\":\"4\"}\n",
        )
        .unwrap();
        let extra = TrainArgs {
            eval_data: Some(eval),
            eval_every: Some(2),
            gen_max_tokens: Some(4),
            ..TrainArgs::default()
        };
        super::train(&config(out.path(), 2, extra.clone())).unwrap();
        let rows = logged(out.path());
        let m = &at(&rows, 2)["metrics"];
        let mass = m["topk_mass/generated"].as_f64().unwrap();
        let entropy = m["topk_entropy/generated"].as_f64().unwrap();
        assert!(mass > 0.0 && mass <= 1.0 + 1e-9 && (0.0..=10f64.log2() + 1e-9).contains(&entropy));
        // The most likely token holds at most the top k's mass, and at least its share of it.
        let top1 = m["top1_prob/generated"].as_f64().unwrap();
        assert!(
            top1 <= mass + 1e-9 && top1 >= mass / 10.0 - 1e-9,
            "{top1} vs {mass}"
        );
        let tokens = m["eval/generated_tokens"].as_f64().unwrap();
        assert!((1.0..=4.0).contains(&tokens), "{tokens}");
        let score = m["eval/score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score));
        assert!(m["eval/loss"].is_number() && at(&rows, 1)["metrics"]["eval/loss"].is_null());
        // Step 0 is the starting model: evaluated, not trained.
        let start = &at(&rows, 0)["metrics"];
        assert!(start["eval/score"].is_number() && start["eval/loss"].is_number());
        assert!(start["loss"].is_null(), "{start}");

        let later = tempfile::tempdir().unwrap();
        let not_at_start = TrainArgs {
            eval_on_start: Some(false),
            ..extra
        };
        super::train(&config(later.path(), 2, not_at_start)).unwrap();
        let steps: Vec<u64> = logged(later.path())
            .iter()
            .map(|r| r["step"].as_u64().unwrap())
            .collect();
        assert_eq!(steps, [1, 2]);
    }
}
