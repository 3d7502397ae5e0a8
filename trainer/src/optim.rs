//! Optimisation: global-norm gradient clipping as `torch.nn.utils.clip_grad_norm_`, AdamW as
//! `torch.optim.AdamW`, and the learning-rate schedules of transformers.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Storage, Tensor, Var};
use candle_nn::VarMap;
use rayon::prelude::*;

/// The global L2 norm of all gradients, as `torch.nn.utils.clip_grad_norm_` computes it (and TRL
/// logs it as `grad_norm`: before clipping).
pub fn grad_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let mut total = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            total += sum_of_squares(g)?;
        }
    }
    Ok(total.sqrt())
}

/// `Σ g²`; on CPU read in place (the tensor form allocates a squared copy of every gradient), in
/// f32 over fixed chunks and f64 across them, so the order and the result do not depend on
/// threads.
fn sum_of_squares(g: &Tensor) -> Result<f64> {
    let (storage, layout) = g.storage_and_layout();
    if let (Storage::Cpu(CpuStorage::F32(x)), Some((start, end))) =
        (&*storage, layout.contiguous_offsets())
    {
        let chunk_sum = |c: &[f32]| {
            // Eight independent lanes: the compiler vectorises them, a single sum it cannot.
            let mut lanes = [0.0f32; 8];
            let blocks = c.chunks_exact(8);
            let tail: f32 = blocks.remainder().iter().map(|v| v * v).sum();
            for b in blocks {
                for (lane, v) in lanes.iter_mut().zip(b) {
                    *lane += v * v;
                }
            }
            f64::from(lanes.iter().sum::<f32>() + tail)
        };
        let x = &x[start..end];
        let partials: Vec<f64> = if x.len() >= PARALLEL_MIN_PARAMS {
            x.par_chunks(PARALLEL_CHUNK).map(chunk_sum).collect()
        } else {
            x.chunks(PARALLEL_CHUNK).map(chunk_sum).collect()
        };
        return Ok(partials.iter().sum());
    }
    drop(storage);
    Ok(f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?))
}

/// The factor torch's clipping multiplies gradients by: `max_norm / (norm + 1e-6)` when below 1.
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// Learning-rate schedule after `warmup` linear steps from 0. Named in lowercase in flags, config
/// files and the run's recorded config.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The peak learning rate throughout.
    Constant,
    /// Linear decay to 0 at the last step.
    Linear,
    /// Half-cosine decay to 0 at the last step.
    Cosine,
}

