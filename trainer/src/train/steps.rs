//! One optimizer step (the micro-batches of the data order, accumulated gradients, clipping, the
//! scheduled learning rate) and an evaluation on the held-out rows.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::Tensor;
use candle_core::backprop::GradStore;
use redline_core::catalogue::{
    self, EVAL_PREFIX, GRAD_NORM, LEARNING_RATE, LR_SCALE, STEP_SECONDS, TOKENS_PER_SECOND,
    TOPK_SECONDS, Unit,
};

use super::checkpoint::TrainerState;
use super::prepare::Run;
use crate::config::Objective;
use crate::cut::{CutExample, cut_forward};
use crate::data::{Pair, collate};
use crate::error::Result;
use crate::generate::generation_metrics;
use crate::optim::{clip_coefficient, grad_norm};
use crate::rng::SplitMix64;
use crate::step::{Reference, StepResult, forward};

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

impl Run<'_> {
    pub(super) fn state(&self, step: usize) -> TrainerState {
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
    pub(super) fn examples(&self) -> usize {
        self.pairs.len().max(self.cut_rows.len())
    }

    pub(super) fn has_eval(&self) -> bool {
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

    pub(super) fn train_step(
        &mut self,
        step: usize,
        total: usize,
    ) -> Result<BTreeMap<String, f64>> {
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
        m.insert(GRAD_NORM.name.into(), norm);
        m.insert(LEARNING_RATE.name.into(), lr);
        m.insert(LR_SCALE.name.into(), self.lr_scale);
        let seconds = started.elapsed().as_secs_f64();
        // `average` took the mean over micro-batches; the step spent their sum.
        if let Some(t) = m.get_mut(TOPK_SECONDS.name) {
            *t *= self.cfg.grad_accum as f64;
        }
        m.insert(STEP_SECONDS.name.into(), seconds);
        m.insert(TOKENS_PER_SECOND.name.into(), tokens / seconds.max(1e-9));
        Ok(m)
    }

    /// The eval pairs' metrics under `eval/`, and the generation metrics on their prompts.
    pub(super) fn evaluate(&self, step: usize) -> Result<BTreeMap<String, f64>> {
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
            .filter(|(k, _)| {
                catalogue::lookup(k)
                    .is_none_or(|m| m.steerable().is_none() && m.unit != Unit::Seconds)
            })
            .map(|(k, v)| (format!("{EVAL_PREFIX}{k}"), v))
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
}
