//! The SwiGLU gate `silu(gate) · up` as one op.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType, bail};
use rayon::prelude::*;

use super::{Real, contiguous, parallel, with_slices};

/// Elements per parallel task: element-wise work this small is not worth finer splitting.
const CHUNK: usize = 8192;

/// `silu(gate) · up`, both of the same shape.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

struct SwiGlu;

fn sigmoid<T: Real>(x: T) -> T {
    (T::one() + (-x).exp()).recip()
}

fn forward<T: Real>(gate: &[T], up: &[T]) -> Vec<T> {
    let mut y = vec![T::zero(); gate.len()];
    let chunk = |(yc, (gc, uc)): (&mut [T], (&[T], &[T]))| {
        for ((yi, &g), &u) in yc.iter_mut().zip(gc).zip(uc) {
            *yi = g * sigmoid(g) * u;
        }
    };
    if parallel(gate.len()) {
        (y.par_chunks_mut(CHUNK))
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
            .for_each(chunk);
    } else {
        (y.chunks_mut(CHUNK))
            .zip(gate.chunks(CHUNK).zip(up.chunks(CHUNK)))
            .for_each(chunk);
    }
    y
}

/// One task's slices in the backward pass: `((d gate, d up), (gate, up)), dy`.
type Chunks<'a, T> = (((&'a mut [T], &'a mut [T]), (&'a [T], &'a [T])), &'a [T]);

/// `d gate = dy·u·s·(1 + g·(1 − s))`, `d up = dy·g·s`, with `s = sigmoid(g)`.
fn backward<T: Real>(gate: &[T], up: &[T], dy: &[T]) -> (Vec<T>, Vec<T>) {
    let mut dgate = vec![T::zero(); gate.len()];
    let mut dup = vec![T::zero(); gate.len()];
    let chunk = |(((dgc, duc), (gc, uc)), dyc): Chunks<T>| {
        for ((((dg, du), &g), &u), &d) in dgc.iter_mut().zip(duc).zip(gc).zip(uc).zip(dyc) {
            let s = sigmoid(g);
            *dg = d * u * s * (T::one() + g * (T::one() - s));
            *du = d * g * s;
        }
    };
    if parallel(gate.len()) {
        (dgate.par_chunks_mut(CHUNK).zip(dup.par_chunks_mut(CHUNK)))
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
            .zip(dy.par_chunks(CHUNK))
            .for_each(chunk);
    } else {
        (dgate.chunks_mut(CHUNK).zip(dup.chunks_mut(CHUNK)))
            .zip(gate.chunks(CHUNK).zip(up.chunks(CHUNK)))
            .zip(dy.chunks(CHUNK))
            .for_each(chunk);
    }
    (dgate, dup)
}

fn grads<T: Real>(gate: &Tensor, up: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let (dg, du) = with_slices::<T, _>(&[gate, up, dy], |s| backward(s[0], s[1], s[2]))?;
    Ok((
        Tensor::from_vec(dg, gate.shape(), gate.device())?,
        Tensor::from_vec(du, up.shape(), up.device())?,
    ))
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!("swiglu: gate {:?} and up {:?}", l1.dims(), l2.dims());
        }
        let out = match s1.dtype() {
            DType::F32 => {
                f32::to_cpu_storage_owned(forward::<f32>(contiguous(s1, l1)?, contiguous(s2, l2)?))
            }
            DType::F64 => {
                f64::to_cpu_storage_owned(forward::<f64>(contiguous(s1, l1)?, contiguous(s2, l2)?))
            }
            dt => bail!("swiglu: unsupported dtype {dt:?}"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dg, du) = match gate.dtype() {
            DType::F32 => grads::<f32>(gate, up, &grad)?,
            DType::F64 => grads::<f64>(gate, up, &grad)?,
            dt => bail!("swiglu: unsupported dtype {dt:?}"),
        };
        Ok((Some(dg), Some(du)))
    }
}
