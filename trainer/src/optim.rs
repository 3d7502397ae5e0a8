//! Optimisation: global-norm gradient clipping as `torch.nn.utils.clip_grad_norm_`, AdamW as
//! `torch.optim.AdamW`, and the learning-rate schedules of transformers.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use candle_nn::VarMap;

/// Scales all gradients so their global L2 norm is at most `max_norm`, and returns the norm
/// before clipping (what TRL logs as `grad_norm`). As torch: coefficient `max_norm / (norm + 1e-6)`,
/// applied only when below 1.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let mut total = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            total += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
    }
    let norm = total.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * coef)?);
            }
        }
    }
    Ok(norm)
}

/// Learning-rate schedule after `warmup` linear steps from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Constant,
    /// Linear decay to 0 at the last step.
    Linear,
    /// Half-cosine decay to 0 at the last step.
    Cosine,
}

impl Schedule {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "constant" => Some(Self::Constant),
            "linear" => Some(Self::Linear),
            "cosine" => Some(Self::Cosine),
            _ => None,
        }
    }

    /// The multiplier of the base learning rate for optimizer step `step` (0-based) of `total`,
    /// as transformers' `get_*_schedule_with_warmup`.
    pub fn factor(self, step: usize, warmup: usize, total: usize) -> f64 {
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
        match self {
            Self::Constant => 1.0,
            Self::Linear => (1.0 - progress).max(0.0),
            Self::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
        }
    }
}

/// AdamW exactly as `torch.optim.AdamW`, with its state open for checkpoints (candle's keeps
/// its moments private, which rules out exact resume).
#[derive(Debug)]
pub struct AdamW {
    params: Vec<(String, Var)>,
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    /// Updates taken so far (bias correction uses it).
    pub steps: usize,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    /// Every variable of `varmap`, in name order, with torch's betas and epsilon.
    pub fn new(varmap: &VarMap, weight_decay: f64) -> Result<Self> {
        let data = varmap.data().lock().expect("varmap lock");
        let mut params: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        Ok(Self {
            first: params
                .iter()
                .map(|(_, v)| zeros(v))
                .collect::<Result<_>>()?,
            second: params
                .iter()
                .map(|(_, v)| zeros(v))
                .collect::<Result<_>>()?,
            params,
            steps: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        })
    }

    pub fn vars(&self) -> Vec<Var> {
        self.params.iter().map(|(_, v)| v.clone()).collect()
    }

    /// One update at learning rate `lr`: decoupled weight decay, then the bias-corrected Adam step.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.steps += 1;
        let t = i32::try_from(self.steps).unwrap_or(i32::MAX);
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        for (i, (_, var)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let m = ((&self.first[i] * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let v = ((&self.second[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let decayed = (var.as_tensor() * (1.0 - lr * self.weight_decay))?;
            let denom = ((v.sqrt()? / bc2_sqrt)? + self.eps)?;
            let update = ((&m / denom)? * (lr / bc1))?;
            var.set(&(decayed - update)?)?;
            self.first[i] = m;
            self.second[i] = v;
        }
        Ok(())
    }

    /// The moments, named `m.<param>` and `v.<param>`, for a checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.insert(format!("m.{name}"), self.first[i].clone());
            out.insert(format!("v.{name}"), self.second[i].clone());
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`]; every parameter must have both.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, steps: usize) -> Result<()> {
        for (i, (name, var)) in self.params.iter().enumerate() {
            for (prefix, slot) in [("m", &mut self.first[i]), ("v", &mut self.second[i])] {
                let key = format!("{prefix}.{name}");
                let t = state.get(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state has no {key}"))
                })?;
                *slot = t.to_dtype(var.dtype())?.to_device(var.device())?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn schedules_follow_transformers() {
        assert_eq!(Schedule::Constant.factor(0, 0, 10), 1.0);
        assert_eq!(Schedule::Linear.factor(1, 2, 10), 0.5);
        assert_eq!(Schedule::Linear.factor(6, 2, 10), 0.5);
        assert!((Schedule::Cosine.factor(6, 2, 10) - 0.5).abs() < 1e-12);
        assert_eq!(Schedule::Cosine.factor(10, 2, 10), 0.0);
    }

    #[test]
    fn clipping_scales_to_the_max_norm_and_reports_the_norm_before() {
        let a = Var::new(&[3.0f32], &Device::Cpu).unwrap();
        let b = Var::new(&[4.0f32], &Device::Cpu).unwrap();
        let loss = (a.as_tensor().sqr().unwrap() * 0.5)
            .unwrap()
            .sum_all()
            .unwrap()
            .add(
                &(b.as_tensor().sqr().unwrap() * 0.5)
                    .unwrap()
                    .sum_all()
                    .unwrap(),
            )
            .unwrap();
        let mut grads = loss.backward().unwrap();
        let vars = [a.clone(), b.clone()];
        let norm = clip_grad_norm(&mut grads, &vars, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let ga: Vec<f32> = grads.get(a.as_tensor()).unwrap().to_vec1().unwrap();
        assert!((f64::from(ga[0]) - 3.0 / (5.0 + 1e-6)).abs() < 1e-6);
    }
}
