//! Inference with a key/value cache. Each layer keeps the keys (rotary embedding applied) and the
//! values of every position seen so far, so generation runs a prompt through the model once and
//! then one position per new token, where [`Decoder::forward`] would run the whole sequence again
//! for each.
//!
//! Rows stay aligned: every row's next token takes the same slot. Prompts of different lengths
//! are left-padded ([`Decoder::prefill`]): row `b`'s tokens start at slot `starts[b]`, its rotary
//! positions count from there, and its tokens never attend to the slots before it.
//!
//! Inference only: the cache holds detached tensors and the attention here has no fused backward
//! pass; training keeps [`Decoder::forward`]. It is written with plain candle ops, so it runs on
//! every device and dtype the model does.

use candle_core::{DType, Device, Module, Result, Tensor, bail};
use candle_nn::Embedding;

use super::Decoder;
use super::fused::HeadLayout;
use super::layers::{Attention, Block, Dense, Rotary, apply_rotary};

/// One layer's keys and values, each `(rows, kv_heads, capacity, head_dim)`; the slots from the
/// cache's `len` on are free.
#[derive(Debug)]
struct LayerKv {
    keys: Tensor,
    values: Tensor,
}

/// The keys and values of the positions a batch of rows has seen, per layer. Not `Clone`: new
/// positions are written into the tensors in place, so a shallow copy would see them too.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    /// Slots filled, the same for every row.
    len: usize,
    /// Slots allocated.
    capacity: usize,
    /// Per row, the first slot holding one of its tokens (the slots before it are padding).
    starts: Vec<usize>,
}

impl KvCache {
    pub fn rows(&self) -> usize {
        self.starts.len()
    }

    /// Positions seen by row `row` (its prompt and what followed).
    pub fn seen(&self, row: usize) -> usize {
        self.len - self.starts[row]
    }

    /// Makes room for `n` more slots, growing the tensors (a copy) when they are full.
    fn reserve(&mut self, n: usize) -> Result<()> {
        if self.len + n <= self.capacity {
            return Ok(());
        }
        let capacity = (self.len + n).max(2 * self.capacity);
        let more = capacity - self.capacity;
        for kv in &mut self.layers {
            kv.keys = kv.keys.pad_with_zeros(2, 0, more)?;
            kv.values = kv.values.pad_with_zeros(2, 0, more)?;
        }
        self.capacity = capacity;
        Ok(())
    }

    /// Keeps the rows `keep` (indices into the current rows, in the order given), as generation
    /// drops rows that have finished.
    pub fn retain(&mut self, keep: &[usize]) -> Result<()> {
        if let Some(&bad) = keep.iter().find(|&&r| r >= self.rows()) {
            bail!("retain: row {bad} of a cache of {} rows", self.rows());
        }
        let Some(first) = self.layers.first() else {
            self.starts = keep.iter().map(|&r| self.starts[r]).collect();
            return Ok(());
        };
        let index: Vec<u32> = keep.iter().map(|&r| r as u32).collect();
        let index = Tensor::from_vec(index, keep.len(), first.keys.device())?;
        for kv in &mut self.layers {
            kv.keys = kv.keys.index_select(&index, 0)?;
            kv.values = kv.values.index_select(&index, 0)?;
        }
        self.starts = keep.iter().map(|&r| self.starts[r]).collect();
        Ok(())
    }
}

/// What attention needs about the `n` new positions of each row, shared by the layers.
struct Step {
    rows: usize,
    n: usize,
    /// Slots filled before this step: the new positions take slots `len..len + n`.
    len: usize,
    /// Rotary tables `(rows·n, 1, head_dim)`, broadcast over the heads.
    cos: Tensor,
    sin: Tensor,
    /// Additive mask `(rows, 1, 1, n, len + n)`: a new position sees its row's slots from the
    /// row's start up to itself; a padding position sees only itself. (With all its scores
    /// masked, a padding position's softmax would be NaN, and so would the keys and values it
    /// writes, which turn even a masked score NaN.)
    mask: Tensor,
}

