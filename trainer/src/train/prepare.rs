//! A run made ready to train: the models and data loaded, the optimizer set up, and the latest
//! checkpoint restored when the run resumes.

use std::path::PathBuf;

use candle_core::Device;
use candle_nn::VarMap;

use super::checkpoint::Checkpoints;
use crate::config::{Objective, TrainConfig};
use crate::cut::{CutExample, load_cut_rows};
use crate::data::{Pair, PairTokenizer, collate, load_pairs};
use crate::error::{Result, TrainError};
use crate::losses::LossKind;
use crate::model::{Decoder, load_weights, reference_model, trainable_model};
use crate::optim::AdamW;
use crate::step::{StepSettings, reference_logps};

/// A run being trained: the models, the optimizer, the data, and the settings signals steer.
pub(super) struct Run<'a> {
    pub(super) cfg: &'a TrainConfig,
    pub(super) policy: Decoder,
    pub(super) reference: Decoder,
    pub(super) varmap: VarMap,
    pub(super) opt: AdamW,
    pub(super) settings: StepSettings,
    pub(super) lr_scale: f64,
    pub(super) pairs: Vec<Pair>,
    /// Reference log-likelihoods (chosen, rejected) of each training pair, when precomputed.
    pub(super) ref_logps: Option<Vec<[f32; 2]>>,
    pub(super) eval_pairs: Vec<Pair>,
    /// The rows of a CUT run (then `pairs` is empty), and its held-out rows.
    pub(super) cut_rows: Vec<CutExample>,
    pub(super) cut_eval: Vec<CutExample>,
    pub(super) tokenizer: PairTokenizer,
    pub(super) eos_id: Option<u32>,
    pub(super) pad_id: u32,
    pub(super) device: Device,
    pub(super) checkpoints: Checkpoints,
}

/// Loads models and data and sets up the optimizer; returns the run and its number of steps.
pub(super) fn prepare(cfg: &TrainConfig) -> Result<(Run<'_>, usize)> {
    let device = cfg.device.open()?;
    let loaded = load_weights(&cfg.model, &device)?;
    let reference_weights = if cfg.reference == cfg.model {
        None
    } else {
        Some(load_weights(&cfg.reference, &device)?)
    };
    let reference = match &reference_weights {
        Some(r) => reference_model(&r.config, &r.tensors, &device)?,
        None => reference_model(&loaded.config, &loaded.tensors, &device)?,
    }
    .with_compute_dtype(cfg.dtype.dtype());
    let (policy, varmap) = trainable_model(&loaded.config, Some(&loaded.tensors), &device)?;
    let policy = policy.with_compute_dtype(cfg.dtype.dtype());
    drop(reference_weights);
    let tok =
        PairTokenizer::for_model(&cfg.model, loaded.config.family, loaded.config.eos_token_id)?;
    let eval_on = |p: &Option<PathBuf>| p.as_ref().filter(|_| cfg.eval_every > 0).cloned();
    let (mut pairs, mut eval_pairs, mut cut_rows, mut cut_eval) = (vec![], vec![], vec![], vec![]);
    let (examples, dropped) = if let Objective::Cut(_) = cfg.objective {
        let (rows, dropped) = load_cut_rows(&cfg.train_data, &tok, cfg.max_length)?;
        cut_rows = rows;
        if let Some(p) = eval_on(&cfg.eval_data) {
            cut_eval = load_cut_rows(&p, &tok, cfg.max_length)?.0;
        }
        (cut_rows.len(), dropped)
    } else {
        let (rows, dropped) = load_pairs(&cfg.train_data, &tok, cfg.max_length)?;
        pairs = rows;
        if let Some(p) = eval_on(&cfg.eval_data) {
            eval_pairs = load_pairs(&p, &tok, cfg.max_length)?.0;
        }
        (pairs.len(), dropped)
    };
    if dropped > 0 {
        tracing::warn!(
            data = %cfg.train_data.display(),
            dropped,
            max_length = cfg.max_length,
            "rows dropped: their prompt leaves no room within max_length"
        );
    }
    if examples < cfg.batch_size {
        return Err(TrainError::Data(format!(
            "{}: {examples} rows, fewer than batch_size {}",
            cfg.train_data.display(),
            cfg.batch_size
        )));
    }
    let pad_id = loaded
        .config
        .pad_token_id
        .or(loaded.config.eos_token_id)
        .unwrap_or(0);
    let total = cfg
        .max_steps
        .unwrap_or(cfg.epochs * (examples / (cfg.batch_size * cfg.grad_accum)).max(1));
    let opt = AdamW::new(&varmap, cfg.weight_decay)?;
    let run = Run {
        cfg,
        policy,
        reference,
        varmap,
        opt,
        settings: StepSettings {
            // CUT steps take their settings from the objective; this one is for pairs.
            loss: cfg.objective.preference().unwrap_or(LossKind::Sigmoid),
            beta: cfg.beta,
            nll_alpha: cfg.nll_alpha,
            top_k: cfg.top_k,
        },
        lr_scale: 1.0,
        ref_logps: None,
        pairs,
        eval_pairs,
        cut_rows,
        cut_eval,
        tokenizer: tok,
        eos_id: loaded.config.eos_token_id,
        pad_id,
        device: device.clone(),
        checkpoints: Checkpoints::of_run(&cfg.output_dir),
    };
    Ok((run, total))
}

impl Run<'_> {
    /// Runs the reference over every training pair once, so steps need no reference pass.
    pub(super) fn precompute_reference(&mut self) -> Result<()> {
        let mut all = Vec::with_capacity(self.pairs.len());
        for chunk in self.pairs.chunks(self.cfg.batch_size) {
            let batch = collate(chunk, self.cfg.max_length, self.pad_id, &self.device)?;
            let rows: Vec<f32> = reference_logps(&self.reference, &batch)?.to_vec1()?;
            let n = chunk.len();
            all.extend((0..n).map(|i| [rows[i], rows[n + i]]));
        }
        self.ref_logps = Some(all);
        Ok(())
    }

    /// Restores the latest checkpoint of this run, if any; returns the first step to run.
    pub(super) fn resume(&mut self) -> Result<usize> {
        let Some(step) = self.checkpoints.latest()? else {
            return Ok(1);
        };
        let state = self
            .checkpoints
            .restore(step, &self.varmap, &mut self.opt, &self.device)?;
        if state.run_id != self.cfg.run_id {
            return Err(TrainError::Config(format!(
                "{} holds run {}, not {}: use another output_dir or the same run_id",
                self.cfg.output_dir.display(),
                state.run_id,
                self.cfg.run_id
            )));
        }
        (self.settings.beta, self.settings.nll_alpha, self.lr_scale) =
            (state.beta, state.nll_alpha, state.lr_scale);
        tracing::info!(run = %self.cfg.run_id, step, "resuming after the latest checkpoint");
        Ok(step + 1)
    }
}
