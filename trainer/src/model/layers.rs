//! The decoder's building blocks, written only with candle ops that have a backward pass. The
//! fused kernels of candle-transformers (RmsNorm, rope, `softmax_last_dim`) record no gradient,
//! so a model built from them trains nothing while its loss still moves. On CPU the norms, the
//! SwiGLU gate and attention run as this crate's own fused ops ([`super::fused`]), which do have
//! a backward pass; the composite forms here serve other devices and dtypes.
//!
//! Parameters keep their own dtype (f32) and every layer computes in its input's dtype, casting
//! the weights to it as it uses them (autocast): a bf16 model keeps f32 weights, optimizer moments
//! and checkpoints, and the cast records a gradient like any op (see [`super::Decoder::with_compute_dtype`]).

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::config::ModelConfig;
use super::fused::{self, HeadLayout};

/// Root-mean-square layer norm, computed as transformers does: in f32, `x / sqrt(mean(x²) + eps) · w`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?,
            eps,
        })
    }
}

impl RmsNorm {
    /// A detached copy, for inference.
    pub fn for_inference(&self) -> Self {
        Self {
            weight: self.weight.detach(),
            eps: self.eps,
        }
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if fused::supported(x) {
            fused::rms_norm(x, &self.weight, self.eps)
        } else {
            rms_norm_composite(x, &self.weight, self.eps)
        }
    }
}

/// Half-precision inputs are normalised in f32 and cast back before the weight, as transformers
/// does.
pub(super) fn rms_norm_composite(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(wide(dtype))?;
    let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_div(&(mean_square + eps)?.sqrt()?)?;
    normed
        .to_dtype(dtype)?
        .broadcast_mul(&weight.to_dtype(dtype)?)
}

/// The dtype sums and normalisations of `dtype` values are done in: f32 for the half-precision
/// types.
pub(super) fn wide(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

/// `x · sigmoid(x)` from differentiable primitives.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    x / (x.neg()?.exp()? + 1.0)?
}

/// Rotary position embedding tables (cos, sin), each `(seq, head_dim)`, in the non-interleaved
/// layout of transformers (`rotate_half`).
#[derive(Debug, Clone)]
pub struct Rotary {
    inv_freq: Vec<f32>,
}

impl Rotary {
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    pub fn new(cfg: &ModelConfig) -> Self {
        Self::from_theta(cfg.head_dim, cfg.rope_theta)
    }

    pub fn from_theta(head_dim: usize, theta: f64) -> Self {
        let d = head_dim;
        // As transformers: 1 / θ^(2i/d), in f32.
        let inv_freq = (0..d / 2)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / d as f32))
            .collect();
        Self { inv_freq }
    }

    pub fn tables(&self, seq: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let inv = Tensor::from_slice(&self.inv_freq, (1, half), device)?;
        let pos = Tensor::arange(0u32, seq as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((seq, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1)?;
        Ok((emb.cos()?, emb.sin()?))
    }
}

/// Applies rotary embeddings to `x` of shape `(batch, heads, seq, head_dim)`.
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// A dense layer `x·W + b` over `x (tokens, in)`. The weight is kept as `(in, out)`, the
/// transpose of the checkpoint's `(out, in)` (see [`super::stored_transposed`]): candle's
/// backward of a product with a transposed view costs about twice that of a contiguous one.
/// `candle_nn::Linear` also broadcasts the weight over the batch, which makes the backward
/// materialise one weight-sized gradient per batch row.
#[derive(Debug, Clone)]
pub struct Dense {
    weight: Tensor,
    bias: Option<Tensor>,
    /// Whether `weight` is kept `(out, in)` instead: in an inference copy ([`Dense::for_inference`]).
    out_in: bool,
}

impl Dense {
    pub fn new(inp: usize, out: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(
            (inp, out),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let bias = if bias {
            Some(vb.get_with_hints(out, "bias", candle_nn::Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            out_in: false,
        })
    }

    /// A detached copy for inference with the weight kept `(out, in)`, the checkpoint's layout.
    /// A decoding step multiplies a few rows (one per sequence), and for so few candle's CPU
    /// product (the gemm crate) reads an `(in, out)` weight without packing it, row after row a
    /// page apart, which the prefetchers do not follow: on SmolLM2's shapes, 16 rows take 2.5×
    /// as long as over `(out, in)`. From about 64 rows the weight is packed and both layouts run
    /// alike.
    pub fn for_inference(&self) -> Result<Self> {
        let weight = if self.out_in {
            self.weight.clone()
        } else {
            fused::transpose(&self.weight)?
        };
        Ok(Self {
            weight: weight.detach(),
            bias: self.bias.as_ref().map(Tensor::detach),
            out_in: true,
        })
    }
}

impl Module for Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let weight = self.weight.to_dtype(x.dtype())?;
        let y = if self.out_in {
            x.matmul(&weight.t()?)?
        } else {
            x.matmul(&weight)?
        };
        match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(x.dtype())?),
            None => Ok(y),
        }
    }
}

