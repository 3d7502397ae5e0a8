//! Per-token log-probabilities and the next-token distribution metrics of REFERENCE.md: top-k
//! mass and top-k entropy (arXiv 2410.11677 §4.1), full-vocabulary entropy. Everything but the
//! log-probabilities is computed detached: metrics must not add to the gradient graph.

use std::collections::BTreeMap;

use candle_core::{D, DType, Result, Tensor};
use redline_core::catalogue::{Side, TOP1_PROB, TOPK_ENTROPY, TOPK_MASS};

use crate::model::{fused, log_softmax};

mod cpu;

/// Log-probability of each next token: `logits (b, t, v)` scored against `input_ids (b, t)`;
/// position `i` of the result is `log p(input[i+1] | input[..=i])`, shape `(b, t-1)`.
pub fn token_logps(logits: &Tensor, input_ids: &Tensor) -> Result<Tensor> {
    if fused::supported(logits) {
        fused::token_logps(logits, input_ids)
    } else {
        token_logps_composite(logits, input_ids)
    }
}

/// [`token_logps`] from differentiable candle ops, for devices and dtypes the fused op does not
/// handle.
pub(crate) fn token_logps_composite(logits: &Tensor, input_ids: &Tensor) -> Result<Tensor> {
    let (_, t, _) = logits.dims3()?;
    let logp = log_softmax(&logits.narrow(1, 0, t - 1)?)?;
    let targets = input_ids
        .narrow(1, 1, t - 1)?
        .contiguous()?
        .unsqueeze(D::Minus1)?;
    logp.gather(&targets, D::Minus1)?.squeeze(D::Minus1)
}

/// The shape of the next-token distributions, averaged over the positions measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopK {
    /// Probability mass of the k most likely tokens (arXiv 2410.11677 §4.1).
    pub mass: f64,
    /// Entropy in bits of the top k, renormalised within them (arXiv 2410.11677 §4.1).
    pub entropy: f64,
    /// Probability of the single most likely token. On rejected completions its rise is the
    /// "squeezing effect" of Ren & Sutherland (arXiv 2407.10490): the negative gradient on an
    /// unlikely sequence pushes mass onto whatever token is already most likely.
    pub top1: f64,
}

impl TopK {
    /// Adds the three metrics to `m` under their catalogue names for `side`.
    pub fn record(&self, side: Side, m: &mut BTreeMap<String, f64>) {
        m.insert(TOPK_MASS.on(side).name.into(), self.mass);
        m.insert(TOPK_ENTROPY.on(side).name.into(), self.entropy);
        m.insert(TOP1_PROB.on(side).name.into(), self.top1);
    }
}

/// [`TopK`] of the next-token distributions at the positions where `mask (b, t-1)` is 1,
/// averaged over those positions.
pub fn topk_stats(logits: &Tensor, mask: &Tensor, k: usize) -> Result<TopK> {
    let (b, t, v) = logits.dims3()?;
    let rows = logits.narrow(1, 0, t - 1)?.reshape((b * (t - 1), v))?;
    topk_stats_rows(&rows, &mask.reshape(b * (t - 1))?, k)
}

/// As [`topk_stats`], for distributions given as rows of `logits (n, v)`, weighted by `weights (n,)`.
/// Off the CPU: k rounds of argmax instead of a sort, since candle's CUDA sort fails for rows
/// longer than its block (vocabularies over 8192, SmolLM2's 49152 among them).
pub fn topk_stats_rows(logits: &Tensor, weights: &Tensor, k: usize) -> Result<TopK> {
    if logits.device().is_cpu() {
        let (x, w) = (cpu_values(logits)?, cpu_values(weights)?);
        return Ok(cpu::topk_stats(&x, &w, logits.dim(1)?, k));
    }
    topk_stats_rows_composite(logits, weights, k)
}

