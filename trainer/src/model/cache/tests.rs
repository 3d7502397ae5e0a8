//! The cache against the full forward pass: the same next-token logits after a prompt and after
//! each token that follows, for prompts of different lengths batched together and for the rows
//! kept when others are dropped.

use candle_core::{Device, Tensor};

use super::*;
use crate::model::tests::{fixture, max_abs};
use crate::model::{load_weights, trainable_model};

fn model(arch: &str) -> Decoder {
    let loaded = load_weights(&fixture(arch), &Device::Cpu).unwrap();
    trainable_model(&loaded.config, Some(&loaded.tensors), &Device::Cpu)
        .unwrap()
        .0
}

/// The full forward pass's next-token logits `(vocab,)` after `seq`.
fn uncached(model: &Decoder, seq: &[u32]) -> Tensor {
    let ids = Tensor::new(seq, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model
        .forward(&ids)
        .unwrap()
        .narrow(1, seq.len() - 1, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
}

fn differ(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// Each row's next tokens `seqs[r][from..from + n]`, as `(rows, n)` ids.
fn next_tokens(seqs: &[&[u32]], from: &[usize], n: usize) -> Tensor {
    let flat: Vec<u32> = (seqs.iter().zip(from))
        .flat_map(|(s, &f)| s[f..f + n].iter().copied())
        .collect();
    Tensor::from_vec(flat, (seqs.len(), n), &Device::Cpu).unwrap()
}

const A: &[u32] = &[1, 5, 17, 42, 99, 250, 3, 7, 12, 44, 8];
const B: &[u32] = &[1, 200, 13, 2, 45, 66, 77, 88, 9, 10, 11];
const C: &[u32] = &[1, 30, 31, 32, 33, 34, 35, 36, 37];

/// Two rows of one length: a 4-token prompt, then one token at a time, with the model and with
/// its inference copy. The cache starts with room for 2 positions, so it also grows on the way.
#[test]
fn cached_logits_match_the_full_forward_pass() {
    for arch in ["llama", "qwen2"] {
        let model = model(arch);
        // The trained model itself, and the copy generation uses.
        for cached in [&model, &model.for_inference().unwrap()] {
            let mut cache = cached.new_cache(2, 2).unwrap();
            let mut got = cached
                .forward_cached(&next_tokens(&[A, B], &[0, 0], 4), &mut cache)
                .unwrap();
            for t in 4..=10 {
                for (row, seq) in [A, B].iter().enumerate() {
                    let worst = differ(&got.get(row).unwrap(), &uncached(&model, &seq[..t]));
                    assert!(worst < 1e-4, "{arch}, row {row} after {t} tokens: {worst}");
                }
                if t < 10 {
                    got = cached
                        .forward_cached(&next_tokens(&[A, B], &[t, t], 1), &mut cache)
                        .unwrap();
                }
            }
            assert_eq!((cache.seen(0), cache.rows()), (10, 2));
        }
    }
}

/// A 6-token prompt and two 3-token prompts prefilled together (the short ones left-padded),
/// then continued together, the cache growing on the way; then the middle row is dropped and the
/// others continue.
#[test]
fn left_padded_rows_of_different_lengths_each_get_their_own_logits() {
    for arch in ["llama", "qwen2"] {
        let model = model(arch);
        let (mut cache, mut got) = model.prefill(&[&A[..6], &B[..3], &C[..3]], 1).unwrap();
        assert_eq!(cache.starts, [0, 3, 3]);
        let mut seen = [6, 3, 3];
        for _ in 0..3 {
            for (row, seq) in [A, B, C].iter().enumerate() {
                let worst = differ(&got.get(row).unwrap(), &uncached(&model, &seq[..seen[row]]));
                assert!(
                    worst < 1e-4,
                    "{arch}, row {row} after {}: {worst}",
                    seen[row]
                );
            }
            got = model
                .forward_cached(&next_tokens(&[A, B, C], &seen, 1), &mut cache)
                .unwrap();
            for s in &mut seen {
                *s += 1;
            }
        }
        cache.retain(&[2, 0]).unwrap();
        let after = model
            .forward_cached(&next_tokens(&[C, A], &[seen[2], seen[0]], 1), &mut cache)
            .unwrap();
        for (row, seq, n) in [(0, C, seen[2] + 1), (1, A, seen[0] + 1)] {
            let worst = differ(&after.get(row).unwrap(), &uncached(&model, &seq[..n]));
            assert!(worst < 1e-4, "{arch}, kept row {row}: {worst}");
        }
        assert_eq!((cache.seen(0), cache.seen(1)), (seen[2] + 1, seen[0] + 1));
        assert!(cache.retain(&[2]).is_err());
    }
}

/// A bf16 model takes the same cached path: its logits follow the bf16 full pass to bf16
/// precision.
#[test]
fn the_cache_runs_in_the_models_dtype() {
    let loaded = load_weights(&fixture("qwen2"), &Device::Cpu).unwrap();
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::BF16, &Device::Cpu);
    let model = Decoder::new(&loaded.config, vb).unwrap();
    crate::model::load::copy_into(&varmap, &loaded.tensors, &loaded.config).unwrap();
    let mut cache = model.new_cache(1, 8).unwrap();
    model
        .forward_cached(&next_tokens(&[A], &[0], 5), &mut cache)
        .unwrap();
    let got = model
        .forward_cached(&next_tokens(&[A], &[5], 1), &mut cache)
        .unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let worst = differ(&f32(&got), &f32(&uncached(&model, &A[..6])));
    assert!(worst < 5e-2, "bf16 cached logits differ by {worst}");
}
