//! Causal self-attention after the projections, as one op: rotary embeddings on queries and keys,
//! grouped-query heads, `softmax(q·kᵀ/√d + causal mask)·v`. The backward pass recomputes the
//! attention probabilities rather than keeping them. A row may hold a packed preference pair
//! ([`Segment`]), whose two completions share one pass over their prompt.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType, bail};
use rayon::prelude::*;

use super::{Real, axpy, contiguous, dot, parallel, with_slices};

/// The head layout of the projections.
#[derive(Debug, Clone, Copy)]
pub struct HeadLayout {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// A row holding a preference pair: `prompt` tokens, the first `chosen` tokens of the chosen
/// completion, then the rejected completion. The rejected tokens see the prompt but not the chosen
/// ones, and take the positions that follow the prompt, so each completion is computed exactly as
/// in a row of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub prompt: usize,
    pub chosen: usize,
}

impl Segment {
    /// The rotary position of row index `i`.
    fn position(self, i: usize) -> usize {
        if i >= self.prompt + self.chosen {
            i - self.chosen
        } else {
            i
        }
    }

    /// Whether query `i` must not see key `j < i`.
    fn hides(self, i: usize, j: usize) -> bool {
        i >= self.prompt + self.chosen && (self.prompt..self.prompt + self.chosen).contains(&j)
    }
}

