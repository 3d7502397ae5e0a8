//! RMSNorm `x / sqrt(mean(x²) + eps) · w` over the last dimension, as one op.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, WithDType, bail};
use rayon::prelude::*;

use super::{Real, contiguous, parallel, with_slices};

/// Rows per task of the weight-gradient reduction: a fixed split keeps the sum's order, and
/// so the gradient, the same from run to run whatever the thread count.
const ROWS_PER_PARTIAL: usize = 32;

/// `x (…, h)`, `weight (h,)`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps })
}

struct RmsNorm {
    eps: f64,
}

impl RmsNorm {
    fn inv_rms<T: Real>(&self, row: &[T]) -> T {
        let n = T::from_f64(row.len() as f64);
        let mean_square = row.iter().map(|&v| v * v).sum::<T>() / n;
        (mean_square + T::from_f64(self.eps)).sqrt().recip()
    }

    fn forward<T: Real>(&self, x: &[T], w: &[T]) -> Vec<T> {
        let mut y = vec![T::zero(); x.len()];
        let row = |(yr, xr): (&mut [T], &[T])| {
            let r = self.inv_rms(xr);
            for ((yi, &xi), &wi) in yr.iter_mut().zip(xr).zip(w) {
                *yi = xi * r * wi;
            }
        };
        let h = w.len();
        if parallel(x.len()) {
            y.par_chunks_mut(h).zip(x.par_chunks(h)).for_each(row);
        } else {
            y.chunks_mut(h).zip(x.chunks(h)).for_each(row);
        }
        y
    }

    /// With `x̂ = x·r`: `dw = Σ_rows g·x̂`, `dx = r·(g·w − x̂·mean(g·w·x̂))`.
    fn backward<T: Real>(&self, x: &[T], w: &[T], g: &[T]) -> (Vec<T>, Vec<T>) {
        let h = w.len();
        let mut dx = vec![T::zero(); x.len()];
        let block = ROWS_PER_PARTIAL * h;
        let rows = |(dxb, (xb, gb)): (&mut [T], (&[T], &[T]))| {
            let mut dw = vec![T::zero(); h];
            for ((dxr, xr), gr) in dxb.chunks_mut(h).zip(xb.chunks(h)).zip(gb.chunks(h)) {
                let r = self.inv_rms(xr);
                let mut proj = T::zero();
                for (((&xi, &gi), &wi), dwi) in xr.iter().zip(gr).zip(w).zip(dw.iter_mut()) {
                    let xhat = xi * r;
                    *dwi += gi * xhat;
                    proj += gi * wi * xhat;
                }
                let proj = proj / T::from_f64(h as f64);
                for (((dxi, &xi), &gi), &wi) in dxr.iter_mut().zip(xr).zip(gr).zip(w) {
                    *dxi = r * (gi * wi - xi * r * proj);
                }
            }
            dw
        };
        let partials: Vec<Vec<T>> = if parallel(x.len()) {
            (dx.par_chunks_mut(block))
                .zip(x.par_chunks(block).zip(g.par_chunks(block)))
                .map(rows)
                .collect()
        } else {
            (dx.chunks_mut(block))
                .zip(x.chunks(block).zip(g.chunks(block)))
                .map(rows)
                .collect()
        };
        let mut dw = vec![T::zero(); h];
        for p in partials {
            for (a, b) in dw.iter_mut().zip(p) {
                *a += b;
            }
        }
        (dx, dw)
    }

    fn grads<T: Real>(&self, x: &Tensor, w: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
        let (dx, dw) = with_slices::<T, _>(&[x, w, g], |s| self.backward(s[0], s[1], s[2]))?;
        Ok((
            Tensor::from_vec(dx, x.shape(), x.device())?,
            Tensor::from_vec(dw, w.shape(), w.device())?,
        ))
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.dims().last() != Some(&l2.shape().elem_count()) {
            bail!("rms_norm: x {:?} and weight {:?}", l1.dims(), l2.dims());
        }
        let out = match s1.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(
                self.forward::<f32>(contiguous(s1, l1)?, contiguous(s2, l2)?),
            ),
            DType::F64 => f64::to_cpu_storage_owned(
                self.forward::<f64>(contiguous(s1, l1)?, contiguous(s2, l2)?),
            ),
            dt => bail!("rms_norm: unsupported dtype {dt:?}"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dx, dw) = match x.dtype() {
            DType::F32 => self.grads::<f32>(x, w, &grad)?,
            DType::F64 => self.grads::<f64>(x, w, &grad)?,
            dt => bail!("rms_norm: unsupported dtype {dt:?}"),
        };
        Ok((Some(dx), Some(dw)))
    }
}
