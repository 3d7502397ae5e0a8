//! Next-token log-probabilities `log_softmax(logits)[next id]` as one op: the composite form
//! records a narrow, the log-softmax's five ops and a gather over the whole `(b, t, vocab)` block.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType, bail};
use rayon::prelude::*;

use super::{Real, contiguous, parallel, with_slices};

/// `logits (b, t, v)` scored against `input_ids (b, t)`: position `i` of the result `(b, t-1)`
/// is `log p(input[i+1] | input[..=i])`.
pub fn token_logps(logits: &Tensor, input_ids: &Tensor) -> Result<Tensor> {
    let ids = input_ids.to_dtype(DType::U32)?.contiguous()?;
    logits.contiguous()?.apply_op2(&ids, TokenLogps)
}

struct TokenLogps;

/// `log Σ exp(row)`, shifted by the maximum as the composite form is.
fn log_sum_exp<T: Real>(row: &[T]) -> T {
    let max = row
        .iter()
        .copied()
        .fold(T::neg_infinity(), num_traits::Float::max);
    max + row.iter().map(|&x| (x - max).exp()).sum::<T>().ln()
}

fn forward<T: Real>(logits: &[T], ids: &[u32], t: usize, v: usize) -> Vec<T> {
    let scored = t - 1;
    // Output element k scores row (b, i) of the logits against the id at (b, i + 1).
    let one = |k: usize| {
        let (b, i) = (k / scored, k % scored);
        let r = &logits[(b * t + i) * v..][..v];
        r[ids[b * t + i + 1] as usize] - log_sum_exp(r)
    };
    let n = ids.len() / t * scored;
    if parallel(logits.len()) {
        (0..n).into_par_iter().map(one).collect()
    } else {
        (0..n).map(one).collect()
    }
}

/// `d logits = g·(onehot(id) − softmax(logits))` at scored positions, zero at the last one.
fn backward<T: Real>(logits: &[T], ids: &[u32], g: &[T], t: usize, v: usize) -> Vec<T> {
    let mut d = vec![T::zero(); logits.len()];
    let sequence = |(b, db): (usize, &mut [T])| {
        for i in 0..t - 1 {
            let row = (b * t + i) * v;
            let (r, dr) = (&logits[row..][..v], &mut db[i * v..][..v]);
            let (gi, lse) = (g[b * (t - 1) + i], log_sum_exp(r));
            for (dx, &x) in dr.iter_mut().zip(r) {
                *dx = -gi * (x - lse).exp();
            }
            dr[ids[b * t + i + 1] as usize] += gi;
        }
    };
    if parallel(logits.len()) {
        d.par_chunks_mut(t * v).enumerate().for_each(sequence);
    } else {
        d.chunks_mut(t * v).enumerate().for_each(sequence);
    }
    d
}

fn grad<T: Real>(logits: &Tensor, ids: &Tensor, g: &Tensor) -> Result<Tensor> {
    let (_, t, v) = logits.dims3()?;
    let ids = ids.flatten_all()?.to_vec1::<u32>()?;
    let d = with_slices::<T, _>(&[logits, g], |s| backward(s[0], &ids, s[1], t, v))?;
    Tensor::from_vec(d, logits.shape(), logits.device())
}

impl CustomOp2 for TokenLogps {
    fn name(&self) -> &'static str {
        "fused-token-logps"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, t, v) = l1.shape().dims3()?;
        if l2.dims() != [b, t] || t < 2 {
            bail!("token_logps: logits {:?}, ids {:?}", l1.dims(), l2.dims());
        }
        let ids: &[u32] = contiguous(s2, l2)?;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= v) {
            bail!("token_logps: id {bad} outside a vocabulary of {v}");
        }
        let out = match s1.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(forward::<f32>(contiguous(s1, l1)?, ids, t, v)),
            DType::F64 => f64::to_cpu_storage_owned(forward::<f64>(contiguous(s1, l1)?, ids, t, v)),
            dt => bail!("token_logps: unsupported dtype {dt:?}"),
        };
        Ok((out, Shape::from((b, t - 1))))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        ids: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let d = match logits.dtype() {
            DType::F32 => grad::<f32>(logits, ids, &g)?,
            DType::F64 => grad::<f64>(logits, ids, &g)?,
            dt => bail!("token_logps: unsupported dtype {dt:?}"),
        };
        Ok((Some(d), None))
    }
}
