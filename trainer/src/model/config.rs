//! The model configuration, read from a Hugging Face `config.json`.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, TrainError};

/// The decoder families Redline can train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Qwen2,
}

/// What the decoder needs to know, whichever family it comes from.
#[derive(Debug, Clone, PartialEq)]
#[expect(clippy::struct_excessive_bools, reason = "mirrors config.json's flags")]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    /// Bias on the q, k, v projections (always on for Qwen2, `attention_bias` for Llama).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama's `attention_bias`; never for Qwen2).
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

/// `config.json` as written by transformers 4.x and 5.x for Llama and Qwen2 models.
#[derive(Debug, Deserialize)]
#[expect(clippy::struct_excessive_bools, reason = "mirrors config.json's flags")]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    use_sliding_window: bool,
    hidden_act: Option<String>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
    pad_token_id: Option<serde_json::Value>,
}

/// A token id field, which may be a number or a list of numbers (the first is used).
fn token_id(v: Option<&serde_json::Value>) -> Option<u32> {
    match v? {
        serde_json::Value::Number(n) => n.as_u64().map(|n| n as u32),
        serde_json::Value::Array(a) => a.first()?.as_u64().map(|n| n as u32),
        _ => None,
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            TrainError::Config(m) => TrainError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let hf: HfConfig = serde_json::from_str(text)
            .map_err(|e| TrainError::Config(format!("config.json: {e}")))?;
        let unsupported = |what: String| Err(TrainError::Config(what));
        let family = match hf.model_type.as_deref() {
            Some("llama") => Family::Llama,
            Some("qwen2") => Family::Qwen2,
            Some(other) => {
                return unsupported(format!(
                    "model_type {other:?} is not supported; Redline trains llama and qwen2 models"
                ));
            }
            None => return unsupported("config.json has no model_type".into()),
        };
        if let Some(act) = hf.hidden_act.as_deref().filter(|a| *a != "silu") {
            return unsupported(format!("hidden_act {act:?} is not supported (only silu)"));
        }
        if hf.use_sliding_window {
            return unsupported("sliding-window attention is not supported".into());
        }
        let rope_type = hf
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_type.clone());
        let scaled = hf.rope_scaling.as_ref().is_some_and(|v| !v.is_null());
        if scaled || rope_type.as_deref().is_some_and(|t| t != "default") {
            return unsupported(format!(
                "RoPE scaling ({}) is not supported; only the default rotary embedding",
                rope_type.unwrap_or_else(|| "rope_scaling".into())
            ));
        }
        let rope_theta = hf
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(hf.rope_theta)
            .unwrap_or(10_000.0);
        if hf.num_attention_heads == 0
            || !hf.hidden_size.is_multiple_of(hf.num_attention_heads) && hf.head_dim.is_none()
        {
            return unsupported("hidden_size must divide evenly into num_attention_heads".into());
        }
        let num_kv_heads = hf.num_key_value_heads.unwrap_or(hf.num_attention_heads);
        if num_kv_heads == 0 || !hf.num_attention_heads.is_multiple_of(num_kv_heads) {
            return unsupported(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({num_kv_heads})",
                hf.num_attention_heads
            ));
        }
        let (qkv_bias, o_bias) = match family {
            Family::Qwen2 => (true, false),
            Family::Llama => (hf.attention_bias, hf.attention_bias),
        };
        Ok(Self {
            family,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            num_kv_heads,
            head_dim: hf
                .head_dim
                .unwrap_or(hf.hidden_size / hf.num_attention_heads),
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            tie_word_embeddings: hf.tie_word_embeddings,
            qkv_bias,
            o_bias,
            mlp_bias: hf.mlp_bias,
            bos_token_id: token_id(hf.bos_token_id.as_ref()),
            eos_token_id: token_id(hf.eos_token_id.as_ref()),
            pad_token_id: token_id(hf.pad_token_id.as_ref()),
        })
    }
}

impl ModelConfig {
    /// The `config.json` transformers would write for this model; `from_json` reads it back.
    pub fn to_hf_json(&self) -> String {
        let (model_type, architecture) = match self.family {
            Family::Llama => ("llama", "LlamaForCausalLM"),
            Family::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
        };
        serde_json::json!({
            "architectures": [architecture],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            // Qwen2's q/k/v biases are implied by its model type.
            "attention_bias": self.family == Family::Llama && self.qkv_bias,
            "mlp_bias": self.mlp_bias,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_transformers_5_configs_and_refuses_what_it_cannot_train() {
        let base = r#"{"model_type":"qwen2","vocab_size":300,"hidden_size":64,"intermediate_size":172,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
            "rope_parameters":{"rope_theta":1000000.0,"rope_type":"default"},"tie_word_embeddings":true,
            "eos_token_id":[2,5]}"#;
        let c = ModelConfig::from_json(base).unwrap();
        assert_eq!(
            (c.family, c.head_dim, c.rope_theta, c.qkv_bias, c.o_bias),
            (Family::Qwen2, 16, 1e6, true, false)
        );
        assert_eq!(c.eos_token_id, Some(2));
        let gpt = base.replace("qwen2", "gpt2");
        assert!(
            ModelConfig::from_json(&gpt)
                .unwrap_err()
                .to_string()
                .contains("gpt2")
        );
        let yarn = base.replace(r#""rope_type":"default""#, r#""rope_type":"yarn""#);
        assert!(
            ModelConfig::from_json(&yarn)
                .unwrap_err()
                .to_string()
                .contains("yarn")
        );
        assert_eq!(ModelConfig::from_json(&c.to_hf_json()).unwrap(), c);
        let bad_gqa = base.replace(r#""num_key_value_heads":2"#, r#""num_key_value_heads":3"#);
        assert!(ModelConfig::from_json(&bad_gqa).is_err());
    }
}