/// `q (b·t, heads·d)`, `k` and `v (b·t, kv_heads·d)`, as the projections give them for `b`
/// sequences of `t` tokens; returns `(b·t, heads·d)`. `inv_freq` are the rotary frequencies
/// (`d/2` of them). `segments`: empty for plain rows, else one per row.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    t: usize,
    layout: HeadLayout,
    inv_freq: &[f32],
    segments: &[Segment],
) -> Result<Tensor> {
    // As transformers: angles and their cos/sin in f32, whatever the model's dtype.
    let angles = (0..t).flat_map(|p| inv_freq.iter().map(move |&f| p as f32 * f));
    let op = CausalAttention {
        layout,
        seq: t,
        cos: angles.clone().map(f32::cos).collect(),
        sin: angles.map(f32::sin).collect(),
        segments: segments.to_vec(),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

struct CausalAttention {
    layout: HeadLayout,
    seq: usize,
    /// `(t, d/2)` tables of the rotary angles.
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// Empty, or the pair packed in each row.
    segments: Vec<Segment>,
}

/// Slices and sizes of one batch row's work, in the op's float type.
struct Kernel<T> {
    t: usize,
    hq: usize,
    hkv: usize,
    d: usize,
    scale: T,
    cos: Vec<T>,
    sin: Vec<T>,
}

/// The row a kernel call works on: its pair layout, if packed.
type Row = Option<Segment>;

impl<T: Real> Kernel<T> {
    fn new(op: &CausalAttention, t: usize) -> Self {
        let HeadLayout {
            heads,
            kv_heads,
            head_dim,
        } = op.layout;
        let table = |v: &[f32]| v.iter().map(|&x| T::from_f64(f64::from(x))).collect();
        Self {
            t,
            hq: heads,
            hkv: kv_heads,
            d: head_dim,
            scale: T::from_f64(1.0 / (head_dim as f64).sqrt()),
            cos: table(&op.cos),
            sin: table(&op.sin),
        }
    }

    fn row<'a>(&self, x: &'a [T], n_heads: usize, pos: usize, head: usize) -> &'a [T] {
        &x[(pos * n_heads + head) * self.d..][..self.d]
    }

    fn row_mut<'a>(&self, x: &'a mut [T], n_heads: usize, pos: usize, head: usize) -> &'a mut [T] {
        &mut x[(pos * n_heads + head) * self.d..][..self.d]
    }

    /// Head `head` of `x (t, n_heads·d)`, rotated: `(t, d)`, `x·cos + rotate_half(x)·sin`.
    fn rotated(&self, x: &[T], n_heads: usize, head: usize, row: Row) -> Vec<T> {
        let half = self.d / 2;
        let mut out = vec![T::zero(); self.t * self.d];
        for (p, o) in out.chunks_mut(self.d).enumerate() {
            let xr = self.row(x, n_heads, p, head);
            let at = row.map_or(p, |s| s.position(p)) * half;
            for i in 0..half {
                let (c, s) = (self.cos[at + i], self.sin[at + i]);
                o[i] = xr[i] * c - xr[i + half] * s;
                o[i + half] = xr[i + half] * c + xr[i] * s;
            }
        }
        out
    }

    /// Adds the gradient of `x` given that of `rotated(x)` (`g`, `(t, d)`) into head `head` of
    /// `dx (t, n_heads·d)`.
    fn unrotate_into(&self, g: &[T], dx: &mut [T], n_heads: usize, head: usize, row: Row) {
        let half = self.d / 2;
        for (p, gr) in g.chunks(self.d).enumerate() {
            let at = row.map_or(p, |s| s.position(p)) * half;
            let (cos, sin) = (&self.cos[at..], &self.sin[at..]);
            let o = self.row_mut(dx, n_heads, p, head);
            for i in 0..half {
                o[i] += gr[i] * cos[i] + gr[i + half] * sin[i];
                o[i + half] += gr[i + half] * cos[i] - gr[i] * sin[i];
            }
        }
    }

    /// Attention probabilities of query `i` over keys `0..=i`, into `probs[..=i]` (0 for the
    /// keys the row's pair layout hides).
    fn probs(&self, qi: &[T], kr: &[T], i: usize, probs: &mut [T], row: Row) {
        let mut max = T::neg_infinity();
        for (j, p) in probs[..=i].iter_mut().enumerate() {
            if row.is_some_and(|s| s.hides(i, j)) {
                *p = T::neg_infinity();
                continue;
            }
            *p = dot(qi, &kr[j * self.d..][..self.d]) * self.scale;
            if *p > max {
                max = *p;
            }
        }
        let mut sum = T::zero();
        for p in &mut probs[..=i] {
            *p = (*p - max).exp();
            sum += *p;
        }
        for p in &mut probs[..=i] {
            *p /= sum;
        }
    }

    /// One batch row: `q (t, hq·d)`, `k`, `v (t, hkv·d)` into `out (t, hq·d)`.
    fn forward(&self, q: &[T], k: &[T], v: &[T], out: &mut [T], row: Row) {
        let n_rep = self.hq / self.hkv;
        let mut probs = vec![T::zero(); self.t];
        for g in 0..self.hkv {
            let kr = self.rotated(k, self.hkv, g, row);
            for h in g * n_rep..(g + 1) * n_rep {
                let qr = self.rotated(q, self.hq, h, row);
                for i in 0..self.t {
                    self.probs(&qr[i * self.d..][..self.d], &kr, i, &mut probs, row);
                    let o = self.row_mut(out, self.hq, i, h);
                    for (j, &p) in probs[..=i].iter().enumerate() {
                        axpy(p, self.row(v, self.hkv, j, g), o);
                    }
                }
            }
        }
    }

    /// One batch row's gradients `dq`, `dk`, `dv` (zero-filled on entry) from `dout`.
    #[expect(
        clippy::too_many_arguments,
        reason = "three inputs, their gradients, dout and the row's layout"
    )]
    fn backward(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        dout: &[T],
        dq: &mut [T],
        dk: &mut [T],
        dv: &mut [T],
        row: Row,
    ) {
        let (d, n_rep) = (self.d, self.hq / self.hkv);
        let mut probs = vec![T::zero(); self.t];
        let mut dscore = vec![T::zero(); self.t];
        for g in 0..self.hkv {
            let kr = self.rotated(k, self.hkv, g, row);
            let mut dkr = vec![T::zero(); self.t * d];
            for h in g * n_rep..(g + 1) * n_rep {
                let qr = self.rotated(q, self.hq, h, row);
                let mut dqr = vec![T::zero(); self.t * d];
                for i in 0..self.t {
                    let qi = &qr[i * d..][..d];
                    self.probs(qi, &kr, i, &mut probs, row);
                    let doi = self.row(dout, self.hq, i, h);
                    // dP_ij = dO_i·v_j; dS_ij = P_ij (dP_ij − Σ_j P_ij dP_ij), times the scale.
                    let mut weighted = T::zero();
                    for (j, (&p, ds)) in probs[..=i].iter().zip(&mut dscore).enumerate() {
                        *ds = dot(doi, self.row(v, self.hkv, j, g));
                        weighted += p * *ds;
                        axpy(p, doi, self.row_mut(dv, self.hkv, j, g));
                    }
                    for (j, (&p, &dp)) in probs[..=i].iter().zip(&dscore).enumerate() {
                        let ds = p * (dp - weighted) * self.scale;
                        axpy(ds, &kr[j * d..][..d], &mut dqr[i * d..][..d]);
                        axpy(ds, qi, &mut dkr[j * d..][..d]);
                    }
                }
                self.unrotate_into(&dqr, dq, self.hq, h, row);
            }
            self.unrotate_into(&dkr, dk, self.hkv, g, row);
        }
    }
}

