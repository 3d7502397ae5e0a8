//! Held-out generation: sample completions for eval prompts from the policy (temperature and
//! nucleus sampling, as arXiv 2410.11677 evaluates: T 0.5, top-p 0.75) and measure the top-k
//! mass and entropy of the policy's next-token distributions along them; score them against a
//! gold answer when the data has one.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::data::{Pair, PairTokenizer};
use crate::error::Result;
use crate::metrics::{TopK, topk_stats_rows};
use crate::model::Decoder;
use crate::rng::SplitMix64;

/// How completions are sampled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f64,
    pub top_p: f64,
    pub max_new_tokens: usize,
}

/// Samples a token: softmax at `temperature`, then the smallest set of tokens whose probability
/// reaches `top_p`.
fn sample(logits: &[f32], s: &Sampling, rng: &mut SplitMix64) -> u32 {
    if s.temperature <= 0.0 {
        return argmax(logits);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut ranked: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, l)| {
            (
                i as u32,
                ((f64::from(*l) - f64::from(max)) / s.temperature).exp(),
            )
        })
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = ranked.iter().map(|r| r.1).sum();
    let mut kept = 0.0;
    let mut cut = ranked.len();
    for (i, r) in ranked.iter().enumerate() {
        kept += r.1 / total;
        if kept >= s.top_p {
            cut = i + 1;
            break;
        }
    }
    let nucleus = &ranked[..cut];
    let mass: f64 = nucleus.iter().map(|r| r.1).sum();
    let mut u = rng.uniform() * mass;
    for r in nucleus {
        u -= r.1;
        if u <= 0.0 {
            return r.0;
        }
    }
    nucleus[nucleus.len() - 1].0
}

fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

/// The last number in `text` (a final answer such as "146" in " 146."), else the trimmed text.
pub fn final_answer(text: &str) -> String {
    let mut numbers = Vec::new();
    let mut current = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit()
            || (c == '-' && current.is_empty())
            || (c == '.' && !current.is_empty() && !current.contains('.'))
        {
            current.push(c);
        } else if !current.is_empty() {
            numbers.push(current.trim_end_matches('.').to_owned());
            current.clear();
        }
    }
    numbers
        .into_iter()
        .rfind(|n| n.chars().any(|c| c.is_ascii_digit()))
        .unwrap_or_else(|| text.trim().to_owned())
}

/// Logits kept at once while generating a batch: rows × positions × vocabulary ≤ this many
/// floats (256 MiB), so a large vocabulary generates in smaller batches.
const BATCH_LOGITS: usize = 1 << 26;

/// Samples one completion of each prompt (all of one length), together: row `i` draws from
/// `rngs[i]` and ends with `eos` when the model produced it. The next-token logits of every
/// generated position are kept in `seen`, one `(rows, vocab)` tensor per position.
fn complete_batch(
    model: &Decoder,
    prompts: &[&[u32]],
    sampling: &Sampling,
    eos: Option<u32>,
    rngs: &mut [SplitMix64],
    seen: &mut Vec<Tensor>,
) -> Result<Vec<Vec<u32>>> {
    let device = model.device();
    let mut ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
    let mut generated = vec![Vec::new(); prompts.len()];
    // Rows still generating; they stay of one length, so they need no padding.
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    for _ in 0..sampling.max_new_tokens {
        if active.is_empty() {
            break;
        }
        let t = ids[active[0]].len();
        let flat: Vec<u32> = active
            .iter()
            .flat_map(|&i| ids[i].iter().copied())
            .collect();
        let input = Tensor::from_vec(flat, (active.len(), t), &device)?;
        let last = model
            .forward(&input)?
            .detach()
            .narrow(1, t - 1, 1)?
            .squeeze(1)?
            .to_dtype(DType::F32)?;
        let rows = last.to_vec2::<f32>()?;
        seen.push(last);
        for (row, &i) in rows.iter().zip(&active) {
            let next = sample(row, sampling, &mut rngs[i]);
            ids[i].push(next);
            generated[i].push(next);
        }
        active.retain(|&i| generated[i].last().copied() != eos);
    }
    Ok(generated)
}

