//! Held-out generation: sample completions for eval prompts from the policy (temperature and
//! nucleus sampling, as arXiv 2410.11677 evaluates: T 0.5, top-p 0.75) and measure the top-k
//! mass and entropy of the policy's next-token distributions along them; score them against a
//! gold answer when the data has one.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use redline_core::catalogue::{EVAL_GENERATED_TOKENS, EVAL_SCORE, Side};

use crate::data::{Pair, PairTokenizer};
use crate::error::Result;
use crate::metrics::{TopK, topk_stats_rows};
use crate::model::{Decoder, ModelConfig};
use crate::rng::SplitMix64;

/// How completions are sampled. Serialised under the names of the settings that give it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Sampling {
    #[serde(rename = "gen_temperature")]
    pub temperature: f64,
    #[serde(rename = "gen_top_p")]
    pub top_p: f64,
    #[serde(rename = "gen_max_tokens")]
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

/// Floats a batch may hold while generating (256 MiB of f32): its key/value cache, the largest
/// activations of the prompts' pass and the next-token logits. Larger models and longer prompts
/// generate in smaller batches.
const BATCH_FLOATS: usize = 1 << 26;

/// Rows that fit [`BATCH_FLOATS`] when each sees up to `positions` positions.
fn rows_per_batch(cfg: &ModelConfig, positions: usize) -> usize {
    let cache = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim;
    // Per position: its keys and values in every layer, the MLP's widest activation and a row
    // of attention scores per head; per row: one row of logits.
    let per_row =
        positions * (cache + cfg.intermediate_size + cfg.num_heads * positions) + cfg.vocab_size;
    (BATCH_FLOATS / per_row.max(1)).max(1)
}

/// Samples one completion of each prompt, together: row `i` draws from `rngs[i]` and ends with
/// `eos` when the model produced it. The prompts pass through the model once, then each new
/// token alone, against the key/value cache of what came before. The next-token logits of every
/// generated position are kept in `seen`, one `(rows, vocab)` tensor per step of the batch.
fn complete_batch(
    model: &Decoder,
    prompts: &[&[u32]],
    sampling: &Sampling,
    eos: Option<u32>,
    rngs: &mut [SplitMix64],
    seen: &mut Vec<Tensor>,
) -> Result<Vec<Vec<u32>>> {
    let mut generated = vec![Vec::new(); prompts.len()];
    if prompts.is_empty() || sampling.max_new_tokens == 0 {
        return Ok(generated);
    }
    // The last token sampled is never run through the model.
    let (mut cache, mut logits) = model.prefill(prompts, sampling.max_new_tokens - 1)?;
    // The prompt each row of the cache holds.
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    loop {
        let last = logits.to_dtype(DType::F32)?;
        let rows = last.to_vec2::<f32>()?;
        seen.push(last);
        let next: Vec<u32> = (rows.iter().zip(&active))
            .map(|(row, &i)| {
                let token = sample(row, sampling, &mut rngs[i]);
                generated[i].push(token);
                token
            })
            .collect();
        // Rows still generating have all generated as many tokens.
        if generated[active[0]].len() == sampling.max_new_tokens {
            break;
        }
        let keep: Vec<usize> = (0..next.len()).filter(|&r| Some(next[r]) != eos).collect();
        if keep.is_empty() {
            break;
        }
        if keep.len() < next.len() {
            cache.retain(&keep)?;
            active = keep.iter().map(|&r| active[r]).collect();
        }
        let next: Vec<u32> = keep.iter().map(|&r| next[r]).collect();
        let input = Tensor::from_vec(next, (active.len(), 1), &model.device())?;
        logits = model.forward_cached(&input, &mut cache)?;
    }
    Ok(generated)
}

/// One completion of each prompt, generated together in batches that fit [`BATCH_FLOATS`]
/// (prompts of similar length batched together); prompt `i` samples stream `i` of `seed`, so a
/// completion does not depend on the other prompts.
fn complete_all(
    model: &Decoder,
    prompts: &[&[u32]],
    sampling: &Sampling,
    eos: Option<u32>,
    seed: u64,
    seen: &mut Vec<Tensor>,
) -> Result<Vec<Vec<u32>>> {
    let model = &model.for_inference()?;
    let mut by_length: Vec<usize> = (0..prompts.len()).collect();
    by_length.sort_by_key(|&i| prompts[i].len());
    let longest = by_length.last().map_or(0, |&i| prompts[i].len());
    let rows = rows_per_batch(model.config(), longest + sampling.max_new_tokens);
    let mut out = vec![Vec::new(); prompts.len()];
    for chunk in by_length.chunks(rows) {
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
    Ok(out)
}

/// One completion of each prompt, EOS kept where the model produced it: prompt `i` samples stream
/// `i` of `seed` (greedy when the temperature is 0). What evaluation generates, without its
/// metrics; `redline bench generate` times it.
pub fn complete(
    model: &Decoder,
    prompts: &[&[u32]],
    sampling: &Sampling,
    eos: Option<u32>,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    complete_all(model, prompts, sampling, eos, seed, &mut Vec::new())
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
    let model = &model.for_inference()?;
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
    let mut out = BTreeMap::from([(
        EVAL_GENERATED_TOKENS.name.to_owned(),
        positions as f64 / prompts.len().max(1) as f64,
    )]);
    top.record(Side::Generated, &mut out);
    if scored > 0 {
        out.insert(EVAL_SCORE.name.into(), correct as f64 / scored as f64);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