fn topk_stats_rows_composite(logits: &Tensor, weights: &Tensor, k: usize) -> Result<TopK> {
    let (n, v) = logits.dims2()?;
    // In f32 whatever the model computes in; a fresh tensor, which the rounds below overwrite.
    let probs =
        candle_nn::ops::softmax_last_dim(&logits.detach().to_dtype(DType::F32)?.contiguous()?)?;
    let below = Tensor::full(-1.0f32, (n, 1), probs.device())?;
    let mut top = Vec::with_capacity(k);
    for _ in 0..k.min(v) {
        let idx = probs.argmax_keepdim(1)?;
        top.push(probs.gather(&idx, 1)?);
        // Push the chosen entry below every probability so the next round finds the next one.
        probs.scatter_set(&idx, &below, 1)?;
    }
    // The first round's pick is each row's most likely token.
    let top1 = top[0].clone();
    let top = Tensor::cat(&top, 1)?; // (n, k)
    let mass = top.sum_keepdim(1)?;
    let q = top.broadcast_div(&mass)?;
    // 0·log 0 = 0: clamp keeps log finite where a probability underflowed to zero.
    let entropy = (q.clone() * q.clamp(1e-30f32, 1.0f32)?.log()?)?
        .sum_keepdim(1)?
        .neg()?
        / std::f64::consts::LN_2;
    let w = weights.reshape((n, 1))?.to_dtype(DType::F32)?;
    let count = w.sum_all()?.to_scalar::<f32>()?.max(1.0);
    let avg = |x: Tensor| -> Result<f64> {
        Ok(f64::from((x * &w)?.sum_all()?.to_scalar::<f32>()?) / f64::from(count))
    };
    Ok(TopK {
        mass: avg(mass)?,
        entropy: avg(entropy?)?,
        top1: avg(top1)?,
    })
}

/// Full-vocabulary Shannon entropy in nats, averaged over the positions where `mask` is 1.
pub fn entropy(logits: &Tensor, mask: &Tensor) -> Result<f64> {
    let (_, t, v) = logits.dims3()?;
    if logits.device().is_cpu() {
        let rows = cpu_values(&logits.narrow(1, 0, t - 1)?)?;
        return Ok(cpu::entropy(&rows, &cpu_values(mask)?, v));
    }
    entropy_composite(logits, mask)
}

fn entropy_composite(logits: &Tensor, mask: &Tensor) -> Result<f64> {
    let (_, t, _) = logits.dims3()?;
    let logp = log_softmax(&logits.narrow(1, 0, t - 1)?.detach().to_dtype(DType::F32)?)?;
    let h = (logp.exp()? * &logp)?.sum(D::Minus1)?.neg()?;
    let w = mask.to_dtype(DType::F32)?;
    let count = w.sum_all()?.to_scalar::<f32>()?.max(1.0);
    Ok(f64::from((h * w)?.sum_all()?.to_scalar::<f32>()?) / f64::from(count))
}

