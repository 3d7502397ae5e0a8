//! Sampling, and generation with the key/value cache against generation as it was before it: the
//! whole sequence through the model for every new token.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::*;
use crate::data::load_pairs;
use crate::model::{load_weights, trainable_model};

#[test]
fn nucleus_sampling_stays_in_the_nucleus_and_follows_its_weights() {
    // Probabilities ∝ e^(l/T): with T = 1, [0.7, 0.2, 0.1]-ish; top-p 0.75 keeps two tokens.
    let logits = [0.7f32.ln(), 0.2f32.ln(), 0.1f32.ln()];
    let s = Sampling {
        temperature: 1.0,
        top_p: 0.75,
        max_new_tokens: 1,
    };
    let mut rng = SplitMix64(7);
    let mut counts = [0usize; 3];
    for _ in 0..9_000 {
        counts[sample(&logits, &s, &mut rng) as usize] += 1;
    }
    assert_eq!(counts[2], 0, "outside the nucleus");
    let share = counts[0] as f64 / 9_000.0;
    assert!((share - 0.7 / 0.9).abs() < 0.03, "{share}");
    let greedy = Sampling {
        temperature: 0.0,
        ..s
    };
    assert_eq!(sample(&logits, &greedy, &mut rng), 0);
}

#[test]
fn final_answers_are_the_last_number() {
    assert_eq!(final_answer(" 146."), "146");
    assert_eq!(final_answer("so 12+3 = -15.5 then"), "-15.5");
    assert_eq!(final_answer("no number"), "no number");
}

struct Fixture {
    model: Decoder,
    tok: PairTokenizer,
    pairs: Vec<Pair>,
    eos: Option<u32>,
}

fn fixture(arch: &str) -> Fixture {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/tiny-{arch}"));
    let loaded = load_weights(&dir, &Device::Cpu).unwrap();
    let cfg = &loaded.config;
    let tok = PairTokenizer::for_model(&dir, cfg.family, cfg.eos_token_id).unwrap();
    let (pairs, _) = load_pairs(&dir.join("eval.jsonl"), &tok, 64).unwrap();
    let (model, _) = trainable_model(cfg, Some(&loaded.tensors), &Device::Cpu).unwrap();
    Fixture {
        model,
        tok,
        pairs,
        eos: cfg.eos_token_id,
    }
}

/// Generation without the cache, as it was: the whole sequence through [`Decoder::forward`] for
/// each new token. The completion and the next-token logits `(vocab,)` at each of its positions.
fn uncached(
    model: &Decoder,
    prompt: &[u32],
    s: &Sampling,
    eos: Option<u32>,
    rng: &mut SplitMix64,
) -> (Vec<u32>, Vec<Tensor>) {
    let (mut ids, mut out, mut logits) = (prompt.to_vec(), Vec::new(), Vec::new());
    for _ in 0..s.max_new_tokens {
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let last = (model.forward(&input).unwrap())
            .narrow(1, ids.len() - 1, 1)
            .unwrap()
            .flatten_all()
            .unwrap();
        let token = sample(&last.to_vec1::<f32>().unwrap(), s, rng);
        logits.push(last);
        out.push(token);
        ids.push(token);
        if Some(token) == eos {
            break;
        }
    }
    (out, logits)
}

const GREEDY: Sampling = Sampling {
    temperature: 0.0,
    top_p: 1.0,
    max_new_tokens: 12,
};

/// What evaluation samples with (arXiv 2410.11677).
const SAMPLED: Sampling = Sampling {
    temperature: 0.5,
    top_p: 0.75,
    max_new_tokens: 12,
};

/// Every eval prompt of the fixtures (several lengths, batched together): the same greedy tokens
/// as without the cache, and the same top-k metrics along them.
#[test]
fn greedy_generation_gives_the_uncached_tokens_and_metrics() {
    for arch in ["llama", "qwen2"] {
        let f = fixture(arch);
        let prompts: Vec<&[u32]> = f.pairs.iter().map(|p| p.prompt.as_slice()).collect();
        let lengths: BTreeSet<usize> = prompts.iter().map(|p| p.len()).collect();
        assert!(lengths.len() >= 2, "{arch}: prompts of one length only");
        let got = complete(&f.model, &prompts, &GREEDY, f.eos, 3).unwrap();
        let mut rows = Vec::new();
        for (i, prompt) in prompts.iter().enumerate() {
            let mut rng = SplitMix64::stream(3, i as u64);
            let (want, logits) = uncached(&f.model, prompt, &GREEDY, f.eos, &mut rng);
            assert_eq!(got[i], want, "{arch}: prompt {i}");
            rows.extend(logits);
        }
        let rows = Tensor::stack(&rows, 0).unwrap();
        let weights = Tensor::ones(rows.dim(0).unwrap(), DType::F32, &Device::Cpu).unwrap();
        let TopK { mass, entropy, .. } = topk_stats_rows(&rows, &weights, 5).unwrap();
        let m = generation_metrics(
            &f.model,
            &f.tok,
            &f.pairs,
            &GREEDY,
            5,
            f.eos,
            3,
            &Device::Cpu,
        )
        .unwrap();
        let (got_mass, got_entropy) = (m["topk_mass/generated"], m["topk_entropy/generated"]);
        assert!(
            (got_mass - mass).abs() < 1e-5,
            "{arch}: {got_mass} vs {mass}"
        );
        assert!(
            (got_entropy - entropy).abs() < 1e-4,
            "{arch}: {got_entropy} vs {entropy}"
        );
        assert_eq!(
            m["eval/generated_tokens"],
            rows.dim(0).unwrap() as f64 / prompts.len() as f64
        );
    }
}

/// Three prompts, two of one length and one longer, sampled together: each completion is the one
/// its stream draws alone, and the one it drew without the cache; greedy as well.
#[test]
fn a_prompt_completes_the_same_in_a_batch_alone_and_without_the_cache() {
    for arch in ["llama", "qwen2"] {
        let f = fixture(arch);
        let mut by_length: BTreeMap<usize, Vec<&[u32]>> = BTreeMap::new();
        for p in &f.pairs {
            by_length.entry(p.prompt.len()).or_default().push(&p.prompt);
        }
        let (&len, pair) = (by_length.iter())
            .find(|(_, same)| same.len() >= 2)
            .expect("two prompts of one length");
        let longer = (by_length.range(len + 1..).next())
            .expect("a longer prompt")
            .1[0];
        let batch = [pair[0], pair[1], longer];
        for s in [SAMPLED, GREEDY] {
            let stream = |i: usize| SplitMix64::stream(11, i as u64);
            let mut rngs: Vec<SplitMix64> = (0..batch.len()).map(stream).collect();
            let together =
                complete_batch(&f.model, &batch, &s, f.eos, &mut rngs, &mut Vec::new()).unwrap();
            assert!(together.iter().any(|c| c.len() > 1), "{arch}: {together:?}");
            for (i, prompt) in batch.iter().enumerate() {
                let alone = complete_batch(
                    &f.model,
                    &[prompt],
                    &s,
                    f.eos,
                    &mut [stream(i)],
                    &mut Vec::new(),
                )
                .unwrap();
                assert_eq!(together[i], alone[0], "{arch} {s:?}: prompt {i}");
                let (before, _) = uncached(&f.model, prompt, &s, f.eos, &mut stream(i));
                assert_eq!(together[i], before, "{arch} {s:?}: prompt {i}");
            }
        }
    }
}