impl CausalAttention {
    /// Checks the three layouts against the heads and the sequence length.
    fn check(&self, q: &Shape, k: &Shape, v: &Shape) -> Result<()> {
        let HeadLayout {
            heads,
            kv_heads,
            head_dim,
        } = self.layout;
        let (rows, qw) = q.dims2()?;
        if qw != heads * head_dim
            || k.dims() != [rows, kv_heads * head_dim]
            || v.dims() != k.dims()
            || heads % kv_heads != 0
            || head_dim % 2 != 0
            || rows % self.seq != 0
            || self.cos.len() != self.seq * head_dim / 2
            || !(self.segments.is_empty() || self.segments.len() * self.seq == rows)
        {
            bail!(
                "causal_attention: q {q:?}, k {k:?}, v {v:?} do not fit {:?} over {} positions",
                self.layout,
                self.seq
            );
        }
        Ok(())
    }

    fn row(&self, b: usize) -> Row {
        self.segments.get(b).copied()
    }

    fn forward<T: Real>(&self, q: &[T], k: &[T], v: &[T]) -> Vec<T> {
        let t = self.seq;
        let kern = Kernel::<T>::new(self, t);
        let (qn, kn) = (t * kern.hq * kern.d, t * kern.hkv * kern.d);
        let mut out = vec![T::zero(); q.len()];
        let one = |(b, ((o, q), (k, v)))| kern.forward(q, k, v, o, self.row(b));
        if parallel(q.len() * t) {
            (out.par_chunks_mut(qn).zip(q.par_chunks(qn)))
                .zip(k.par_chunks(kn).zip(v.par_chunks(kn)))
                .enumerate()
                .for_each(one);
        } else {
            (out.chunks_mut(qn).zip(q.chunks(qn)))
                .zip(k.chunks(kn).zip(v.chunks(kn)))
                .enumerate()
                .for_each(one);
        }
        out
    }

    fn grads<T: Real>(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        dout: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        self.check(q.shape(), k.shape(), v.shape())?;
        let t = self.seq;
        let kern = Kernel::<T>::new(self, t);
        let (qn, kn) = (t * kern.hq * kern.d, t * kern.hkv * kern.d);
        let mut dq = vec![T::zero(); q.elem_count()];
        let mut dk = vec![T::zero(); k.elem_count()];
        let mut dv = vec![T::zero(); v.elem_count()];
        with_slices::<T, _>(&[q, k, v, dout], |s| {
            let one = |(b, (((dq, (dk, dv)), (q, dout)), (k, v)))| {
                kern.backward(q, k, v, dout, dq, dk, dv, self.row(b));
            };
            if parallel(dq.len() * t) {
                (dq.par_chunks_mut(qn))
                    .zip(dk.par_chunks_mut(kn).zip(dv.par_chunks_mut(kn)))
                    .zip(s[0].par_chunks(qn).zip(s[3].par_chunks(qn)))
                    .zip(s[1].par_chunks(kn).zip(s[2].par_chunks(kn)))
                    .enumerate()
                    .for_each(one);
            } else {
                (dq.chunks_mut(qn))
                    .zip(dk.chunks_mut(kn).zip(dv.chunks_mut(kn)))
                    .zip(s[0].chunks(qn).zip(s[3].chunks(qn)))
                    .zip(s[1].chunks(kn).zip(s[2].chunks(kn)))
                    .enumerate()
                    .for_each(one);
            }
        })?;
        Ok((
            Tensor::from_vec(dq, q.shape(), q.device())?,
            Tensor::from_vec(dk, k.shape(), k.device())?,
            Tensor::from_vec(dv, v.shape(), v.device())?,
        ))
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.check(l1.shape(), l2.shape(), l3.shape())?;
        let out = match s1.dtype() {
            DType::F32 => f32::to_cpu_storage_owned(self.forward::<f32>(
                contiguous(s1, l1)?,
                contiguous(s2, l2)?,
                contiguous(s3, l3)?,
            )),
            DType::F64 => f64::to_cpu_storage_owned(self.forward::<f64>(
                contiguous(s1, l1)?,
                contiguous(s2, l2)?,
                contiguous(s3, l3)?,
            )),
            dt => bail!("causal_attention: unsupported dtype {dt:?}"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dq, dk, dv) = match q.dtype() {
            DType::F32 => self.grads::<f32>(q, k, v, &grad)?,
            DType::F64 => self.grads::<f64>(q, k, v, &grad)?,
            dt => bail!("causal_attention: unsupported dtype {dt:?}"),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