impl Schedule {
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

/// The moments of one parameter: tensors on an accelerator, plain vectors updated in one fused
/// pass on the CPU (a tensor-op update allocates a dozen temporaries per parameter per step, which
/// dominates a CPU step for small models).
#[derive(Debug)]
enum Moments {
    Tensors {
        m: Tensor,
        v: Tensor,
    },
    Cpu {
        m: Mutex<Vec<f32>>,
        v: Mutex<Vec<f32>>,
    },
}

/// AdamW exactly as `torch.optim.AdamW`, with its state open for checkpoints (candle's keeps
/// its moments private, which rules out exact resume).
#[derive(Debug)]
pub struct AdamW {
    params: Vec<(String, Var)>,
    moments: Vec<Moments>,
    /// Updates taken so far (bias correction uses it).
    pub steps: usize,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

fn fused_cpu(var: &Var) -> bool {
    var.device().is_cpu() && var.dtype() == DType::F32
}

impl AdamW {
    /// Every variable of `varmap`, in name order, with torch's betas and epsilon.
    pub fn new(varmap: &VarMap, weight_decay: f64) -> Result<Self> {
        let data = varmap.data().lock().expect("varmap lock");
        let mut params: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let moments = params
            .iter()
            .map(|(_, v)| {
                Ok(if fused_cpu(v) {
                    let n = v.elem_count();
                    Moments::Cpu {
                        m: Mutex::new(vec![0.0; n]),
                        v: Mutex::new(vec![0.0; n]),
                    }
                } else {
                    Moments::Tensors {
                        m: v.as_tensor().zeros_like()?,
                        v: v.as_tensor().zeros_like()?,
                    }
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            params,
            moments,
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

    /// One update at learning rate `lr`, with every gradient first multiplied by `grad_scale`
    /// (the clipping coefficient): decoupled weight decay, then the bias-corrected Adam step.
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.steps += 1;
        let t = i32::try_from(self.steps).unwrap_or(i32::MAX);
        let update = Update {
            decay: 1.0 - lr * self.weight_decay,
            beta1: self.beta1,
            beta2: self.beta2,
            step_size: lr / (1.0 - self.beta1.powi(t)),
            bc2_sqrt: (1.0 - self.beta2.powi(t)).sqrt(),
            eps: self.eps,
            grad_scale,
        };
        for ((_, var), moments) in self.params.iter().zip(&mut self.moments) {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            match moments {
                Moments::Cpu { m, v } => {
                    let op = FusedAdamW { m, v, u: update };
                    var.as_tensor().inplace_op2(&g.contiguous()?, &op)?;
                }
                Moments::Tensors { m, v } => update.with_tensors(var, g, m, v)?,
            }
        }
        Ok(())
    }

    /// The moments, named `m.<param>` and `v.<param>`, for a checkpoint.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for ((name, var), moments) in self.params.iter().zip(&self.moments) {
            let (m, v) = match moments {
                Moments::Tensors { m, v } => (m.clone(), v.clone()),
                Moments::Cpu { m, v } => {
                    let t = |x: &Mutex<Vec<f32>>| {
                        Tensor::from_slice(&x.lock().expect("moments"), var.shape(), var.device())
                    };
                    (t(m)?, t(v)?)
                }
            };
            out.insert(format!("m.{name}"), m);
            out.insert(format!("v.{name}"), v);
        }
        Ok(out)
    }

    /// Restores moments saved by [`AdamW::state`]; every parameter must have both.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, steps: usize) -> Result<()> {
        for ((name, var), moments) in self.params.iter().zip(&mut self.moments) {
            let get = |prefix: &str| -> Result<Tensor> {
                let key = format!("{prefix}.{name}");
                let t = state.get(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state has no {key}"))
                })?;
                t.to_dtype(var.dtype())?.to_device(var.device())
            };
            let (m, v) = (get("m")?, get("v")?);
            *moments = match moments {
                Moments::Tensors { .. } => Moments::Tensors { m, v },
                Moments::Cpu { .. } => Moments::Cpu {
                    m: Mutex::new(m.flatten_all()?.to_vec1()?),
                    v: Mutex::new(v.flatten_all()?.to_vec1()?),
                },
            };
        }
        self.steps = steps;
        Ok(())
    }
}

/// The scalars of one AdamW update.
#[derive(Debug, Clone, Copy)]
struct Update {
    decay: f64,
    beta1: f64,
    beta2: f64,
    step_size: f64,
    bc2_sqrt: f64,
    eps: f64,
    grad_scale: f64,
}

impl Update {
    fn with_tensors(&self, var: &Var, g: &Tensor, m: &mut Tensor, v: &mut Tensor) -> Result<()> {
        let g = (g * self.grad_scale)?;
        *m = ((&*m * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
        *v = ((&*v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
        let denom = ((v.sqrt()? / self.bc2_sqrt)? + self.eps)?;
        let next = ((var.as_tensor() * self.decay)? - ((&*m / denom)? * self.step_size)?)?;
        var.set(&next)
    }
}

/// Parameters from which the CPU update splits over rayon's pool, and the size of each task.
const PARALLEL_MIN_PARAMS: usize = 64 * 1024;
const PARALLEL_CHUNK: usize = 16 * 1024;

/// One task's `(((parameter, gradient), m), v)`.
type Slices<'a> = (((&'a mut [f32], &'a [f32]), &'a mut [f32]), &'a mut [f32]);

/// The CPU update: one pass over parameter, gradient and both moments, in place.
struct FusedAdamW<'a> {
    m: &'a Mutex<Vec<f32>>,
    v: &'a Mutex<Vec<f32>>,
    u: Update,
}

impl InplaceOp2 for FusedAdamW<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            return Err(candle_core::Error::Msg(
                "fused AdamW updates f32 parameters only".into(),
            ));
        };
        let not_contiguous =
            || candle_core::Error::Msg("fused AdamW needs contiguous tensors".into());
        let (ps, pe) = l1.contiguous_offsets().ok_or_else(not_contiguous)?;
        let (gs, ge) = l2.contiguous_offsets().ok_or_else(not_contiguous)?;
        let mut m = self.m.lock().expect("moments");
        let mut v = self.v.lock().expect("moments");
        let u = self.u;
        // Constants are formed in f64 and rounded once, as torch does: 1 − 0.999f32 ≠ 0.001f32.
        let (b1, b2) = (u.beta1 as f32, u.beta2 as f32);
        let (c1, c2) = ((1.0 - u.beta1) as f32, (1.0 - u.beta2) as f32);
        let (scale, decay, step, bc2, eps) = (
            u.grad_scale as f32,
            u.decay as f32,
            u.step_size as f32,
            u.bc2_sqrt as f32,
            u.eps as f32,
        );
        let update = |(((p, g), m), v): Slices| {
            for (((p, g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                let g = g * scale;
                *m = b1 * *m + c1 * g;
                *v = b2 * *v + g * g * c2;
                *p = *p * decay - (*m / (v.sqrt() / bc2 + eps)) * step;
            }
        };
        let (p, g) = (&mut p[ps..pe], &g[gs..ge]);
        // Each element's update is independent: splitting changes no result, only the time (a
        // square root and a division per element make the update compute-bound).
        if p.len() >= PARALLEL_MIN_PARAMS {
            (p.par_chunks_mut(PARALLEL_CHUNK)
                .zip(g.par_chunks(PARALLEL_CHUNK)))
            .zip(m.par_chunks_mut(PARALLEL_CHUNK))
            .zip(v.par_chunks_mut(PARALLEL_CHUNK))
            .for_each(update);
        } else {
            update((((p, g), &mut m[..]), &mut v[..]));
        }
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
    fn clipping_reports_the_norm_before_and_the_coefficient_torch_uses() {
        let a = Var::new(&[3.0f32], &Device::Cpu).unwrap();
        let b = Var::new(&[4.0f32], &Device::Cpu).unwrap();
        let loss = ((a.as_tensor().sqr().unwrap() + b.as_tensor().sqr().unwrap()).unwrap() * 0.5)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let norm = grad_norm(&grads, &[a, b]).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((clip_coefficient(norm, 1.0) - 1.0 / (5.0 + 1e-6)).abs() < 1e-12);
        assert_eq!(clip_coefficient(0.5, 1.0), 1.0);
    }

    /// The fused CPU update and the tensor update agree.
    #[test]
    fn sums_of_squares_match_the_tensor_form() {
        // Below and above the size from which the sum splits over rayon's pool.
        for n in [1001, 300_007] {
            let g = (Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap() * 0.37)
                .unwrap()
                .sin()
                .unwrap();
            let want = f64::from(
                g.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
            );
            let got = sum_of_squares(&g).unwrap();
            assert!((got - want).abs() <= 1e-5 * want, "{n}: {got} vs {want}");
            // A strided view takes the tensor form.
            let t = g
                .narrow(0, 0, 1000)
                .unwrap()
                .reshape((10, 100))
                .unwrap()
                .t()
                .unwrap();
            let want = f64::from(
                t.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
            );
            assert!((sum_of_squares(&t).unwrap() - want).abs() <= 1e-5 * want);
        }
    }

    #[test]
    fn fused_and_tensor_updates_agree() {
        // The second shape is large enough for the fused update to split over rayon's pool.
        for shape in [(3, 2), (300, 300)] {
            let n = shape.0 * shape.1;
            let weights = (Tensor::arange(1f32, n as f32 + 1.0, &Device::Cpu).unwrap())
                .reshape(shape)
                .unwrap();
            let run = |fused: bool| -> Vec<f32> {
                let varmap = VarMap::new();
                let init = candle_nn::Init::Const(0.5);
                let w = (varmap.get(shape, "w", init, DType::F32, &Device::Cpu)).unwrap();
                let mut opt = AdamW::new(&varmap, 0.01).unwrap();
                if !fused {
                    for m in &mut opt.moments {
                        *m = Moments::Tensors {
                            m: w.zeros_like().unwrap(),
                            v: w.zeros_like().unwrap(),
                        };
                    }
                }
                for _ in 0..3 {
                    let loss = (w.sqr().unwrap() * &weights).unwrap().sum_all().unwrap();
                    opt.step(&loss.backward().unwrap(), 1e-2, 0.5).unwrap();
                }
                w.flatten_all().unwrap().to_vec1().unwrap()
            };
            let (a, b) = (run(true), run(false));
            assert!(
                a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6),
                "{shape:?}: {:?} vs {:?}",
                &a[..4],
                &b[..4]
            );
            assert!(a[0] < 0.5);
        }
    }
}
