//! Preference data: JSONL rows `{prompt, chosen, rejected}`, tokenised the way TRL does
//! (REFERENCE.md): EOS appended to each completion as text, `prompt`, `prompt+chosen` and
//! `prompt+rejected` tokenised whole, the completion starting at their common prefix.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Deserialize;
use tokenizers::Tokenizer;

use crate::error::{Result, TrainError};
use crate::model::{Family, PackedPairs, Segment, gguf_tokenizer, is_gguf};

/// One tokenised preference pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    /// The row's gold final answer (`answer` field), when the task has a scorer.
    pub answer: Option<String>,
}

/// Other fields are allowed: datasets often carry ids beside the pair.
#[derive(Debug, Deserialize)]
struct Row {
    prompt: String,
    chosen: String,
    rejected: String,
    /// Gold final answer, scored by exact match against generations.
    #[serde(default)]
    answer: Option<String>,
}

/// The tokenizer of a model folder, with the EOS text TRL appends.
#[derive(Debug)]
pub struct PairTokenizer {
    tokenizer: Tokenizer,
    eos: String,
}

/// Qwen2's split: digits one by one, a space before a number on its own, then byte-level BPE.
const QWEN2_PRETOKENIZE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn qwen2_pre_tokenization(tokenizer: &mut Tokenizer) -> Result<()> {
    use tokenizers::SplitDelimiterBehavior;
    use tokenizers::normalizers::unicode::NFC;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    let split = Split::new(
        SplitPattern::Regex(QWEN2_PRETOKENIZE.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| TrainError::Config(format!("Qwen2 pre-tokenizer: {e}")))?;
    tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
        split.into(),
        ByteLevel::new(false, false, false).into(),
    ])));
    tokenizer
        .with_normalizer(Some(NFC))
        .map_err(|e| TrainError::Config(format!("Qwen2 normalizer: {e}")))?;
    Ok(())
}

/// A folder's `tokenizer.json`, and the EOS text its `tokenizer_config.json` names.
fn folder_tokenizer(dir: &Path, family: Family) -> Result<(Tokenizer, Option<String>)> {
    let path = dir.join("tokenizer.json");
    let mut tokenizer = Tokenizer::from_file(&path)
        .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
    if family == Family::Qwen2 {
        qwen2_pre_tokenization(&mut tokenizer)?;
    }
    let eos = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| match &v["eos_token"] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
            _ => None,
        });
    Ok((tokenizer, eos))
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PairTokenizer {
    /// The tokenizer of the model at `path`: a GGUF file's own, or a folder's `tokenizer.json`,
    /// whose EOS token comes from `tokenizer_config.json` or, failing that, from `eos_token_id`.
    /// For Qwen2 models the pre-tokenizer and normalizer are Qwen2's own, as transformers'
    /// `Qwen2Tokenizer` installs them whatever tokenizer.json says.
    pub fn for_model(path: &Path, family: Family, eos_token_id: Option<u32>) -> Result<Self> {
        let (tokenizer, eos) = if is_gguf(path) {
            gguf_tokenizer(path)?
        } else {
            folder_tokenizer(path, family)?
        };
        let eos = eos
            .or_else(|| tokenizer.id_to_token(eos_token_id?))
            .ok_or_else(|| {
                TrainError::Config(format!(
                    "{}: no EOS token (tokenizer_config.json eos_token or config.json eos_token_id)",
                    path.display()
                ))
            })?;
        Ok(Self { tokenizer, eos })
    }

    /// Token ids of `text`, as the model's tokenizer makes them.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        self.encode(text)
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TrainError::Data(format!("cannot tokenise {text:?}: {e}")))
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| TrainError::Data(format!("cannot decode {ids:?}: {e}")))
    }

    /// Tokenises one row as TRL does.
    pub fn pair(&self, prompt: &str, chosen: &str, rejected: &str) -> Result<Pair> {
        let with_eos = |s: &str| {
            if s.ends_with(&self.eos) {
                s.to_owned()
            } else {
                format!("{s}{}", self.eos)
            }
        };
        let p = self.encode(prompt)?;
        let pc = self.encode(&format!("{prompt}{}", with_eos(chosen)))?;
        let pr = self.encode(&format!("{prompt}{}", with_eos(rejected)))?;
        // A BPE merge across the prompt/completion boundary shortens the prompt to what both share.
        let n = common_prefix(&p, &pc).min(common_prefix(&p, &pr));
        Ok(Pair {
            prompt: p[..n].to_vec(),
            chosen: pc[n..].to_vec(),
            rejected: pr[n..].to_vec(),
            answer: None,
        })
    }
}

/// The rows of a JSONL file, each with its `file:line` for error messages. A line that does not
/// parse as `T` is an error naming file, line and the problem; `shape` tells what rows look like.
pub(crate) fn read_jsonl<T: serde::de::DeserializeOwned>(
    path: &Path,
    shape: &str,
) -> Result<Vec<(String, T)>> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let at = format!("{}:{}", path.display(), i + 1);
            serde_json::from_str(line)
                .map(|row| (at.clone(), row))
                .map_err(|e| TrainError::Data(format!("{at}: {e} (rows are {shape})")))
        })
        .collect()
}