impl Step {
    fn new(
        rotary: &Rotary,
        cache: &KvCache,
        n: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (rows, len) = (cache.rows(), cache.len);
        let total = len + n;
        // As `Rotary::tables`: angle = position · inverse frequency in f32, each half repeated.
        let inv_freq = rotary.inv_freq();
        let half = inv_freq.len();
        let mut angles = Vec::with_capacity(rows * n * 2 * half);
        let mut mask = Vec::with_capacity(rows * n * total);
        for &start in &cache.starts {
            for i in 0..n {
                let slot = len + i;
                let position = slot.saturating_sub(start) as f32;
                for _ in 0..2 {
                    angles.extend(inv_freq.iter().map(|&f| position * f));
                }
                mask.extend((0..total).map(|j| {
                    if j > slot || (j < start && j != slot) {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                }));
            }
        }
        let angles = Tensor::from_vec(angles, (rows * n, 1, 2 * half), device)?;
        Ok(Self {
            rows,
            n,
            len,
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
            mask: Tensor::from_vec(mask, (rows, 1, 1, n, total), device)?.to_dtype(dtype)?,
        })
    }
}

/// Attention of the step's new positions `x (rows·n, hidden)` (already normed), after writing
/// their keys and values into `kv`.
fn attend(attn: &Attention, x: &Tensor, kv: &mut LayerKv, at: &Step) -> Result<Tensor> {
    let HeadLayout {
        heads,
        kv_heads,
        head_dim: d,
    } = attn.layout();
    let (rows, n) = (at.rows, at.n);
    let (q, k, v) = attn.project(x)?;
    let q = apply_rotary(&q.reshape((rows * n, heads, d))?, &at.cos, &at.sin)?;
    let k = apply_rotary(&k.reshape((rows * n, kv_heads, d))?, &at.cos, &at.sin)?;
    // Into the cache's layout `(rows, kv_heads, n, d)`, off the autograd graph: the cache outlives
    // the step, and a recorded op would keep every step's activations alive with it.
    let cached = |t: &Tensor| -> Result<Tensor> {
        t.reshape((rows, n, kv_heads, d))?
            .transpose(1, 2)?
            .contiguous()
            .map(|t| t.detach())
    };
    kv.keys.slice_set(&cached(&k)?, 2, at.len)?;
    kv.values.slice_set(&cached(&v)?, 2, at.len)?;
    let total = at.len + n;
    let (keys, values) = (kv.keys.narrow(2, 0, total)?, kv.values.narrow(2, 0, total)?);
    // Grouped-query attention without copying keys per query head: the query heads a key/value
    // head serves are adjacent (transformers' order), so `(rows, heads, n, d)` regroups as
    // `(rows, kv_heads, n_rep·n, d)` and each group is one product with its key/value head.
    let n_rep = heads / kv_heads;
    let q = q
        .reshape((rows, n, heads, d))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, kv_heads, n_rep * n, d))?;
    let scale = 1.0 / (d as f64).sqrt();
    let scores = (q.matmul(&keys.t()?)? * scale)?
        .reshape((rows, kv_heads, n_rep, n, total))?
        .broadcast_add(&at.mask)?;
    let probs =
        candle_nn::ops::softmax_last_dim(&scores)?.reshape((rows, kv_heads, n_rep * n, total))?;
    let out = probs
        .matmul(&values)?
        .reshape((rows, heads, n, d))?
        .transpose(1, 2)?
        .reshape((rows * n, heads * d))?;
    attn.output(&out)
}

