//! The transpose of a matrix, materialised: tile by tile and split over rayon. candle's
//! `t()?.contiguous()` copies it element by element on one thread, which for the dense weights of
//! an inference copy of the model ([`super::super::layers::Dense::for_inference`]) took about half
//! a second of each generation from SmolLM2-135M on two cores.

use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;

use super::{parallel, supported, with_slices};

/// Side of the square tiles: a tile's source rows and destination rows stay in L1.
const TILE: usize = 32;

/// `x (rows, cols)` as a contiguous `(cols, rows)` tensor, detached from the autograd graph.
pub fn transpose(x: &Tensor) -> Result<Tensor> {
    if !supported(x) {
        return Ok(x.t()?.contiguous()?.detach());
    }
    let (rows, cols) = x.dims2()?;
    let x = x.contiguous()?;
    if x.dtype() == DType::F32 {
        let out = with_slices::<f32, _>(&[&x], |s| transposed(s[0], rows, cols))?;
        Tensor::from_vec(out, (cols, rows), x.device())
    } else {
        let out = with_slices::<f64, _>(&[&x], |s| transposed(s[0], rows, cols))?;
        Tensor::from_vec(out, (cols, rows), x.device())
    }
}

fn transposed<T: Copy + Default + Send + Sync>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::default(); rows * cols];
    // One task per band of `TILE` destination rows (source columns `c0..c0 + TILE`).
    let band = |(b, dst): (usize, &mut [T])| {
        let c0 = b * TILE;
        let width = dst.len() / rows;
        for r0 in (0..rows).step_by(TILE) {
            for c in 0..width {
                for r in r0..(r0 + TILE).min(rows) {
                    dst[c * rows + r] = src[r * cols + c0 + c];
                }
            }
        }
    };
    if rows == 0 || cols == 0 {
        return out;
    }
    if parallel(rows * cols) {
        out.par_chunks_mut(TILE * rows).enumerate().for_each(band);
    } else {
        out.chunks_mut(TILE * rows).enumerate().for_each(band);
    }
    out
}
