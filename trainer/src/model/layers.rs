//! The decoder's building blocks, written only with candle ops that have a backward pass. The
//! fused kernels of candle-transformers (RmsNorm, rope, `softmax_last_dim`) record no gradient,
//! so a model built from them trains nothing while its loss still moves.

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::config::ModelConfig;

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

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x.broadcast_div(&(mean_square + self.eps)?.sqrt()?)?;
        normed.broadcast_mul(&self.weight)
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
    pub fn new(cfg: &ModelConfig) -> Self {
        let d = cfg.head_dim;
        // As transformers: 1 / θ^(2i/d), in f32.
        let inv_freq = (0..d / 2)
            .map(|i| 1.0 / (cfg.rope_theta as f32).powf((2 * i) as f32 / d as f32))
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

/// A dense layer `x·W + b` that folds all leading dimensions into one matrix product. The
/// weight is kept as `(in, out)`, the transpose of the checkpoint's `(out, in)` (see
/// [`super::stored_transposed`]): candle's backward of a product with a transposed view costs
/// about twice that of a contiguous one. `candle_nn::Linear` also broadcasts the weight over the
/// batch, which makes the backward materialise one weight-sized gradient per batch row.
#[derive(Debug, Clone)]
pub struct Dense {
    weight: Tensor,
    bias: Option<Tensor>,
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
        Ok(Self { weight, bias })
    }
}

impl Module for Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        matmul_2d(x, &self.weight, self.bias.as_ref())
    }
}

/// `x (…, in) · w (in, out) + b` as a single 2-D product.
pub fn matmul_2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims();
    let (inner, lead) = dims.split_last().expect("at least one dimension");
    let rows: usize = lead.iter().product();
    let y = x.reshape((rows, *inner))?.matmul(w)?;
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = lead.to_vec();
    out.push(w.dim(1)?);
    y.reshape(out)
}

#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Dense,
    k_proj: Dense,
    v_proj: Dense,
    o_proj: Dense,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        Ok(Self {
            q_proj: Dense::new(h, cfg.num_heads * d, cfg.qkv_bias, vb.pp("q_proj"))?,
            k_proj: Dense::new(h, cfg.num_kv_heads * d, cfg.qkv_bias, vb.pp("k_proj"))?,
            v_proj: Dense::new(h, cfg.num_kv_heads * d, cfg.qkv_bias, vb.pp("v_proj"))?,
            o_proj: Dense::new(cfg.num_heads * d, h, cfg.o_bias, vb.pp("o_proj"))?,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: d,
        })
    }

    /// `x`: `(batch, seq, hidden)`; `mask`: additive `(seq, seq)` causal mask.
    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let heads = |p: &Dense, n: usize| -> Result<Tensor> {
            p.forward(x)?
                .reshape((b, t, n, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = apply_rotary(&heads(&self.q_proj, self.num_heads)?, cos, sin)?;
        let k = apply_rotary(&heads(&self.k_proj, self.num_kv_heads)?, cos, sin)?;
        let v = heads(&self.v_proj, self.num_kv_heads)?;
        let (k, v) = (self.repeat_kv(&k)?, self.repeat_kv(&v)?);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let out =
            probs
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((b, t, self.num_heads * self.head_dim))?;
        self.o_proj.forward(&out)
    }

    /// Grouped-query attention: each key/value head serves `heads / kv_heads` query heads, in
    /// transformers' order (kv head 0 for query heads 0..n, and so on).
    fn repeat_kv(&self, x: &Tensor) -> Result<Tensor> {
        let n_rep = self.num_heads / self.num_kv_heads;
        if n_rep == 1 {
            return Ok(x.clone());
        }
        let (b, kv, t, d) = x.dims4()?;
        x.unsqueeze(2)?
            .broadcast_as((b, kv, n_rep, t, d))?
            .reshape((b, kv * n_rep, t, d))
    }
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
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = (silu(&self.gate_proj.forward(x)?)? * self.up_proj.forward(x)?)?;
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

    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let attn = self
            .self_attn
            .forward(&self.input_layernorm.forward(x)?, cos, sin, mask)?;
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
