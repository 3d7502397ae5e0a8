//! A trainable Llama/Qwen2-family decoder. Weight names match Hugging Face checkpoints, so a
//! `VarBuilder` over a checkpoint's tensors builds the model directly; GGUF files are read into
//! the same names.

mod cache;
mod config;
pub(crate) mod fused;
mod gguf;
mod layers;
mod load;

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

pub use cache::KvCache;
pub use config::{Family, ModelConfig};
pub use fused::Segment;
pub use gguf::{is_gguf, tokenizer as gguf_tokenizer};
pub use load::{
    LoadedModel, init_deterministic, load_weights, reference_model, trainable_model,
    write_model_folder,
};

use layers::{Block, Dense, Positions, RmsNorm, Rotary};

#[derive(Debug, Clone)]
pub struct Decoder {
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    /// `None` when the output projection is the embedding matrix (tied).
    lm_head: Option<Dense>,
    rotary: Rotary,
    config: ModelConfig,
    /// The dtype activations are computed in (the parameters' own by default).
    compute: DType,
}

impl Decoder {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let m = vb.pp("model");
        let layers = (0..cfg.num_layers)
            .map(|i| Block::new(cfg, m.pp(format!("layers.{i}"))))
            .collect::<Result<_>>()?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(Dense::new(
                cfg.hidden_size,
                cfg.vocab_size,
                false,
                vb.pp("lm_head"),
            )?)
        };
        Ok(Self {
            embed_tokens: layers::embedding(cfg, m.pp("embed_tokens"))?,
            layers,
            norm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))?,
            lm_head,
            rotary: Rotary::new(cfg),
            config: cfg.clone(),
            compute: vb.dtype(),
        })
    }

    /// The same model computing in `dtype` (bf16, say) while its parameters keep theirs: each
    /// layer casts its weights to the activations' dtype as it uses them, and the logits come
    /// out in the parameters' dtype, so log-probabilities and losses are taken at full precision.
    /// Half-precision models take the composite ops (the fused kernels are f32/f64 only); norms
    /// and attention's softmax run in f32 inside them.
    #[must_use]
    pub fn with_compute_dtype(mut self, dtype: DType) -> Self {
        self.compute = dtype;
        self
    }

    pub fn compute_dtype(&self) -> DType {
        self.compute
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The token embedding matrix (also the output projection when tied).
    pub fn embeddings(&self) -> &Tensor {
        self.embed_tokens.embeddings()
    }

    pub fn device(&self) -> Device {
        self.embed_tokens.embeddings().device().clone()
    }

    /// Logits `(batch, seq, vocab)` for right-padded `input_ids` `(batch, seq)`. Padding needs no
    /// mask: with causal attention a real token never sees the padding after it.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let x = self.embed(input_ids)?;
        let positions = self.positions(t, &x)?;
        let x = self.hidden(x, &positions)?;
        self.logits(&x, b, t)
    }

    /// Logits `(2B, L, vocab)` of the pairs' unpacked rows `input_ids (2B, L)`: through `packed`
    /// where the fused kernels run (each prompt computed once), else row by row. Both give the
    /// same logits at every real (non-padding) position.
    pub fn forward_pairs(&self, input_ids: &Tensor, packed: &PackedPairs) -> Result<Tensor> {
        if !self.fused() {
            return self.forward(input_ids);
        }
        let (rows, len) = input_ids.dims2()?;
        let positions = Positions::Fused {
            seq: packed.ids.dim(1)?,
            inv_freq: self.rotary.inv_freq(),
            segments: &packed.segments,
        };
        let x = self
            .hidden(self.embed(&packed.ids)?, &positions)?
            .index_select(&packed.gather, 0)?;
        self.logits(&x, rows, len)
    }

    /// Whether this model's layers take the fused kernels (CPU, computing in f32 or f64).
    fn fused(&self) -> bool {
        fused::supported_for(&self.device(), self.compute)
    }

    /// The embeddings `(rows·t, hidden)` of `ids (rows, t)`, in the compute dtype.
    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embeddings()
            .index_select(&ids.flatten_all()?, 0)?
            .to_dtype(self.compute)
    }

    /// The final-normed hidden states `(rows·t, hidden)` of embeddings `x`. Activations stay
    /// `(tokens, hidden)` through the layers: each reshape would be one more op in the backward
    /// pass.
    fn hidden(&self, mut x: Tensor, positions: &Positions) -> Result<Tensor> {
        for layer in &self.layers {
            x = layer.forward(&x, positions)?;
        }
        self.norm.forward(&x)
    }

    /// Logits `(rows, len, vocab)` of hidden states `x (rows·len, hidden)`, in the parameters'
    /// dtype.
    fn logits(&self, x: &Tensor, rows: usize, len: usize) -> Result<Tensor> {
        let logits = match &self.lm_head {
            Some(head) => head.forward(x)?,
            None => x.matmul(&self.embeddings().to_dtype(x.dtype())?.t()?)?,
        };
        logits
            .to_dtype(self.embeddings().dtype())?
            .reshape((rows, len, ()))
    }
}

/// Preference pairs packed one per row (prompt, chosen, rejected; see [`fused::Segment`]), so the
/// prompt is computed once per pair, and where each position of the usual `(2B, L)` rows is.
#[derive(Debug, Clone)]
pub struct PackedPairs {
    /// `(B, Lp)` token ids.
    pub ids: Tensor,
    pub segments: Vec<Segment>,
    /// For each position of the unpacked `(2B, L)` rows, the flat index of its token in `ids`.
    pub gather: Tensor,
}

impl Decoder {
    /// What attention needs about the `t` positions of each sequence of activations like `x`.
    fn positions(&self, t: usize, x: &Tensor) -> Result<Positions<'_>> {
        if fused::supported(x) {
            return Ok(Positions::Fused {
                seq: t,
                inv_freq: self.rotary.inv_freq(),
                segments: &[],
            });
        }
        let (cos, sin) = self.rotary.tables(t, x.device())?;
        Ok(Positions::Composite {
            seq: t,
            cos: cos.to_dtype(x.dtype())?,
            sin: sin.to_dtype(x.dtype())?,
            mask: causal_mask(t, x.device())?.to_dtype(x.dtype())?,
        })
    }
}

/// Whether a parameter is kept transposed relative to the checkpoint: the dense layers' weights,
/// stored `(in, out)` so their products take no transposed operand.
pub fn stored_transposed(name: &str) -> bool {
    name.ends_with("_proj.weight") || name == "lm_head.weight"
}

/// A checkpoint tensor in the layout the model keeps it (and back: the transpose is its own inverse).
pub fn relayout(name: &str, t: &Tensor) -> Result<Tensor> {
    if stored_transposed(name) && t.rank() == 2 {
        t.t()?.contiguous()
    } else {
        Ok(t.clone())
    }
}

/// The model's parameters in the checkpoint's layout and names, for saving in Hugging Face format.
pub fn checkpoint_tensors(
    varmap: &candle_nn::VarMap,
) -> Result<std::collections::HashMap<String, Tensor>> {
    let vars = varmap.data().lock().expect("varmap lock");
    vars.iter()
        .map(|(name, var)| Ok((name.clone(), relayout(name, var.as_tensor())?)))
        .collect()
}

fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (t, t), device)
}

/// Log-softmax over the vocabulary, from differentiable primitives.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&log_sum)
}

#[cfg(test)]
mod tests;
