//! CUT (arXiv 2312.14591): learning from judgments. Rows `{prompt, response, judgment, aligned}`.
//! A response token is *inappropriate* when the policy finds it more than `threshold` (λ) times
//! likelier once the negative judgment is in the context; inappropriate tokens of misaligned
//! rows are trained down with unlikelihood, `−weight · log(1 − p)`, every other token up with
//! `−log p`. Each row's loss is normalised by its token count; the batch loss is
//! `(NLL + UL) / 2`: NLL the mean over aligned rows (plain MLE), UL the mean over misaligned ones
//! (one alone when the batch has only one kind).
//!
//! The judgment enters the context between prompt and response, as `JUDGED_CONTEXT` shows; the
//! response tokens are the same ids in both sequences, so token t is compared with itself.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{D, Device, Result, Tensor};
use redline_core::catalogue::{
    CUT_INAPPROPRIATE_SHARE, CUT_NLL, CUT_UL, ENTROPY, LOGPS_MEAN, LOSS, Side,
};
use serde::Deserialize;

use crate::data::{PairTokenizer, read_jsonl};
use crate::error::{Result as TrainResult, TrainError};
use crate::metrics::{entropy, token_logps, topk_stats};
use crate::model::Decoder;
use crate::step::StepResult;

/// λ and the unlikelihood weight. REFERENCE.md: 1.1 and 1.0 online, 1.2 and 0.5 offline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CutSettings {
    pub threshold: f64,
    pub weight: f64,
}

/// The text that precedes the response when the judgment is in the context.
pub fn judged_context(prompt: &str, judgment: &str) -> String {
    format!("{prompt}\nJudgment: {judgment}\nResponse:")
}

/// One tokenised row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutExample {
    /// Prompt then response.
    pub plain: Vec<u32>,
    /// Judged context then the same response ids.
    pub judged: Vec<u32>,
    /// Response tokens at the end of both sequences.
    pub response_len: usize,
    pub aligned: bool,
}

#[derive(Debug, Deserialize)]
struct CutRow {
    prompt: String,
    response: String,
    #[serde(default)]
    judgment: Option<String>,
    aligned: bool,
}

/// Reads CUT rows. A misaligned row needs a judgment. Rows whose context leaves no room for a
/// response token within `max_length` are dropped and counted.
pub fn load_cut_rows(
    path: &Path,
    tok: &PairTokenizer,
    max_length: usize,
) -> TrainResult<(Vec<CutExample>, usize)> {
    let (mut rows, mut dropped) = (Vec::new(), 0);
    let shape = "{\"prompt\", \"response\", \"judgment\", \"aligned\"}";
    for (at, row) in read_jsonl::<CutRow>(path, shape)? {
        let judgment = match (&row.judgment, row.aligned) {
            (Some(j), _) if !j.trim().is_empty() => j.clone(),
            (_, true) => String::new(),
            (_, false) => {
                return Err(TrainError::Data(format!(
                    "{at}: field judgment is required when aligned is false"
                )));
            }
        };
        // The response ids as they follow the prompt (TRL's split), reused after the judged context.
        let pair = tok
            .pair(&row.prompt, &row.response, &row.response)
            .map_err(|e| TrainError::Data(format!("{at}: {e}")))?;
        let context = tok.encode_text(&judged_context(&row.prompt, &judgment))?;
        let room = max_length.saturating_sub(pair.prompt.len().max(context.len()));
        let keep = pair.chosen.len().min(room);
        if keep == 0 {
            dropped += 1;
            continue;
        }
        let response = &pair.chosen[..keep];
        rows.push(CutExample {
            plain: [pair.prompt.as_slice(), response].concat(),
            judged: [context.as_slice(), response].concat(),
            response_len: keep,
            aligned: row.aligned,
        });
    }
    if rows.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no usable CUT rows ({dropped} left no room for a response)",
            path.display()
        )));
    }
    Ok((rows, dropped))
}

/// Right-padded ids `(b, L)` and the mask of predicted response tokens `(b, L-1)`.
fn collate(
    seqs: &[&[u32]],
    response_lens: &[usize],
    pad: u32,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let len = seqs.iter().map(|s| s.len()).max().unwrap_or(2).max(2);
    let mut ids = Vec::with_capacity(seqs.len() * len);
    let mut mask = Vec::with_capacity(seqs.len() * (len - 1));
    for (s, r) in seqs.iter().zip(response_lens) {
        ids.extend(s.iter().copied().chain(std::iter::repeat(pad)).take(len));
        let first = s.len() - r; // first response token; predicted from position first - 1
        mask.extend((1..len).map(|j| if j >= first && j < s.len() { 1f32 } else { 0.0 }));
    }
    Ok((
        Tensor::from_vec(ids, (seqs.len(), len), device)?,
        Tensor::from_vec(mask, (seqs.len(), len - 1), device)?,
    ))
}

