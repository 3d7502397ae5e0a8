//! The distribution metrics on CPU slices: one pass per row instead of the k rounds of argmax,
//! gather and scatter (some 40 tensor ops) the device-agnostic forms take.

use super::TopK;

/// Softmax of `row` into `probs`, shifted by the maximum.
fn softmax(row: &[f32], probs: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for (p, &x) in probs.iter_mut().zip(row) {
        *p = (x - max).exp();
        sum += *p;
    }
    for p in probs.iter_mut() {
        *p /= sum;
    }
}

/// Weighted means of top-k mass, top-k entropy (bits, renormalised within the top k) and top-1
/// probability over the rows of `logits (n, v)` with weights `(n,)`.
pub fn topk_stats(logits: &[f32], weights: &[f32], v: usize, k: usize) -> TopK {
    let k = k.min(v);
    let mut probs = vec![0.0f32; v];
    let (mut mass_sum, mut entropy_sum, mut top1_sum) = (0.0f64, 0.0f64, 0.0f64);
    for (row, &w) in logits.chunks(v).zip(weights) {
        if k == 0 || w == 0.0 {
            continue;
        }
        softmax(row, &mut probs);
        probs.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        let top = &probs[..k];
        let mass: f32 = top.iter().sum();
        top1_sum += f64::from(w * top.iter().copied().fold(0.0, f32::max));
        // 0·log 0 = 0: the clamp keeps log finite where a probability underflowed to zero.
        let entropy: f32 = -top
            .iter()
            .map(|&p| (p / mass) * (p / mass).clamp(1e-30, 1.0).ln())
            .sum::<f32>()
            / std::f32::consts::LN_2;
        mass_sum += f64::from(w * mass);
        entropy_sum += f64::from(w * entropy);
    }
    let count = f64::from(weights.iter().sum::<f32>().max(1.0));
    TopK {
        mass: mass_sum / count,
        entropy: entropy_sum / count,
        top1: top1_sum / count,
    }
}

/// Weighted mean of the full-vocabulary entropy (nats) of the rows of `logits (n, v)`.
pub fn entropy(logits: &[f32], weights: &[f32], v: usize) -> f64 {
    let mut total = 0.0f64;
    for (row, &w) in logits.chunks(v).zip(weights) {
        if w == 0.0 {
            continue;
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_sum = row.iter().map(|&x| (x - max).exp()).sum::<f32>().ln();
        let h: f32 = -row
            .iter()
            .map(|&x| {
                let logp = x - max - log_sum;
                logp.exp() * logp
            })
            .sum::<f32>();
        total += f64::from(w * h);
    }
    total / f64::from(weights.iter().sum::<f32>().max(1.0))
}
