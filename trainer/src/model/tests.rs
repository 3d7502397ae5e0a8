//! The decoder against PyTorch, and its gradients: every parameter receives one, and a few match
//! finite differences.

use std::path::PathBuf;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

use super::*;
use crate::metrics::token_logps;

/// The largest absolute element of `t`.
pub(super) fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Every parameter of `varmap` has a gradient in `got` equal to its gradient in `want`, to 1e-4
/// of the larger of its scale and 1e-3.
fn assert_same_gradients(what: &str, varmap: &VarMap, want: &GradStore, got: &GradStore) {
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let a = want.get(var).unwrap();
        let b = got
            .get(var)
            .unwrap_or_else(|| panic!("{what} {name}: no gradient"));
        let (scale, diff) = (max_abs(a), max_abs(&(a - b).unwrap()));
        assert!(
            diff <= 1e-4 * scale.max(1e-3),
            "{what} {name}: gradients differ by {diff} (scale {scale})"
        );
    }
}

pub(super) fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/tiny-{arch}"))
}

fn expected(arch: &str) -> (Tensor, Vec<f32>, Vec<usize>) {
    let text = std::fs::read_to_string(fixture(arch).join("expected_logits.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<Vec<u32>> = serde_json::from_value(v["input_ids"].clone()).unwrap();
    let logits: Vec<f32> = serde_json::from_value(v["logits"].clone()).unwrap();
    let shape: Vec<usize> = serde_json::from_value(v["shape"].clone()).unwrap();
    (Tensor::new(ids, &Device::Cpu).unwrap(), logits, shape)
}

#[test]
fn logits_match_pytorch_for_llama_and_qwen2() {
    for arch in ["llama", "qwen2"] {
        let loaded = load_weights(&fixture(arch), &Device::Cpu).unwrap();
        let (ids, want, shape) = expected(arch);
        let (policy, _) =
            trainable_model(&loaded.config, Some(&loaded.tensors), &Device::Cpu).unwrap();
        let reference = reference_model(&loaded.config, &loaded.tensors, &Device::Cpu).unwrap();
        for model in [&policy, &reference] {
            let got = model.forward(&ids).unwrap();
            assert_eq!(got.dims(), shape.as_slice());
            let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst < 1e-4,
                "{arch}: logits differ from PyTorch by up to {worst}"
            );
        }
    }
}

fn ids() -> Tensor {
    Tensor::new(
        &[
            [1u32, 5, 17, 42, 99, 250, 3, 7],
            [1, 200, 13, 2, 45, 66, 77, 88],
        ],
        &Device::Cpu,
    )
    .unwrap()
}

/// A smooth scalar of every parameter: the mean next-token log-likelihood.
fn objective(model: &Decoder) -> Tensor {
    let logits = model.forward(&ids()).unwrap();
    token_logps(&logits, &ids()).unwrap().mean_all().unwrap()
}

#[test]
fn every_parameter_receives_a_gradient() {
    for arch in ["llama", "qwen2"] {
        let loaded = load_weights(&fixture(arch), &Device::Cpu).unwrap();
        let (model, varmap) =
            trainable_model(&loaded.config, Some(&loaded.tensors), &Device::Cpu).unwrap();
        let grads = objective(&model).backward().unwrap();
        let vars = varmap.data().lock().unwrap();
        assert!(vars.len() >= 20, "{arch}: {} parameters", vars.len());
        for (name, var) in vars.iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{arch}: no gradient for {name}"));
            let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{arch}: gradient of {name} has norm {norm}"
            );
        }
    }
}

