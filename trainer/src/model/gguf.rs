//! GGUF files (llama.cpp's format) of Llama- and Qwen2-family models: the configuration from the
//! metadata, every tensor dequantised to f32 under its Hugging Face name, and the tokenizer from
//! the `tokenizer.ggml.*` metadata. Training then sees the same thing a model folder gives.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use super::{Family, LoadedModel, ModelConfig};
use crate::error::{Result, TrainError};

/// Whether `path` names a GGUF file rather than a model folder.
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// An opened GGUF file: its header, read once, and the file to read tensors from.
struct Gguf<'a> {
    path: &'a Path,
    file: File,
    content: Content,
}

impl<'a> Gguf<'a> {
    fn open(path: &'a Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| TrainError::io(path, e))?;
        let content = Content::read(&mut file)
            .map_err(|e| TrainError::Config(format!("{}: not a GGUF file: {e}", path.display())))?;
        Ok(Self {
            path,
            file,
            content,
        })
    }

    fn error(&self, what: impl std::fmt::Display) -> TrainError {
        TrainError::Config(format!("{}: {what}", self.path.display()))
    }

    fn value(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn string(&self, key: &str) -> Result<&str> {
        match self.value(key) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(self.error(format!("{key} is {other:?}, not a string"))),
            None => Err(self.error(format!("the metadata has no {key}"))),
        }
    }

    /// A numeric metadata value; GGUF writers differ in the integer width they pick.
    fn number(&self, key: &str) -> Result<Option<f64>> {
        let n = match self.value(key) {
            None => return Ok(None),
            Some(Value::U8(v)) => f64::from(*v),
            Some(Value::I8(v)) => f64::from(*v),
            Some(Value::U16(v)) => f64::from(*v),
            Some(Value::I16(v)) => f64::from(*v),
            Some(Value::U32(v)) => f64::from(*v),
            Some(Value::I32(v)) => f64::from(*v),
            #[expect(
                clippy::cast_precision_loss,
                reason = "sizes and ids are far below 2^53"
            )]
            Some(Value::U64(v)) => *v as f64,
            #[expect(
                clippy::cast_precision_loss,
                reason = "sizes and ids are far below 2^53"
            )]
            Some(Value::I64(v)) => *v as f64,
            Some(Value::F32(v)) => f64::from(*v),
            Some(Value::F64(v)) => *v,
            Some(other) => return Err(self.error(format!("{key} is {other:?}, not a number"))),
        };
        Ok(Some(n))
    }

    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "checked to be a whole number ≥ 0 first"
    )]
    fn count(&self, key: &str) -> Result<Option<usize>> {
        match self.number(key)? {
            Some(n) if n >= 0.0 && n.fract() == 0.0 => Ok(Some(n as usize)),
            Some(n) => Err(self.error(format!("{key} is {n}, not a count"))),
            None => Ok(None),
        }
    }

    fn required(&self, key: &str) -> Result<usize> {
        self.count(key)?
            .ok_or_else(|| self.error(format!("the metadata has no {key}")))
    }

    fn token_id(&self, key: &str) -> Result<Option<u32>> {
        Ok(self.count(key)?.and_then(|n| u32::try_from(n).ok()))
    }

    fn config(&self) -> Result<ModelConfig> {
        let arch = self.string("general.architecture")?;
        let family = match arch {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            other => {
                return Err(self.error(format!(
                    "architecture {other:?} is not supported; Redline trains llama and qwen2 models"
                )));
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        if let Ok(scaling) = self.string(&key("rope.scaling.type"))
            && scaling != "none"
        {
            return Err(self.error(format!(
                "RoPE scaling ({scaling}) is not supported; only the default rotary embedding"
            )));
        }
        let hidden_size = self.required(&key("embedding_length"))?;
        let num_heads = self.required(&key("attention.head_count"))?;
        let num_kv_heads = self
            .count(&key("attention.head_count_kv"))?
            .unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(self.error(format!(
                "attention.head_count ({num_heads}) must be a multiple of head_count_kv ({num_kv_heads})"
            )));
        }
        let embeddings = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| self.error("no tensor token_embd.weight"))?;
        let vocab_size = match self.count(&key("vocab_size"))? {
            Some(n) => n,
            None => embeddings.shape.dims()[0],
        };
        let head_dim = match self.count(&key("attention.key_length"))? {
            Some(n) => n,
            None => hidden_size / num_heads,
        };
        Ok(ModelConfig {
            family,
            vocab_size,
            hidden_size,
            intermediate_size: self.required(&key("feed_forward_length"))?,
            num_layers: self.required(&key("block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: self
                .number(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-6),
            rope_theta: self.number(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            qkv_bias: family == Family::Qwen2
                || self.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            o_bias: self
                .content
                .tensor_infos
                .contains_key("blk.0.attn_output.bias"),
            mlp_bias: self.content.tensor_infos.contains_key("blk.0.ffn_up.bias"),
            bos_token_id: self.token_id("tokenizer.ggml.bos_token_id")?,
            eos_token_id: self.token_id("tokenizer.ggml.eos_token_id")?,
            pad_token_id: self.token_id("tokenizer.ggml.padding_token_id")?,
        })
    }

    /// Every tensor, dequantised to f32, under its Hugging Face name and in its row order.
    fn tensors(&mut self, cfg: &ModelConfig, device: &Device) -> Result<HashMap<String, Tensor>> {
        let mut names: Vec<String> = self.content.tensor_infos.keys().cloned().collect();
        names.sort();
        let mut tensors = HashMap::with_capacity(names.len());
        for name in names {
            let hf = hf_name(&name)
                .ok_or_else(|| self.error(format!("tensor {name} is not one Redline knows")))?;
            let quantized = self
                .content
                .tensor(&mut self.file, &name, device)
                .map_err(|e| self.error(format!("tensor {name}: {e}")))?;
            let mut t = quantized
                .dequantize(device)
                .map_err(|e| self.error(format!("tensor {name}: {e}")))?;
            if cfg.family == Family::Llama {
                if name.contains(".attn_q.") {
                    t = unpermute(&t, cfg.num_heads)?;
                } else if name.contains(".attn_k.") {
                    t = unpermute(&t, cfg.num_kv_heads)?;
                }
            }
            tensors.insert(hf, t);
        }
        Ok(tensors)
    }

    /// The tokenizer, and the text of its EOS token.
    fn tokenizer_and_eos(&self) -> Result<(Tokenizer, Option<String>)> {
        let tokenizer = self.tokenizer()?;
        let eos = self
            .token_id("tokenizer.ggml.eos_token_id")?
            .and_then(|id| tokenizer.id_to_token(id));
        Ok((tokenizer, eos))
    }

    fn tokenizer(&self) -> Result<Tokenizer> {
        let mut tokenizer = Tokenizer::from_gguf(&self.content)
            .map_err(|e| self.error(format!("tokenizer: {e}")))?;
        // candle reads SmolLM's pre-tokenizer as GPT-2's; SmolLM's own splits digits one by one
        // first (llama.cpp's `smollm` pre-type, the `Digits` step of its tokenizer.json).
        if self.string("tokenizer.ggml.pre").ok() == Some("smollm") {
            use tokenizers::pre_tokenizers::byte_level::ByteLevel;
            use tokenizers::pre_tokenizers::digits::Digits;
            use tokenizers::pre_tokenizers::sequence::Sequence;
            tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])));
        }
        Ok(tokenizer)
    }
}