/// What attention needs about positions: the sequence length (activations are `(batch·seq,
/// features)`), and the rotary frequencies for the fused kernel, or the rotary tables and the
/// additive causal mask `(seq, seq)` for the composite path.
pub enum Positions<'a> {
    Fused {
        seq: usize,
        inv_freq: &'a [f32],
        /// Empty, or the preference pair packed in each row.
        segments: &'a [fused::Segment],
    },
    Composite {
        seq: usize,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor,
    },
}

#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Dense,
    k_proj: Dense,
    v_proj: Dense,
    o_proj: Dense,
    layout: HeadLayout,
}

impl Attention {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        Ok(Self {
            q_proj: Dense::new(h, cfg.num_heads * d, cfg.qkv_bias, vb.pp("q_proj"))?,
            k_proj: Dense::new(h, cfg.num_kv_heads * d, cfg.qkv_bias, vb.pp("k_proj"))?,
            v_proj: Dense::new(h, cfg.num_kv_heads * d, cfg.qkv_bias, vb.pp("v_proj"))?,
            o_proj: Dense::new(cfg.num_heads * d, h, cfg.o_bias, vb.pp("o_proj"))?,
            layout: HeadLayout {
                heads: cfg.num_heads,
                kv_heads: cfg.num_kv_heads,
                head_dim: d,
            },
        })
    }

    /// A copy for inference (see [`Dense::for_inference`]).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(Self {
            q_proj: self.q_proj.for_inference()?,
            k_proj: self.k_proj.for_inference()?,
            v_proj: self.v_proj.for_inference()?,
            o_proj: self.o_proj.for_inference()?,
            layout: self.layout,
        })
    }

    pub fn layout(&self) -> HeadLayout {
        self.layout
    }

    /// The query, key and value projections of `x (tokens, hidden)`.
    pub fn project(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        Ok((
            self.q_proj.forward(x)?,
            self.k_proj.forward(x)?,
            self.v_proj.forward(x)?,
        ))
    }

    /// The output projection of the heads' outputs `(tokens, heads·d)`.
    pub fn output(&self, heads: &Tensor) -> Result<Tensor> {
        self.o_proj.forward(heads)
    }

    /// `x`: `(batch·seq, hidden)`.
    pub fn forward(&self, x: &Tensor, positions: &Positions) -> Result<Tensor> {
        let (q, k, v) = self.project(x)?;
        let out = match positions {
            Positions::Fused {
                seq,
                inv_freq,
                segments,
            } => fused::causal_attention(&q, &k, &v, *seq, self.layout, inv_freq, segments)?,
            Positions::Composite {
                seq,
                cos,
                sin,
                mask,
            } => attention_composite(&q, &k, &v, *seq, self.layout, cos, sin, mask)?,
        };
        self.output(&out)
    }
}

