use std::path::PathBuf;

use candle_core::{Device, Tensor};

use super::*;
use crate::model::{Family, load_weights, trainable_model};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama")
}

fn rows(dir: &Path) -> (Decoder, Vec<CutExample>, PairTokenizer) {
    let loaded = load_weights(&fixture(), &Device::Cpu).unwrap();
    let (model, _) = trainable_model(&loaded.config, Some(&loaded.tensors), &Device::Cpu).unwrap();
    let tok = PairTokenizer::for_model(&fixture(), Family::Llama, Some(2)).unwrap();
    let path = dir.join("cut.jsonl");
    std::fs::write(
        &path,
        "{\"prompt\":\"Q: 12+30=\",\"response\":\" 42.\",\"aligned\":true}\n\
         {\"prompt\":\"Q: 12+30=\",\"response\":\" 52.\",\"judgment\":\"wrong: 12+30 is 42\",\"aligned\":false}\n",
    )
    .unwrap();
    let (examples, dropped) = load_cut_rows(&path, &tok, 64).unwrap();
    assert_eq!((examples.len(), dropped), (2, 0));
    (model, examples, tok)
}

/// Mean −log p over a row's response tokens, and its p values, from a forward pass of the row alone.
fn alone(model: &Decoder, row: &CutExample) -> (f64, Vec<f64>) {
    let ids = Tensor::new(row.plain.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let lp: Vec<f32> = token_logps(&model.forward(&ids).unwrap(), &ids)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    let resp: Vec<f64> = lp[lp.len() - row.response_len..]
        .iter()
        .map(|x| f64::from(*x))
        .collect();
    (
        -resp.iter().sum::<f64>() / resp.len() as f64,
        resp.iter().map(|l| l.exp()).collect(),
    )
}

#[test]
fn response_ids_are_shared_and_judgments_required_when_misaligned() {
    let dir = tempfile::tempdir().unwrap();
    let (_, examples, _) = rows(dir.path());
    for e in &examples {
        let tail = |s: &[u32]| s[s.len() - e.response_len..].to_vec();
        assert_eq!(tail(&e.plain), tail(&e.judged));
        assert_eq!(*e.plain.last().unwrap(), 2, "EOS ends the response");
    }
    assert!(examples[1].judged.len() > examples[1].plain.len());
    let tok = PairTokenizer::for_model(&fixture(), Family::Llama, Some(2)).unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\":\"a\",\"response\":\"b\",\"aligned\":false}\n",
    )
    .unwrap();
    let err = load_cut_rows(&bad, &tok, 64).unwrap_err().to_string();
    assert!(
        err.contains("bad.jsonl:1") && err.contains("judgment"),
        "{err}"
    );
}

#[test]
fn no_flagged_token_means_mle_and_every_flagged_token_means_unlikelihood() {
    let dir = tempfile::tempdir().unwrap();
    let (model, examples, _) = rows(dir.path());
    let (nll0, _) = alone(&model, &examples[0]);
    let (nll1, p1) = alone(&model, &examples[1]);

    // λ so high nothing is flagged: both rows are plain MLE, averaged as (NLL + UL) / 2.
    let never = CutSettings {
        threshold: 1e30,
        weight: 0.5,
    };
    let r = cut_forward(&model, &examples, &never, 10, 3).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-4 * b.abs().max(1.0);
    assert!(
        close(r.metrics["cut/nll"], nll0) && close(r.metrics["cut/ul"], nll1),
        "{:?}",
        r.metrics
    );
    assert!(close(r.metrics["loss"], f64::midpoint(nll0, nll1)));
    assert_eq!(r.metrics["cut/inappropriate_share"], 0.0);

    // λ below every ratio: each token of the misaligned row gets −w·log(1 − p).
    let always = CutSettings {
        threshold: 1e-30,
        weight: 0.5,
    };
    let r = cut_forward(&model, &examples, &always, 10, 3).unwrap();
    let ul = p1.iter().map(|p| -0.5 * (1.0 - p).ln()).sum::<f64>() / p1.len() as f64;
    assert!(
        close(r.metrics["cut/ul"], ul),
        "{} vs {ul}",
        r.metrics["cut/ul"]
    );
    assert_eq!(r.metrics["cut/inappropriate_share"], 1.0);
    let grads = r.loss.backward().unwrap();
    assert!(
        grads.get(model.embeddings()).is_some(),
        "the loss reaches the weights"
    );
}