/// Finite differences in f64, where round-off is far below the effect being measured.
#[test]
fn gradients_match_finite_differences() {
    let loaded = load_weights(&fixture("qwen2"), &Device::Cpu).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
    let model = Decoder::new(&loaded.config, vb).unwrap();
    load::copy_into(&varmap, &loaded.tensors, &loaded.config).unwrap();
    let grads = objective(&model).backward().unwrap();
    let names = [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_proj.bias",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
        "model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
    ];
    let h = 1e-5;
    for name in names {
        let var = varmap.data().lock().unwrap()[name].clone();
        let analytic: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let original: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        // Three entries: the largest gradient, the first, and one in the middle.
        let largest = (0..analytic.len())
            .max_by(|&a, &b| analytic[a].abs().total_cmp(&analytic[b].abs()))
            .unwrap();
        for i in [largest, 0, analytic.len() / 2] {
            let at = |delta: f64| -> f64 {
                let mut w = original.clone();
                w[i] += delta;
                var.set(&Tensor::from_vec(w, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                objective(&model).to_scalar().unwrap()
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            let g = analytic[i];
            assert!(
                (numeric - g).abs() <= 1e-6 + 1e-4 * g.abs(),
                "{name}[{i}]: backprop {g}, finite difference {numeric}"
            );
        }
        var.set(&Tensor::from_vec(original, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

#[test]
fn checkpoints_that_do_not_fit_the_config_are_refused() {
    let loaded = load_weights(&fixture("llama"), &Device::Cpu).unwrap();
    let mut cfg = loaded.config.clone();
    cfg.intermediate_size += 1;
    let err = trainable_model(&cfg, Some(&loaded.tensors), &Device::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("shape"), "{err}");
    let mut missing = loaded.tensors.clone();
    missing.remove("model.norm.weight");
    let err = trainable_model(&loaded.config, Some(&missing), &Device::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("model.norm.weight"), "{err}");
    let err = load_weights(std::path::Path::new("/nonexistent"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/config.json"), "{err}");
}

#[test]
fn a_model_from_a_config_alone_is_deterministic() {
    let cfg = load_weights(&fixture("llama"), &Device::Cpu)
        .unwrap()
        .config;
    let run = || {
        let (m, _) = trainable_model(&cfg, None, &Device::Cpu).unwrap();
        m.forward(&ids())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(run(), run());
}

/// A checkpoint in bf16, split over two shards with an index, loads as the f32 one does (to bf16
/// precision).
#[test]
fn sharded_bf16_checkpoints_load_and_convert_to_f32() {
    let loaded = load_weights(&fixture("llama"), &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture("llama").join(f), dir.path().join(f)).unwrap();
    }
    let mut names: Vec<&String> = loaded.tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let tensors: std::collections::HashMap<String, Tensor> = part
            .iter()
            .map(|n| {
                (
                    (*n).clone(),
                    loaded.tensors[*n].to_dtype(DType::BF16).unwrap(),
                )
            })
            .collect();
        candle_core::safetensors::save(&tensors, dir.path().join(shard)).unwrap();
        for n in part {
            weight_map.insert((*n).clone(), shard.into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let sharded = load_weights(dir.path(), &Device::Cpu).unwrap();
    assert!(sharded.tensors.values().all(|t| t.dtype() == DType::F32));
    let (a, _) = trainable_model(&loaded.config, Some(&loaded.tensors), &Device::Cpu).unwrap();
    let (b, _) = trainable_model(&sharded.config, Some(&sharded.tensors), &Device::Cpu).unwrap();
    let (x, y): (Vec<f32>, Vec<f32>) = (
        a.forward(&ids())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap(),
        b.forward(&ids())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap(),
    );
    let worst = x
        .iter()
        .zip(&y)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst > 0.0 && worst < 2e-2,
        "bf16 weights move logits by {worst}"
    );
}

/// Dtypes (and devices) the fused kernels do not handle take the composite ops: a bf16 model
/// gives the (fused) f32 model's logits to bf16 precision.
#[test]
fn the_composite_path_gives_the_fused_paths_logits() {
    for arch in ["llama", "qwen2"] {
        let loaded = load_weights(&fixture(arch), &Device::Cpu).unwrap();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::BF16, &Device::Cpu);
        let composite = Decoder::new(&loaded.config, vb).unwrap();
        load::copy_into(&varmap, &loaded.tensors, &loaded.config).unwrap();
        let (fused, _) =
            trainable_model(&loaded.config, Some(&loaded.tensors), &Device::Cpu).unwrap();
        let logits = |m: &Decoder| -> Vec<f32> {
            (m.forward(&ids()).unwrap().to_dtype(DType::F32).unwrap())
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let worst = logits(&composite)
            .iter()
            .zip(logits(&fused))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 2e-2,
            "{arch}: bf16 composite logits differ by {worst}"
        );
    }
}

/// Pairs packed one per row (prompt once, then chosen, then rejected) give the unpacked rows'
/// logits at every real position and the same gradients, completions cut by `max_length` too.
#[test]
fn packed_pairs_give_the_unpacked_rows_logits_and_gradients() {
    use crate::data::{PairTokenizer, collate, load_pairs};
    for arch in ["llama", "qwen2"] {
        let loaded = load_weights(&fixture(arch), &Device::Cpu).unwrap();
        let cfg = &loaded.config;
        let tok = PairTokenizer::for_model(&fixture(arch), cfg.family, cfg.eos_token_id).unwrap();
        let (pairs, _) = load_pairs(&fixture(arch).join("train.jsonl"), &tok, 64).unwrap();
        let pairs = &pairs[..6];
        // Long enough for every prompt, short enough to cut some completions.
        let max_length = pairs.iter().map(|p| p.prompt.len()).max().unwrap() + 2;
        let batch = collate(pairs, max_length, 0, &Device::Cpu).unwrap();
        let (model, varmap) = trainable_model(cfg, Some(&loaded.tensors), &Device::Cpu).unwrap();
        let (_, len) = batch.input_ids.dims2().unwrap();
        // 1 at each real position of the unpacked rows (chosen rows, then rejected rows).
        let real: Vec<f32> = [false, true]
            .iter()
            .flat_map(|&rejected| {
                pairs.iter().flat_map(move |p| {
                    let completion = if rejected { &p.rejected } else { &p.chosen };
                    let n = (p.prompt.len() + completion.len()).min(max_length);
                    (0..len).map(move |i| if i < n { 1.0 } else { 0.0 })
                })
            })
            .collect();
        let real = Tensor::from_vec(real, (2 * pairs.len(), len, 1), &Device::Cpu).unwrap();
        let plain = model.forward(&batch.input_ids).unwrap();
        let packed = model
            .forward_pairs(&batch.input_ids, &batch.packed)
            .unwrap();
        let worst = max_abs(
            &(plain.broadcast_mul(&real).unwrap() - packed.broadcast_mul(&real).unwrap()).unwrap(),
        );
        assert!(worst < 1e-5, "{arch}: packed logits differ by {worst}");

        let loss = |logits: &Tensor| {
            (token_logps(logits, &batch.input_ids).unwrap() * &batch.loss_mask)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let (g_plain, g_packed) = (
            loss(&plain).backward().unwrap(),
            loss(&packed).backward().unwrap(),
        );
        assert_same_gradients(&format!("{arch} packed"), &varmap, &g_plain, &g_packed);
    }
}

/// The composite ops that CUDA takes, run here on CPU tensors (the fused kernels turned off),
/// against the fused kernels: the logits, and the gradient of every parameter, in f32.
#[test]
fn the_composite_ops_cuda_takes_give_the_fused_logits_and_gradients() {
    for arch in ["llama", "qwen2"] {
        let loaded = load_weights(&fixture(arch), &Device::Cpu).unwrap();
        let (model, varmap) =
            trainable_model(&loaded.config, Some(&loaded.tensors), &Device::Cpu).unwrap();
        let run = || {
            (
                model.forward(&ids()).unwrap(),
                objective(&model).backward().unwrap(),
            )
        };
        let (fused_logits, fused_grads) = run();
        let (composite_logits, composite_grads) = fused::with_composite_ops(run);
        let worst = max_abs(&(&fused_logits - &composite_logits).unwrap());
        assert!(worst < 1e-4, "{arch}: composite logits differ by {worst}");
        let what = format!("{arch} composite");
        assert_same_gradients(&what, &varmap, &fused_grads, &composite_grads);
    }
}

/// A model computing in bf16 keeps its f32 parameters, gives the f32 logits to bf16 precision
/// (in f32), and every parameter receives a finite gradient through the casts.
#[test]
fn a_bf16_model_keeps_f32_parameters_and_passes_gradients_to_all() {
    for arch in ["llama", "qwen2"] {
        let loaded = load_weights(&fixture(arch), &Device::Cpu).unwrap();
        let (model, varmap) =
            trainable_model(&loaded.config, Some(&loaded.tensors), &Device::Cpu).unwrap();
        let half = model.clone().with_compute_dtype(DType::BF16);
        let (full_logits, half_logits) = (
            model.forward(&ids()).unwrap(),
            half.forward(&ids()).unwrap(),
        );
        assert_eq!(half_logits.dtype(), DType::F32);
        let worst = max_abs(&(&full_logits - &half_logits).unwrap());
        assert!(
            worst > 0.0 && worst < 5e-2,
            "{arch}: bf16 logits differ by {worst}"
        );
        let grads = objective(&half).backward().unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            assert_eq!(var.dtype(), DType::F32, "{name}");
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{arch}: no gradient for {name}"));
            assert_eq!(g.dtype(), DType::F32, "{name}");
            let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{arch}: gradient of {name} has norm {norm}"
            );
        }
    }
}