/// One CUT step's loss and metrics.
pub fn cut_forward(
    policy: &Decoder,
    rows: &[CutExample],
    s: &CutSettings,
    top_k: usize,
    pad: u32,
) -> Result<StepResult> {
    let device = policy.device();
    let lens: Vec<usize> = rows.iter().map(|r| r.response_len).collect();
    let plain: Vec<&[u32]> = rows.iter().map(|r| r.plain.as_slice()).collect();
    let judged: Vec<&[u32]> = rows.iter().map(|r| r.judged.as_slice()).collect();
    let (ids, mask) = collate(&plain, &lens, pad, &device)?;
    let (jids, jmask) = collate(&judged, &lens, pad, &device)?;
    let la = ids.dim(1)?;
    let logits = policy.forward(&ids)?;
    let logp = token_logps(&logits, &ids)?; // (b, la-1), with graph
    let judged_logp = token_logps(&policy.forward(&jids)?.detach(), &jids)?;

    // Line the response tokens up: the k-th response token of a row in both sequences.
    let a: Vec<Vec<f32>> = (logp.detach() * &mask)?.to_vec2()?;
    let bj: Vec<Vec<f32>> = (judged_logp * &jmask)?.to_vec2()?;
    let ln_threshold = s.threshold.ln() as f32;
    let mut inappropriate = vec![0f32; rows.len() * (la - 1)];
    let (mut flagged, mut judged_tokens) = (0usize, 0usize);
    for (i, row) in rows.iter().enumerate() {
        if row.aligned {
            continue;
        }
        let (start_a, start_b) = (
            row.plain.len() - row.response_len - 1,
            row.judged.len() - row.response_len - 1,
        );
        for k in 0..row.response_len {
            judged_tokens += 1;
            if bj[i][start_b + k] - a[i][start_a + k] > ln_threshold {
                inappropriate[i * (la - 1) + start_a + k] = 1.0;
                flagged += 1;
            }
        }
    }
    let inappropriate = Tensor::from_vec(inappropriate, (rows.len(), la - 1), &device)?;
    // −log(1 − p), with p kept below 1 so a certain token gives a large, finite loss.
    let unlikely = ((logp
        .exp()?
        .affine(-1.0, 1.0)?
        .clamp(1e-6f32, 1.0f32)?
        .log()?)
        * (-s.weight))?;
    let likely = logp.neg()?;
    let per_token =
        ((&unlikely * &inappropriate)? + (&likely * inappropriate.affine(-1.0, 1.0)?)?)?;
    let row_loss = ((per_token * &mask)?.sum(D::Minus1)?
        / Tensor::new(lens.iter().map(|l| *l as f32).collect::<Vec<_>>(), &device)?)?;

    let group = |aligned: bool| -> Result<Option<Tensor>> {
        let idx: Vec<u32> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.aligned == aligned)
            .map(|(i, _)| i as u32)
            .collect();
        if idx.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            row_loss
                .index_select(&Tensor::new(idx, &device)?, 0)?
                .mean_all()?,
        ))
    };
    let (nll, ul) = (group(true)?, group(false)?);
    let loss = match (&nll, &ul) {
        (Some(n), Some(u)) => ((n + u)? * 0.5)?,
        (Some(x), None) | (None, Some(x)) => x.clone(),
        (None, None) => unreachable!("a batch has rows"),
    };

    let mut m = BTreeMap::new();
    m.insert(LOSS.name.into(), f64::from(loss.to_scalar::<f32>()?));
    if let Some(n) = nll {
        m.insert(CUT_NLL.name.into(), f64::from(n.to_scalar::<f32>()?));
    }
    if let Some(u) = ul {
        m.insert(CUT_UL.name.into(), f64::from(u.to_scalar::<f32>()?));
        m.insert(
            CUT_INAPPROPRIATE_SHARE.name.into(),
            flagged as f64 / judged_tokens.max(1) as f64,
        );
    }
    let tokens = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
    m.insert(
        LOGPS_MEAN.on(Side::Response).name.into(),
        f64::from((logp.detach() * &mask)?.sum_all()?.to_scalar::<f32>()? / tokens),
    );
    let logits = logits.detach();
    if top_k > 0 {
        topk_stats(&logits, &mask, top_k)?.record(Side::Response, &mut m);
    }
    m.insert(ENTROPY.name.into(), entropy(&logits, &mask)?);
    Ok(StepResult { loss, metrics: m })
}

#[cfg(test)]
mod tests;