/// The elements of `t` as f32, in order (detached: metrics add nothing to the graph).
fn cpu_values(t: &Tensor) -> Result<Vec<f32>> {
    t.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    /// The composite form's figures (`got`) match the kernels' (`want`).
    fn assert_close(got: &TopK, want: &TopK, what: &str) {
        assert!(
            (got.mass - want.mass).abs() < 1e-5
                && (got.entropy - want.entropy).abs() < 1e-4
                && (got.top1 - want.top1).abs() < 1e-5,
            "{what}: {got:?} vs {want:?}"
        );
    }

    #[test]
    fn topk_metrics_match_a_hand_computation() {
        // One sequence of 3 tokens: two scored positions; the second is masked out.
        let first = [2.0f32, 1.0, 0.0, -1.0, -5.0];
        let logits = Tensor::new(
            &[[first, [0.0; 5], [9.0, 0.0, 0.0, 0.0, 0.0]]],
            &Device::Cpu,
        )
        .unwrap();
        let mask = Tensor::new(&[[1u8, 0]], &Device::Cpu).unwrap();
        let z: f64 = first.iter().map(|x| f64::from(*x).exp()).sum();
        let p: Vec<f64> = first.iter().map(|x| f64::from(*x).exp() / z).collect();
        let mass2 = p[0] + p[1];
        let ent2 = -[p[0], p[1]]
            .iter()
            .map(|x| (x / mass2) * (x / mass2).log2())
            .sum::<f64>();
        let TopK {
            mass,
            entropy: ent,
            top1,
        } = topk_stats(&logits, &mask, 2).unwrap();
        assert!(
            (mass - mass2).abs() < 1e-6 && (ent - ent2).abs() < 1e-5,
            "{mass} {ent}"
        );
        assert!((top1 - p[0]).abs() < 1e-6, "{top1} vs {}", p[0]);
        let full: f64 = -p.iter().map(|x| x * x.ln()).sum::<f64>();
        assert!((entropy(&logits, &mask).unwrap() - full).abs() < 1e-5);
        // Uniform over the top k: entropy is log2 k.
        let uniform = topk_stats(
            &Tensor::zeros((1, 2, 16), DType::F32, &Device::Cpu).unwrap(),
            &Tensor::new(&[[1u8]], &Device::Cpu).unwrap(),
            4,
        )
        .unwrap();
        assert!((uniform.mass - 0.25).abs() < 1e-6 && (uniform.entropy - 2.0).abs() < 1e-5);
        assert!((uniform.top1 - 1.0 / 16.0).abs() < 1e-6);
    }

    /// The CPU kernels against the device-agnostic tensor forms, on varied logits and weights.
    #[test]
    fn cpu_metrics_match_the_tensor_forms() {
        let (b, t, v) = (3, 7, 50);
        let values: Vec<f32> = (0..b * t * v)
            .map(|i| 6.0 * ((i as f32) * 0.37).sin() * ((i as f32) * 0.011).cos())
            .collect();
        let logits = Tensor::from_vec(values, (b, t, v), &Device::Cpu).unwrap();
        let mask: Vec<f32> = (0..b * (t - 1)).map(|i| f32::from(i % 3 != 0)).collect();
        let mask = Tensor::from_vec(mask, (b, t - 1), &Device::Cpu).unwrap();
        let rows = logits
            .narrow(1, 0, t - 1)
            .unwrap()
            .reshape(((), v))
            .unwrap();
        let weights = mask.flatten_all().unwrap();
        for k in [1, 5, v] {
            let fast = topk_stats_rows(&rows, &weights, k).unwrap();
            let slow = topk_stats_rows_composite(&rows, &weights, k).unwrap();
            assert_close(&slow, &fast, &format!("k={k}"));
        }
        let (h, hc) = (
            entropy(&logits, &mask).unwrap(),
            entropy_composite(&logits, &mask).unwrap(),
        );
        assert!((h - hc).abs() < 1e-5, "{h} vs {hc}");
    }

    /// The device-agnostic forms (what CUDA runs) give the CPU kernels' figures on a vocabulary
    /// past candle's CUDA sort limit (8192), with logits in f32 and in bf16.
    #[test]
    fn topk_metrics_hold_on_a_large_vocabulary_in_f32_and_bf16() {
        let (n, v) = (6, 49_152);
        let values: Vec<f32> = (0..n * v)
            .map(|i| 8.0 * ((i as f32) * 0.0137).sin() * ((i as f32) * 0.00091).cos())
            .collect();
        let logits = Tensor::from_vec(values, (n, v), &Device::Cpu).unwrap();
        let weights = Tensor::new(&[1.0f32, 0.0, 1.0, 1.0, 0.5, 1.0], &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let logits = logits.to_dtype(dtype).unwrap();
            for k in [1, 10, 40] {
                let want = topk_stats_rows(&logits, &weights, k).unwrap();
                let got = topk_stats_rows_composite(&logits, &weights, k).unwrap();
                assert_close(&got, &want, &format!("{dtype:?} k={k}"));
            }
            let rows = logits.unsqueeze(1).unwrap().repeat((1, 2, 1)).unwrap();
            let mask = weights.unsqueeze(1).unwrap();
            let (h, hc) = (
                entropy(&rows, &mask).unwrap(),
                entropy_composite(&rows, &mask).unwrap(),
            );
            // Sums of 49152 f32 terms, in two orders.
            assert!((h - hc).abs() < 1e-3, "{dtype:?}: {h} vs {hc}");
        }
    }

    #[test]
    fn token_logps_score_the_next_token() {
        let logits = Tensor::new(&[[[0.0f32, 1.0], [3.0, 0.0]]], &Device::Cpu).unwrap();
        let ids = Tensor::new(&[[0u32, 1]], &Device::Cpu).unwrap();
        let lp: Vec<Vec<f32>> = token_logps(&logits, &ids).unwrap().to_vec2().unwrap();
        let expected = 1.0 - (1.0f64.exp() + 1.0).ln();
        assert!((f64::from(lp[0][0]) - expected).abs() < 1e-6);
    }
}