/// Reads and tokenises a JSONL file of pairs. A bad row is an error naming file, line and field.
/// Pairs whose prompt alone fills `max_length` are dropped (as TRL does), and counted.
pub fn load_pairs(
    path: &Path,
    tok: &PairTokenizer,
    max_length: usize,
) -> Result<(Vec<Pair>, usize)> {
    let mut pairs = Vec::new();
    let mut dropped = 0;
    for (at, row) in read_jsonl::<Row>(path, "{\"prompt\", \"chosen\", \"rejected\"} strings")? {
        for (field, value) in [("chosen", &row.chosen), ("rejected", &row.rejected)] {
            if value.trim().is_empty() {
                return Err(TrainError::Data(format!("{at}: field {field} is empty")));
            }
        }
        let mut pair = tok
            .pair(&row.prompt, &row.chosen, &row.rejected)
            .map_err(|e| TrainError::Data(format!("{at}: {e}")))?;
        pair.answer = row.answer;
        if pair.prompt.len() >= max_length {
            dropped += 1;
            continue;
        }
        pairs.push(pair);
    }
    if pairs.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no usable pairs ({dropped} had prompts of max_length {max_length} tokens or more)",
            path.display()
        )));
    }
    Ok((pairs, dropped))
}

/// A collated batch: `2B` right-padded rows (chosen first, then rejected, in pair order).
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(2B, L)` token ids.
    pub input_ids: Tensor,
    /// `(2B, L-1)`: 1 where position `i` predicts a completion token `i+1`.
    pub loss_mask: Tensor,
    /// The same pairs packed one per row, for a decoder that can run them so.
    pub packed: PackedPairs,
    pub pairs: usize,
}

/// The pairs one per row, prompt then chosen then rejected (each completion cut as `collate`
/// cuts its row), and where each position of `collate`'s `(2B, len)` rows comes from.
fn pack(
    pairs: &[Pair],
    max_length: usize,
    len: usize,
    pad_id: u32,
    device: &Device,
) -> Result<PackedPairs> {
    let cut = |p: &Pair, completion: &[u32]| {
        completion
            .len()
            .min(max_length.saturating_sub(p.prompt.len()))
    };
    let row_len = |p: &Pair| p.prompt.len() + cut(p, &p.chosen) + cut(p, &p.rejected);
    let packed_len = pairs.iter().map(row_len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(pairs.len() * packed_len);
    let mut segments = Vec::with_capacity(pairs.len());
    let mut chosen_rows = Vec::with_capacity(pairs.len() * len);
    let mut rejected_rows = Vec::with_capacity(pairs.len() * len);
    for (b, p) in pairs.iter().enumerate() {
        let (prompt, chosen, rejected) = (p.prompt.len(), cut(p, &p.chosen), cut(p, &p.rejected));
        let start = b * packed_len;
        ids.extend_from_slice(&p.prompt);
        ids.extend_from_slice(&p.chosen[..chosen]);
        ids.extend_from_slice(&p.rejected[..rejected]);
        ids.resize(start + packed_len, pad_id);
        segments.push(Segment { prompt, chosen });
        // Padding positions read the row's first token: their logits are masked out.
        let index = |i: usize| u32::try_from(start + i).unwrap_or(u32::MAX);
        chosen_rows.extend((0..len).map(|i| index(if i < prompt + chosen { i } else { 0 })));
        rejected_rows.extend((0..len).map(|i| {
            index(match i {
                i if i < prompt => i,
                i if i < prompt + rejected => i + chosen,
                _ => 0,
            })
        }));
    }
    chosen_rows.extend(rejected_rows);
    Ok(PackedPairs {
        ids: Tensor::from_vec(ids, (pairs.len(), packed_len), device)?,
        segments,
        gather: Tensor::from_vec(chosen_rows, 2 * pairs.len() * len, device)?,
    })
}

/// Collates pairs, each sequence cut to its first `max_length` tokens (the completion always keeps
/// at least one token: prompts that long were dropped at load).
pub fn collate(pairs: &[Pair], max_length: usize, pad_id: u32, device: &Device) -> Result<Batch> {
    let rows: Vec<(Vec<u32>, Vec<f32>)> = [false, true]
        .iter()
        .flat_map(|&rejected| {
            pairs.iter().map(move |p| {
                let completion = if rejected { &p.rejected } else { &p.chosen };
                let mut ids = p.prompt.clone();
                ids.extend_from_slice(completion);
                let mut mask = vec![0.0f32; p.prompt.len()];
                mask.resize(ids.len(), 1.0);
                ids.truncate(max_length);
                mask.truncate(max_length);
                (ids, mask)
            })
        })
        .collect();
    let len = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    if len < 2 {
        return Err(TrainError::Data(
            "every sequence in the batch is shorter than 2 tokens".into(),
        ));
    }
    let mut ids = Vec::with_capacity(rows.len() * len);
    let mut mask = Vec::with_capacity(rows.len() * (len - 1));
    for (r_ids, r_mask) in &rows {
        ids.extend(
            r_ids
                .iter()
                .copied()
                .chain(std::iter::repeat(pad_id))
                .take(len),
        );
        // Position i predicts token i+1: the mask of the predicted token.
        mask.extend(
            r_mask
                .iter()
                .copied()
                .chain(std::iter::repeat(0.0))
                .skip(1)
                .take(len - 1),
        );
    }
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (rows.len(), len), device)?,
        loss_mask: Tensor::from_vec(mask, (rows.len(), len - 1), device)?,
        packed: pack(pairs, max_length, len, pad_id, device)?,
        pairs: pairs.len(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama")
    }

    #[test]
    fn qwen2_rows_tokenise_as_transformers_qwen2_tokenizer_does() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-qwen2");
        let tok = PairTokenizer::for_model(&dir, Family::Qwen2, Some(2)).unwrap();
        let pair = tok.pair("Q: 49+97=", " 146.", " 156.").unwrap();
        assert_eq!(
            pair,
            Pair {
                prompt: vec![52, 29, 224, 23, 28, 14, 28, 26, 32],
                chosen: vec![224, 20, 23, 25, 17, 2],
                rejected: vec![224, 20, 24, 25, 17, 2],
                answer: None,
            }
        );
    }

    #[test]
    fn rows_tokenise_as_trl_does() {
        let tok = PairTokenizer::for_model(&fixture(), Family::Llama, Some(2)).unwrap();
        let (pairs, dropped) = load_pairs(&fixture().join("train.jsonl"), &tok, 64).unwrap();
        assert_eq!((pairs.len(), dropped), (256, 0));
        // Row 0, `{"prompt": "Q: 49+97=", "chosen": " 146.", "rejected": " 156."}`, as TRL 1.16 tokenises it.
        assert_eq!(
            pairs[0],
            Pair {
                prompt: vec![52, 29, 266, 28, 14, 28, 26, 32],
                chosen: vec![273, 25, 17, 2],
                rejected: vec![274, 25, 17, 2],
                answer: None,
            }
        );
    }

    #[test]
    fn collation_pads_right_and_masks_only_completions() {
        let pairs = [
            Pair {
                prompt: vec![5, 6],
                chosen: vec![7, 2],
                rejected: vec![8, 9, 2],
                answer: None,
            },
            Pair {
                prompt: vec![5],
                chosen: vec![2],
                rejected: vec![4, 2],
                answer: None,
            },
        ];
        let b = collate(&pairs, 64, 3, &Device::Cpu).unwrap();
        let ids: Vec<Vec<u32>> = b.input_ids.to_vec2().unwrap();
        assert_eq!(
            ids,
            vec![
                vec![5, 6, 7, 2, 3],
                vec![5, 2, 3, 3, 3],
                vec![5, 6, 8, 9, 2],
                vec![5, 4, 2, 3, 3]
            ]
        );
        let mask: Vec<Vec<f32>> = b.loss_mask.to_vec2().unwrap();
        assert_eq!(mask[0], vec![0.0, 1.0, 1.0, 0.0]);
        assert_eq!(mask[1], vec![1.0, 0.0, 0.0, 0.0]);
        assert_eq!(mask[2], vec![0.0, 1.0, 1.0, 1.0]);
        // Truncation keeps the start, and a completion keeps at least its first token.
        let cut = collate(&pairs, 3, 3, &Device::Cpu).unwrap();
        let mask: Vec<Vec<f32>> = cut.loss_mask.to_vec2().unwrap();
        assert_eq!(mask[0], vec![0.0, 1.0]);
    }

    #[test]
    fn bad_rows_name_file_line_and_field() {
        let tok = PairTokenizer::for_model(&fixture(), Family::Llama, Some(2)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        std::fs::write(&path, "{\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}\n{\"prompt\":\"a\",\"chosen\":1,\"rejected\":\"c\"}\n").unwrap();
        let err = load_pairs(&path, &tok, 64).unwrap_err().to_string();
        assert!(
            err.contains("bad.jsonl:2") && err.contains("invalid type"),
            "{err}"
        );
        std::fs::write(
            &path,
            "{\"prompt\":\"a\",\"chosen\":\"  \",\"rejected\":\"c\"}\n",
        )
        .unwrap();
        let err = load_pairs(&path, &tok, 64).unwrap_err().to_string();
        assert!(
            err.contains("bad.jsonl:1") && err.contains("chosen"),
            "{err}"
        );
        std::fs::write(&path, "{\"prompt\":\"a\",\"rejected\":\"c\"}\n").unwrap();
        let err = load_pairs(&path, &tok, 64).unwrap_err().to_string();
        assert!(err.contains("missing field `chosen`"), "{err}");
    }
}
