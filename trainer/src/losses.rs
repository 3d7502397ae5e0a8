//! The preference losses of REFERENCE.md, on per-pair log-likelihoods. Each returns per-pair
//! losses; the objective is their mean plus the optional NLL (RPO) term.
//!
//! Notation: `Δw = logp_w − ref_w`, `Δl = logp_l − ref_l`, `ρ = Δw − Δl`, `z = β·ρ`,
//! `f_dpo(u) = −log σ(u)`, `f_slic(u) = max(0, 1 − u)`, `f_exp(u) = e^−u`.

use candle_core::{Result, Tensor};

/// Which loss, with its own parameters. Names follow TRL's `loss_type` where TRL has the loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LossKind {
    /// DPO: `f_dpo(z)`.
    Sigmoid,
    /// `(Δw/Lw − Δl/Ll − 1/(2β))²`, lengths L in completion tokens.
    Ipo,
    /// TRL's hinge, with the reference: `f_slic(z)`.
    Hinge,
    /// The paper's hinge, no reference: `max(0, γ − (mean-token logp_w − mean-token logp_l))`.
    Slic {
        gamma: f64,
    },
    /// `[(1−ε) f_dpo(z) − ε f_dpo(−z)] / (1 − 2ε)`.
    Robust {
        epsilon: f64,
    },
    /// LRML: `m = σ(z/τ)`, `(1−m) f_dpo(z) + m f_exp(z)`.
    Discopop {
        tau: f64,
    },
    Dbaql,
    Aql,
    Aqfl,
    Padll,
    Cell,
    Pfl,
}

impl LossKind {
    /// Parses a `loss_type` name with the default parameters of REFERENCE.md.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "sigmoid" => Self::Sigmoid,
            "ipo" => Self::Ipo,
            "hinge" => Self::Hinge,
            "slic" => Self::Slic { gamma: 1.0 },
            "robust" => Self::Robust { epsilon: 0.0 },
            "discopop" => Self::Discopop { tau: 0.05 },
            "dbaql" => Self::Dbaql,
            "aql" => Self::Aql,
            "aqfl" => Self::Aqfl,
            "padll" => Self::Padll,
            "cell" => Self::Cell,
            "pfl" => Self::Pfl,
            _ => return None,
        })
    }

    /// Whether the loss uses statistics of the whole batch (it then needs at least two pairs).
    pub fn uses_batch_statistics(self) -> bool {
        matches!(self, Self::Dbaql | Self::Aql | Self::Aqfl)
    }
}

/// Per-pair inputs, each a `(batch,)` f32 tensor. Log-likelihoods are sums over completion tokens.
#[derive(Debug, Clone)]
pub struct PairLogps {
    pub chosen: Tensor,
    pub rejected: Tensor,
    pub ref_chosen: Tensor,
    pub ref_rejected: Tensor,
    /// Completion lengths in tokens, as f32.
    pub chosen_len: Tensor,
    pub rejected_len: Tensor,
}

/// Beyond this |u|, `e^u` would overflow f32; inputs are clamped to it inside the branch not taken.
const EXP_SAFE: f64 = 80.0;

/// Picks `on_nonneg(u)` where `u ≥ 0` and `on_neg(u)` elsewhere. Each branch sees its input
/// clamped far from its own region, so the branch not taken stays finite and its (zero) gradient
/// stays zero instead of `0 · ∞ = NaN`. No kink sits at 0, unlike `relu`/`abs` formulations,
/// whose subgradients at exactly 0 (every pair at step 0, where policy = reference) are wrong.
fn piecewise(
    u: &Tensor,
    on_nonneg: impl Fn(&Tensor) -> Result<Tensor>,
    on_neg: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let nonneg = u.ge(0.0)?;
    let a = on_nonneg(&u.clamp(-EXP_SAFE, f64::INFINITY)?)?;
    let b = on_neg(&u.clamp(f64::NEG_INFINITY, EXP_SAFE)?)?;
    nonneg.where_cond(&a, &b)
}

/// `−log σ(u) = log(1 + e^−u)`, stable for any u.
pub fn f_dpo(u: &Tensor) -> Result<Tensor> {
    piecewise(
        u,
        |u| (u.neg()?.exp()? + 1.0)?.log(),
        |u| u.neg()? + (u.exp()? + 1.0)?.log()?,
    )
}

pub fn f_slic(u: &Tensor) -> Result<Tensor> {
    u.affine(-1.0, 1.0)?.relu()
}

pub fn f_exp(u: &Tensor) -> Result<Tensor> {
    u.neg()?.exp()
}