impl Decoder {
    /// A detached copy of the model to generate with: the same weights, the dense ones kept in
    /// the layout that products over a few rows read fastest ([`Dense::for_inference`]), no
    /// autograd graph recorded. It does not follow later training steps: make one per generation.
    pub fn for_inference(&self) -> Result<Decoder> {
        Ok(Decoder {
            embed_tokens: Embedding::new(self.embeddings().detach(), self.config.hidden_size),
            layers: (self.layers.iter().map(Block::for_inference)).collect::<Result<_>>()?,
            norm: self.norm.for_inference(),
            lm_head: self
                .lm_head
                .as_ref()
                .map(Dense::for_inference)
                .transpose()?,
            rotary: self.rotary.clone(),
            config: self.config.clone(),
            // Generation computes in the parameters' dtype (the cache is kept in it).
            compute: self.embeddings().dtype(),
        })
    }

    /// An empty cache for `rows` sequences, with room for `capacity` positions each (it grows
    /// when that is not enough).
    pub fn new_cache(&self, rows: usize, capacity: usize) -> Result<KvCache> {
        let cfg = &self.config;
        let (dtype, device) = (self.embeddings().dtype(), self.device());
        let shape = (rows, cfg.num_kv_heads, capacity, cfg.head_dim);
        let layers = (0..cfg.num_layers)
            .map(|_| {
                Ok(LayerKv {
                    keys: Tensor::zeros(shape, dtype, &device)?,
                    values: Tensor::zeros(shape, dtype, &device)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(KvCache {
            layers,
            len: 0,
            capacity,
            starts: vec![0; rows],
        })
    }

    /// A cache of the `prompts`, with room for `room` more tokens each, and their next-token
    /// logits `(rows, vocab)`. Prompts of different lengths run together, left-padded: one pass
    /// over every prompt token multiplies the weights with more rows at once, which on CPU runs
    /// at about twice the rate of separate passes over a few rows each, and costs less than the
    /// padding it computes when lengths are close (generation batches prompts sorted by length).
    pub fn prefill(&self, prompts: &[&[u32]], room: usize) -> Result<(KvCache, Tensor)> {
        let Some(longest) = prompts.iter().map(|p| p.len()).max() else {
            bail!("prefill: no prompts");
        };
        // Padding takes token 0; its value is never seen by a real token.
        let ids: Vec<u32> = (prompts.iter())
            .flat_map(|p| std::iter::repeat_n(0, longest - p.len()).chain(p.iter().copied()))
            .collect();
        let ids = Tensor::from_vec(ids, (prompts.len(), longest), &self.device())?;
        let mut cache = self.new_cache(prompts.len(), longest + room)?;
        cache.starts = prompts.iter().map(|p| longest - p.len()).collect();
        let logits = self.forward_cached(&ids, &mut cache)?;
        Ok((cache, logits))
    }

    /// The next-token logits `(rows, vocab)` after `ids (rows, n)`, the next `n ≥ 1` tokens of
    /// each row of `cache`, whose keys and values join it. On an empty cache that is a prompt's
    /// pass; then one token at a time. The same logits as [`Decoder::forward`] on the whole
    /// sequences, to float rounding.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (rows, n) = ids.dims2()?;
        if rows != cache.rows() || n == 0 {
            bail!(
                "forward_cached: {rows}×{n} tokens for a cache of {} rows",
                cache.rows()
            );
        }
        cache.reserve(n)?;
        let mut x = self.embeddings().index_select(&ids.flatten_all()?, 0)?;
        let step = Step::new(&self.rotary, cache, n, x.dtype(), x.device())?;
        for (layer, kv) in self.layers.iter().zip(&mut cache.layers) {
            x = layer.around(&x, |attn, normed| attend(attn, normed, kv, &step))?;
        }
        cache.len += n;
        // Only the last position's logits are wanted: the final norm and the output projection
        // (the largest product of a short pass) run on that position alone.
        let last = x
            .reshape((rows, n, ()))?
            .narrow(1, n - 1, 1)?
            .contiguous()?;
        let last = self.norm.forward(&last.reshape((rows, ()))?)?;
        Ok(self.logits(&last, rows, 1)?.squeeze(1)?.detach())
    }
}

#[cfg(test)]
mod tests;
