//! One preference-optimisation step: policy and reference forward passes over a collated batch,
//! the loss, and every per-step metric of REFERENCE.md from the same forward pass.

use std::collections::BTreeMap;

use candle_core::{D, Result, Tensor};
use redline_core::catalogue::{
    BETA, ENTROPY, KL_CHOSEN, LOGPS, LOGPS_MEAN, LOSS, NLL_ALPHA, REWARD_ACCURACY, REWARD_CHOSEN,
    REWARD_MARGIN, REWARD_REJECTED, Side, TOPK_SECONDS,
};

use crate::data::Batch;
use crate::losses::{LossKind, PairLogps, objective};
use crate::metrics::{entropy, token_logps, topk_stats};
use crate::model::Decoder;

/// The settings a step needs; `beta` and `nll_alpha` may change between steps (signals).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepSettings {
    pub loss: LossKind,
    pub beta: f64,
    pub nll_alpha: f64,
    /// k of the top-k metrics; 0 leaves them out (to measure what they cost).
    pub top_k: usize,
}

/// The loss to differentiate and the step's metrics (TRL's names).
#[derive(Debug)]
pub struct StepResult {
    pub loss: Tensor,
    pub metrics: BTreeMap<String, f64>,
}

fn mean(t: &Tensor) -> Result<f64> {
    Ok(f64::from(t.mean_all()?.to_scalar::<f32>()?))
}

/// Where a batch's reference log-likelihoods come from.
#[derive(Debug, Clone, Copy)]
pub enum Reference<'a> {
    /// The frozen model, run on the batch.
    Model(&'a Decoder),
    /// Summed completion log-probs per row `(2B,)`, computed once before training.
    Precomputed(&'a Tensor),
}

/// Summed completion log-probs of each row of `batch` under the frozen `reference`, `(2B,)`.
pub fn reference_logps(reference: &Decoder, batch: &Batch) -> Result<Tensor> {
    let logits = reference
        .forward_pairs(&batch.input_ids, &batch.packed)?
        .detach();
    Ok(
        (token_logps(&logits, &batch.input_ids)? * &batch.loss_mask)?
            .sum(D::Minus1)?
            .detach(),
    )
}

/// Runs the step's forward passes. The reference pass records no graph: its weights are plain
/// tensors and its outputs are detached.
pub fn forward(
    policy: &Decoder,
    reference: Reference<'_>,
    batch: &Batch,
    s: &StepSettings,
) -> Result<StepResult> {
    let b = batch.pairs;
    let mask = &batch.loss_mask;
    let logits = policy.forward_pairs(&batch.input_ids, &batch.packed)?;
    let per_token = (token_logps(&logits, &batch.input_ids)? * mask)?;
    let logps = per_token.sum(D::Minus1)?;
    let ref_logps = match reference {
        Reference::Model(model) => reference_logps(model, batch)?,
        Reference::Precomputed(t) => t.clone(),
    };
    let lens = mask.sum(D::Minus1)?;
    let half = |t: &Tensor, i: usize| t.narrow(0, i * b, b);
    let p = PairLogps {
        chosen: half(&logps, 0)?,
        rejected: half(&logps, 1)?,
        ref_chosen: half(&ref_logps, 0)?,
        ref_rejected: half(&ref_logps, 1)?,
        chosen_len: half(&lens, 0)?,
        rejected_len: half(&lens, 1)?,
    };
    let loss = objective(s.loss, &p, s.beta, s.nll_alpha)?;

    let mut m = BTreeMap::new();
    m.insert(LOSS.name.into(), f64::from(loss.to_scalar::<f32>()?));
    let reward_w = ((p.chosen.detach() - &p.ref_chosen)? * s.beta)?;
    let reward_l = ((p.rejected.detach() - &p.ref_rejected)? * s.beta)?;
    m.insert(REWARD_CHOSEN.name.into(), mean(&reward_w)?);
    m.insert(REWARD_REJECTED.name.into(), mean(&reward_l)?);
    m.insert(REWARD_MARGIN.name.into(), mean(&(&reward_w - &reward_l)?)?);
    m.insert(
        REWARD_ACCURACY.name.into(),
        mean(&reward_w.gt(&reward_l)?.to_dtype(reward_w.dtype())?)?,
    );
    m.insert(
        LOGPS.on(Side::Chosen).name.into(),
        mean(&p.chosen.detach())?,
    );
    m.insert(
        LOGPS.on(Side::Rejected).name.into(),
        mean(&p.rejected.detach())?,
    );
    m.insert(
        LOGPS_MEAN.on(Side::Chosen).name.into(),
        mean(&(p.chosen.detach() / &p.chosen_len)?)?,
    );
    m.insert(
        LOGPS_MEAN.on(Side::Rejected).name.into(),
        mean(&(p.rejected.detach() / &p.rejected_len)?)?,
    );
    let logits = logits.detach();
    let topk_started = std::time::Instant::now();
    for (i, side) in Side::PAIR.into_iter().enumerate().filter(|_| s.top_k > 0) {
        topk_stats(&half(&logits, i)?, &half(mask, i)?, s.top_k)?.record(side, &mut m);
    }
    // What the over-optimisation metrics cost, visible beside them.
    m.insert(
        TOPK_SECONDS.name.into(),
        topk_started.elapsed().as_secs_f64(),
    );
    m.insert(ENTROPY.name.into(), entropy(&logits, mask)?);
    // Per-token log-ratio on chosen completions: an estimate of KL (the tokens are not sampled
    // from the policy). Σ log π − Σ log π_ref over all chosen tokens, per token.
    let chosen_tokens = p.chosen_len.sum_all()?.to_scalar::<f32>()?.max(1.0);
    let log_ratio = (p.chosen.detach() - &p.ref_chosen)?.sum_all()?;
    m.insert(
        KL_CHOSEN.name.into(),
        f64::from(log_ratio.to_scalar::<f32>()? / chosen_tokens),
    );
    m.insert(BETA.name.into(), s.beta);
    m.insert(NLL_ALPHA.name.into(), s.nll_alpha);
    Ok(StepResult { loss, metrics: m })
}
