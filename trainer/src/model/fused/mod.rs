//! Fused CPU kernels for the decoder's element-wise and attention blocks, each a candle custom op
//! with an explicit backward pass. candle's autograd pays, per recorded op, one backward op plus a
//! zero-filled gradient and an addition per input; the composite RMSNorm, SwiGLU and attention of
//! [`super::layers`] record some 40 ops per layer, these three ops record one each. The
//! next-token log-probabilities over the vocabulary are a fourth.
//!
//! They run on CPU in f32 and f64; other devices and dtypes keep the composite path (see
//! [`supported`]).

mod attention;
mod rms_norm;
mod swiglu;
mod token_logps;
mod transpose;

use candle_core::{CpuStorage, DType, Device, Layout, Result, Storage, Tensor, WithDType, bail};

pub use attention::{HeadLayout, Segment, causal_attention};
pub use rms_norm::rms_norm;
pub use swiglu::swiglu;
pub use token_logps::token_logps;
pub use transpose::transpose;

/// Work (elements touched) from which a kernel splits over rayon's pool when called from outside
/// it: handing work over then costs a wake-up and a blocking wait, more than a small kernel takes.
pub(super) const PARALLEL_MIN_WORK: usize = 64 * 1024;

/// The same from a thread of the pool (training steps run inside candle's), where splitting
/// costs little.
const PARALLEL_MIN_WORK_IN_POOL: usize = 4 * 1024;

fn parallel(work: usize) -> bool {
    if rayon::current_thread_index().is_some() {
        work >= PARALLEL_MIN_WORK_IN_POOL
    } else {
        work >= PARALLEL_MIN_WORK
    }
}

/// Whether the fused kernels handle `t` (CPU, f32 or f64).
pub fn supported(t: &Tensor) -> bool {
    supported_for(t.device(), t.dtype())
}

/// Whether the fused kernels handle tensors of `dtype` on `device`.
pub fn supported_for(device: &Device, dtype: DType) -> bool {
    device.is_cpu() && matches!(dtype, DType::F32 | DType::F64) && !composite_forced()
}

#[cfg(not(test))]
fn composite_forced() -> bool {
    false
}

#[cfg(test)]
thread_local! {
    static COMPOSITE_FORCED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
fn composite_forced() -> bool {
    COMPOSITE_FORCED.get()
}

/// Runs `f` with the fused kernels off on this thread, so that CPU tensors take the composite
/// ops other devices (CUDA) take: the tests hold the two paths to each other on a CPU.
#[cfg(test)]
pub fn with_composite_ops<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            COMPOSITE_FORCED.set(self.0);
        }
    }
    let _restore = Restore(COMPOSITE_FORCED.replace(true));
    f()
}

/// The float types the kernels are written for.
trait Real: WithDType + num_traits::Float + std::iter::Sum {}
impl Real for f32 {}
impl Real for f64 {}

/// The elements of a contiguous CPU tensor, in order.
fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<T>()?[start..end]),
        None => bail!("fused kernel given a non-contiguous tensor"),
    }
}

/// Runs `f` on the elements of contiguous CPU tensors (the backward passes get tensors, not
/// storages).
fn with_slices<T: WithDType, R>(tensors: &[&Tensor], f: impl FnOnce(&[&[T]]) -> R) -> Result<R> {
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let slices = guards
        .iter()
        .map(|(storage, layout)| match &**storage {
            Storage::Cpu(s) => contiguous::<T>(s, layout),
            _ => bail!("fused kernel given a tensor off the CPU"),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(f(&slices))
}

/// Dot product in eight independent lanes, which the compiler turns into SIMD (a plain
/// sequential sum of floats cannot be reordered).
#[inline]
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut lanes = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: T = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().copied().sum::<T>() + tail
}

/// `y += a·x`.
#[inline]
fn axpy<T: Real>(a: T, x: &[T], y: &mut [T]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

#[cfg(test)]
mod tests;
