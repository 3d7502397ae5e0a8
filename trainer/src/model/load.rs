//! Models to train: folders in Hugging Face format (`config.json` and `model.safetensors`, or
//! shards listed in `model.safetensors.index.json`) and GGUF files; any dtype becomes f32 on load.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::gguf::{self, is_gguf};
use super::{Decoder, ModelConfig, relayout};
use crate::error::{Result, TrainError};
use crate::rng::SplitMix64;

/// A checkpoint read into memory: its configuration and its tensors as f32.
#[derive(Debug)]
pub struct LoadedModel {
    pub config: ModelConfig,
    pub tensors: HashMap<String, Tensor>,
}

/// Reads the model at `path`: a Hugging Face folder or a GGUF file.
pub fn load_weights(path: &Path, device: &Device) -> Result<LoadedModel> {
    if is_gguf(path) {
        return gguf::load(path, device);
    }
    let dir = path;
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<std::path::PathBuf> = if single.is_file() {
        vec![single]
    } else if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| TrainError::io(&index, e))?;
        let parsed: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| TrainError::Config(format!("{}: {e}", index.display())))?;
        let map = parsed["weight_map"].as_object().ok_or_else(|| {
            TrainError::Config(format!("{}: no weight_map object", index.display()))
        })?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        shards.into_iter().map(|f| dir.join(f)).collect()
    } else {
        return Err(TrainError::Config(format!(
            "{} has neither model.safetensors nor model.safetensors.index.json",
            dir.display()
        )));
    };
    let mut tensors = HashMap::new();
    for file in files {
        let loaded = candle_core::safetensors::load(&file, device)
            .map_err(|e| TrainError::Config(format!("{}: {e}", file.display())))?;
        for (name, t) in loaded {
            // `VarMap::load` would keep bf16/f16 as is; training runs in f32.
            tensors.insert(name, t.to_dtype(DType::F32)?);
        }
    }
    Ok(LoadedModel { config, tensors })
}

/// Tensors a checkpoint may carry that the model recomputes or shares.
fn ignorable(name: &str, cfg: &ModelConfig) -> bool {
    name.ends_with("rotary_emb.inv_freq") || (cfg.tie_word_embeddings && name == "lm_head.weight")
}

/// A trainable decoder whose parameters live in the returned `VarMap`: copied from `weights`
/// when given (every parameter must be there, with its shape), else initialised deterministically.
pub fn trainable_model(
    cfg: &ModelConfig,
    weights: Option<&HashMap<String, Tensor>>,
    device: &Device,
) -> Result<(Decoder, VarMap)> {
    let varmap = VarMap::new();
    let model = Decoder::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    match weights {
        Some(w) => copy_into(&varmap, w, cfg)?,
        None => init_deterministic(&varmap, 0)?,
    }
    Ok((model, varmap))
}

pub(crate) fn copy_into(
    varmap: &VarMap,
    weights: &HashMap<String, Tensor>,
    cfg: &ModelConfig,
) -> Result<()> {
    let vars = varmap.data().lock().expect("varmap lock");
    for (name, var) in vars.iter() {
        let t = weights
            .get(name)
            .ok_or_else(|| TrainError::Config(format!("the checkpoint has no tensor {name}")))?;
        let t = relayout(name, t)?;
        if t.dims() != var.dims() {
            return Err(TrainError::Config(format!(
                "tensor {name} has shape {:?} in the checkpoint; the config implies {:?}",
                relayout(name, &t)?.dims(),
                relayout(name, var.as_tensor())?.dims()
            )));
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    if let Some(extra) = weights
        .keys()
        .find(|k| !vars.contains_key(k.as_str()) && !ignorable(k, cfg))
    {
        return Err(TrainError::Config(format!(
            "the checkpoint has tensor {extra}, which this {:?} model does not use: is config.json right?",
            cfg.family
        )));
    }
    Ok(())
}

/// Writes a model folder at `to`: the configuration and tokenizer of the model `like` (its
/// `*.json` files, or made from a GGUF file's metadata), and `weights` as its `model.safetensors`.
pub fn write_model_folder(like: &Path, weights: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| TrainError::io(to, e))?;
    if is_gguf(like) {
        gguf::write_description(like, to)?;
    } else {
        copy_json_files(like, to)?;
    }
    std::fs::copy(weights, to.join("model.safetensors")).map_err(|e| TrainError::io(weights, e))?;
    Ok(())
}

fn copy_json_files(like: &Path, to: &Path) -> Result<()> {
    for entry in std::fs::read_dir(like).map_err(|e| TrainError::io(like, e))? {
        let path = entry.map_err(|e| TrainError::io(like, e))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        // Not the weights' shard index: the folder gets one weights file.
        if path.is_file() && json && !name.starts_with("model.safetensors") {
            std::fs::copy(&path, to.join(name)).map_err(|e| TrainError::io(&path, e))?;
        }
    }
    Ok(())
}

/// The frozen reference model: plain tensors, so no gradient graph is ever recorded through it.
pub fn reference_model(
    cfg: &ModelConfig,
    weights: &HashMap<String, Tensor>,
    device: &Device,
) -> Result<Decoder> {
    let frozen: HashMap<String, Tensor> = weights
        .iter()
        .map(|(k, v)| Ok((k.clone(), relayout(k, v)?.detach())))
        .collect::<candle_core::Result<_>>()?;
    Ok(Decoder::new(
        cfg,
        VarBuilder::from_tensors(frozen, DType::F32, device),
    )?)
}

/// Fills every parameter from a seeded generator (candle's CPU random init cannot be seeded):
/// weights ~ N(0, 0.02²), norms 1, biases 0. The same seed gives the same model everywhere.
pub fn init_deterministic(varmap: &VarMap, seed: u64) -> Result<()> {
    let vars = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut rng = SplitMix64(seed);
    for name in names {
        let var = &vars[name];
        let n = var.elem_count();
        let values: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.rsplit('.').next() == Some("bias") {
            vec![0.0; n]
        } else {
            (0..n).map(|_| (0.02 * rng.normal()) as f32).collect()
        };
        var.set(&Tensor::from_vec(values, var.shape(), var.device())?)?;
    }
    Ok(())
}