/// One completion of each prompt, prompts of equal length generated together (in batches whose
/// logits fit [`BATCH_LOGITS`]); prompt `i` samples stream `i` of `seed`, so a completion does not
/// depend on the other prompts.
fn complete_all(
    model: &Decoder,
    prompts: &[&[u32]],
    sampling: &Sampling,
    eos: Option<u32>,
    seed: u64,
    seen: &mut Vec<Tensor>,
) -> Result<Vec<Vec<u32>>> {
    let mut by_length: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in prompts.iter().enumerate() {
        by_length.entry(p.len()).or_default().push(i);
    }
    let vocab = model.config().vocab_size.max(1);
    let mut out = vec![Vec::new(); prompts.len()];
    for (len, group) in by_length {
        let rows = (BATCH_LOGITS / ((len + sampling.max_new_tokens) * vocab)).max(1);
        for chunk in group.chunks(rows) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| prompts[i]).collect();
            let mut rngs: Vec<SplitMix64> = chunk
                .iter()
                .map(|&i| SplitMix64::stream(seed, i as u64))
                .collect();
            let done = complete_batch(model, &batch, sampling, eos, &mut rngs, seen)?;
            for (&i, completion) in chunk.iter().zip(done) {
                out[i] = completion;
            }
        }
    }
    Ok(out)
}

/// `k` sampled completions of each prompt, EOS removed: stream `i` of `seed` samples prompt `i`,
/// so the same seed gives the same completions.
pub fn sample_completions(
    model: &Decoder,
    prompts: &[&[u32]],
    k: usize,
    sampling: &Sampling,
    eos: Option<u32>,
    seed: u64,
) -> Result<Vec<Vec<Vec<u32>>>> {
    prompts
        .iter()
        .enumerate()
        .map(|(i, prompt)| {
            let mut rng = [SplitMix64::stream(seed, i as u64)];
            (0..k)
                .map(|_| {
                    let mut done =
                        complete_batch(model, &[prompt], sampling, eos, &mut rng, &mut Vec::new())?
                            .remove(0);
                    if done.last().copied() == eos {
                        done.pop();
                    }
                    Ok(done)
                })
                .collect()
        })
        .collect()
}

/// Generates one completion per prompt and returns `topk_mass/generated`,
/// `topk_entropy/generated`, `top1_prob/generated`, `eval/generated_tokens` and, when answers
/// exist, `eval/score`.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site, every input distinct"
)]
pub fn generation_metrics(
    model: &Decoder,
    tok: &PairTokenizer,
    prompts: &[Pair],
    sampling: &Sampling,
    top_k: usize,
    eos: Option<u32>,
    seed: u64,
    device: &Device,
) -> Result<BTreeMap<String, f64>> {
    // The policy's next-token logits at every generated position, measured together at the end.
    let mut seen = Vec::new();
    let (mut correct, mut scored) = (0usize, 0usize);
    let inputs: Vec<&[u32]> = prompts.iter().map(|p| p.prompt.as_slice()).collect();
    let completions = complete_all(model, &inputs, sampling, eos, seed, &mut seen)?;
    for (pair, generated) in prompts.iter().zip(&completions) {
        if let Some(gold) = &pair.answer {
            scored += 1;
            if final_answer(&tok.decode(generated)?) == final_answer(gold) {
                correct += 1;
            }
        }
    }
    let positions: usize = completions.iter().map(Vec::len).sum();
    let top = if seen.is_empty() {
        TopK {
            mass: 0.0,
            entropy: 0.0,
            top1: 0.0,
        }
    } else {
        let rows = Tensor::cat(&seen, 0)?;
        topk_stats_rows(&rows, &Tensor::ones(positions, DType::F32, device)?, top_k)?
    };
    let mut out = BTreeMap::from([
        ("topk_mass/generated".to_owned(), top.mass),
        ("topk_entropy/generated".to_owned(), top.entropy),
        ("top1_prob/generated".to_owned(), top.top1),
        (
            "eval/generated_tokens".to_owned(),
            positions as f64 / prompts.len().max(1) as f64,
        ),
    ]);
    if scored > 0 {
        out.insert("eval/score".into(), correct as f64 / scored as f64);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