/// Attention after the projections: `q (b·t, heads·d)`, `k`, `v (b·t, kv_heads·d)` to
/// `(b·t, heads·d)`.
#[expect(
    clippy::too_many_arguments,
    reason = "the projections, their layout, the tables"
)]
pub(super) fn attention_composite(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    t: usize,
    layout: HeadLayout,
    cos: &Tensor,
    sin: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    let b = q.dim(0)? / t;
    let d = layout.head_dim;
    let split = |x: &Tensor, n: usize| -> Result<Tensor> {
        x.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()
    };
    let q = apply_rotary(&split(q, layout.heads)?, cos, sin)?;
    let k = apply_rotary(&split(k, layout.kv_heads)?, cos, sin)?;
    let v = split(v, layout.kv_heads)?;
    let n_rep = layout.heads / layout.kv_heads;
    let (k, v) = (repeat_kv(&k, n_rep)?, repeat_kv(&v, n_rep)?);
    let scale = 1.0 / (d as f64).sqrt();
    let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(mask)?;
    // In f32 for half-precision inputs, as transformers' eager attention does.
    let probs = candle_nn::ops::softmax(&scores.to_dtype(wide(q.dtype()))?, D::Minus1)?
        .to_dtype(q.dtype())?;
    probs
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((b * t, layout.heads * d))
}

/// Grouped-query attention: each key/value head serves `n_rep` query heads, in transformers'
/// order (kv head 0 for query heads 0..n, and so on).
fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, n_rep, t, d))?
        .reshape((b, kv * n_rep, t, d))
}

#[derive(Debug, Clone)]
#[expect(clippy::struct_field_names, reason = "the checkpoint's weight names")]
pub struct Mlp {
    gate_proj: Dense,
    up_proj: Dense,
    down_proj: Dense,
}

impl Mlp {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_proj: Dense::new(h, i, bias, vb.pp("gate_proj"))?,
            up_proj: Dense::new(h, i, bias, vb.pp("up_proj"))?,
            down_proj: Dense::new(i, h, bias, vb.pp("down_proj"))?,
        })
    }

    /// A copy for inference (see [`Dense::for_inference`]).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(Self {
            gate_proj: self.gate_proj.for_inference()?,
            up_proj: self.up_proj.for_inference()?,
            down_proj: self.down_proj.for_inference()?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (gate, up) = (self.gate_proj.forward(x)?, self.up_proj.forward(x)?);
        let gated = if fused::supported(&gate) {
            fused::swiglu(&gate, &up)?
        } else {
            (silu(&gate)? * up)?
        };
        self.down_proj.forward(&gated)
    }
}

#[derive(Debug, Clone)]
pub struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            input_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("input_layernorm"),
            )?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    /// A copy for inference (see [`Dense::for_inference`]).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(Self {
            input_layernorm: self.input_layernorm.for_inference(),
            self_attn: self.self_attn.for_inference()?,
            post_attention_layernorm: self.post_attention_layernorm.for_inference(),
            mlp: self.mlp.for_inference()?,
        })
    }

    pub fn forward(&self, x: &Tensor, positions: &Positions) -> Result<Tensor> {
        self.around(x, |attn, normed| attn.forward(normed, positions))
    }

    /// The block with its attention computed by `attend` (given the attention's weights and
    /// the normed input): the pre-norms, the residual connections and the MLP. Inference with a
    /// key/value cache attends differently and shares the rest.
    pub fn around(
        &self,
        x: &Tensor,
        attend: impl FnOnce(&Attention, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let attn = attend(&self.self_attn, &self.input_layernorm.forward(x)?)?;
        let x = (x + attn)?;
        let mlp = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x)?)?;
        x + mlp
    }
}

/// Token embeddings; also the output projection when the model ties them.
pub fn embedding(cfg: &ModelConfig, vb: VarBuilder) -> Result<Embedding> {
    candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, vb)
}