/// llama.cpp's name of a tensor → Hugging Face's.
fn hf_name(gguf: &str) -> Option<String> {
    let top = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = top {
        return Some(name.into());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Undoes the row order llama.cpp's converter gives Llama's q and k projections: within each head
/// it interleaves the two rotary halves (rows 0, d/2, 1, d/2+1, …); Hugging Face keeps the halves
/// apart. Works on weights `(heads·d, in)` and biases `(heads·d)`.
fn unpermute(t: &Tensor, heads: usize) -> Result<Tensor> {
    let shape = t.shape().clone();
    let rows = shape.dims()[0];
    let columns = t.elem_count() / rows;
    let swapped = t
        .reshape((heads, rows / heads / 2, 2, columns))?
        .transpose(1, 2)?
        .contiguous()?;
    Ok(swapped.reshape(shape)?)
}

/// Reads the GGUF file at `path`: configuration and tensors as f32.
pub fn load(path: &Path, device: &Device) -> Result<LoadedModel> {
    let mut file = Gguf::open(path)?;
    let config = file.config()?;
    let tensors = file.tensors(&config, device)?;
    Ok(LoadedModel { config, tensors })
}

/// The tokenizer stored in the GGUF file at `path`, with the text of its EOS token.
pub fn tokenizer(path: &Path) -> Result<(Tokenizer, Option<String>)> {
    Gguf::open(path)?.tokenizer_and_eos()
}

/// Writes what a model folder holds beside its weights for the model in the GGUF file at `path`:
/// `config.json`, `tokenizer.json` and `tokenizer_config.json`, into the folder `to`.
pub fn write_description(path: &Path, to: &Path) -> Result<()> {
    let file = Gguf::open(path)?;
    let config = file.config()?;
    let (tokenizer, eos) = file.tokenizer_and_eos()?;
    let write = |name: &str, text: String| {
        let path = to.join(name);
        std::fs::write(&path, text).map_err(|e| TrainError::io(&path, e))
    };
    write("config.json", config.to_hf_json())?;
    let tokenizer_path = to.join("tokenizer.json");
    tokenizer
        .save(&tokenizer_path, false)
        .map_err(|e| TrainError::Config(format!("{}: {e}", tokenizer_path.display())))?;
    write(
        "tokenizer_config.json",
        serde_json::json!({ "eos_token": eos }).to_string(),
    )
}

#[cfg(test)]
mod tests;