/// `σ(u)`, stable for any u.
pub fn sigmoid(u: &Tensor) -> Result<Tensor> {
    piecewise(
        u,
        |u| (u.neg()?.exp()? + 1.0)?.recip(),
        |u| {
            let e = u.exp()?;
            &e / (&e + 1.0)?
        },
    )
}

fn mean(x: &Tensor) -> Result<Tensor> {
    x.mean_all()
}

/// Unbiased variance over the batch, as `torch.var`.
fn var(x: &Tensor) -> Result<Tensor> {
    let n = x.elem_count() as f64;
    let centred = x.broadcast_sub(&x.mean_all()?)?;
    centred.sqr()?.sum_all()? / (n - 1.0)
}

/// Per-pair losses `(batch,)`.
pub fn pair_losses(kind: LossKind, p: &PairLogps, beta: f64) -> Result<Tensor> {
    let dw = (&p.chosen - &p.ref_chosen)?;
    let dl = (&p.rejected - &p.ref_rejected)?;
    let rho = (&dw - &dl)?;
    let z = (&rho * beta)?;
    match kind {
        LossKind::Sigmoid => f_dpo(&z),
        LossKind::Ipo => {
            let gap = ((dw / &p.chosen_len)? - (dl / &p.rejected_len)?)?;
            (gap - 1.0 / (2.0 * beta))?.sqr()
        }
        LossKind::Hinge => f_slic(&z),
        LossKind::Slic { gamma } => {
            let mean_w = (&p.chosen / &p.chosen_len)?;
            let mean_l = (&p.rejected / &p.rejected_len)?;
            (mean_w - mean_l)?.affine(-1.0, gamma)?.relu()
        }
        LossKind::Robust { epsilon } => {
            let a = (f_dpo(&z)? * (1.0 - epsilon))?;
            let b = (f_dpo(&z.neg()?)? * epsilon)?;
            (a - b)? / (1.0 - 2.0 * epsilon)
        }
        LossKind::Discopop { tau } => {
            let m = sigmoid(&(&z / tau)?)?;
            let logistic = (f_dpo(&z)? * m.affine(-1.0, 1.0)?)?;
            logistic + (f_exp(&z)? * m)?
        }
        LossKind::Dbaql => {
            let w = sigmoid(&var(&(&z / 0.05)?)?)?;
            let a = f_dpo(&(&z / 0.9)?)?.broadcast_mul(&w)?;
            let b = f_exp(&(&z * 0.9)?)?.broadcast_mul(&w.affine(-1.0, 1.0)?)?;
            a + b
        }
        LossKind::Aql => {
            let scaled = (&z / 0.05)?;
            let mq = (sigmoid(&mean(&scaled)?)? - 0.5)?.affine(0.01, 0.5)?;
            let q = sigmoid(&scaled.neg()?.broadcast_add(&mq)?)?;
            let a = (f_dpo(&z)? * &q)?;
            a + (f_slic(&z)? * q.affine(-1.0, 1.0)?)?
        }
        LossKind::Aqfl => {
            let u = (&z / 0.05)?;
            let m1 = (var(&u)?.sqrt()? * mean(&sigmoid(&u.neg()?)?)?)?;
            let m2 = (&m1 + ((sigmoid(&mean(&u)?)? - &m1)? * 0.05)?)?;
            let r = sigmoid(&(u.broadcast_sub(&m2)?.abs()? * 0.1)?)?;
            let a = (f_dpo(&z)? * &r)?;
            a + (f_slic(&z)? * r.affine(-1.0, 1.0)?)?
        }
        LossKind::Padll => {
            let negative = rho.lt(0.0)?.to_dtype(rho.dtype())?;
            f_dpo(&z)? * negative.affine(-0.5, 1.0)?.affine(0.9, 0.0)?
        }
        LossKind::Cell => (f_exp(&z)? * 0.5)? + (f_dpo(&z)? * 0.5)?,
        LossKind::Pfl => {
            let chosen_ahead = p.chosen.gt(&p.rejected)?.to_dtype(z.dtype())?;
            let a = ((f_dpo(&z)? * 0.5)? * &chosen_ahead)?;
            a + ((f_slic(&z)? * 2.0)? * chosen_ahead.affine(-1.0, 1.0)?)?
        }
    }
}

/// The optimised loss: mean per-pair loss plus `nll_alpha · mean(−logp_w / |y_w|)` (RPO).
pub fn objective(kind: LossKind, p: &PairLogps, beta: f64, nll_alpha: f64) -> Result<Tensor> {
    let loss = pair_losses(kind, p, beta)?.mean_all()?;
    if nll_alpha == 0.0 {
        return Ok(loss);
    }
    let nll = (p.chosen.neg()? / &p.chosen_len)?.mean_all()?;
    loss + (nll * nll_alpha)?
}

#[cfg(test)]
mod tests;
