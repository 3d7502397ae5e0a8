//! The training configuration: a TOML file (`redline train --config run.toml`) whose every field
//! can also be given as a flag; flags win. [`TrainArgs`] is both shapes, declared once; [`TrainConfig`]
//! is the validated result with defaults filled in, and serialises as the run's config on the server.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::Args;
use redline_core::RuleSetName;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};

use crate::cut::CutSettings;
use crate::error::{Result, TrainError};
use crate::generate::Sampling;
use crate::iterate::Lineage;
use crate::losses::LossKind;
use crate::model::is_gguf;
use crate::optim::Schedule;

/// Declares the settings struct from one list of fields: each is optional (a file or the flags
/// may leave any out), and `overlaid_with` covers every field without naming it again.
macro_rules! settings {
    (
        $(#[$struct_meta:meta])*
        pub struct $name:ident { $($(#[$meta:meta])* $field:ident: $ty:ty,)* }
    ) => {
        $(#[$struct_meta])*
        pub struct $name { $($(#[$meta])* pub $field: Option<$ty>,)* }

        impl $name {
            /// `self` with every field that `top` sets replaced.
            #[must_use]
            pub fn overlaid_with(self, top: Self) -> Self {
                Self { $($field: top.$field.or(self.$field),)* }
            }
        }
    };
}

settings! {
    /// Every setting, optional, as read from TOML or from flags.
    #[derive(Debug, Clone, Default, Deserialize, Args)]
    #[serde(deny_unknown_fields)]
    pub struct TrainArgs {
    /// The model to train: a folder in Hugging Face format (config.json, model.safetensors,
    /// tokenizer.json) or a GGUF file of a Llama/Qwen2 model (dequantised to f32, tokenizer inside).
    #[arg(long)]
    model: PathBuf,
    /// Reference model, folder or GGUF file [default: the model].
    #[arg(long)]
    reference: PathBuf,
    /// Compute the reference log-probs of every training pair once, before the first step,
    /// instead of a reference forward pass in every step [default: false, as TRL].
    #[arg(long)]
    precompute_ref: bool,
    /// Training pairs, JSONL {prompt, chosen, rejected} [default: MODEL/train.jsonl].
    #[arg(long)]
    train_data: PathBuf,
    /// Held-out pairs for evaluation [default: MODEL/eval.jsonl when it exists].
    #[arg(long)]
    eval_data: PathBuf,
    /// Loss: sigmoid, ipo, hinge, slic, robust, discopop, dbaql, aql, aqfl, padll, cell, pfl, or cut
    /// (learning from judgments, on {prompt, response, judgment, aligned} rows) [default: sigmoid].
    #[arg(long)]
    loss: String,
    /// CUT: λ, how much likelier a token must get with the judgment in context to be trained
    /// down [default: 1.2, the paper's offline value].
    #[arg(long)]
    cut_threshold: f64,
    /// CUT: weight of the unlikelihood term [default: 0.5, the paper's offline value].
    #[arg(long)]
    cut_weight: f64,
    /// β, the strength of the reference constraint [default: 0.1].
    #[arg(long)]
    beta: f64,
    /// Weight of the NLL (RPO) term on chosen completions [default: 0].
    #[arg(long)]
    nll_alpha: f64,
    /// ε of the robust loss [default: 0].
    #[arg(long)]
    label_smoothing: f64,
    /// Peak learning rate [default: 1e-6].
    #[arg(long)]
    lr: f64,
    /// Linear warmup steps [default: 0].
    #[arg(long)]
    warmup_steps: usize,
    /// Learning-rate schedule after warmup [default: linear].
    #[arg(long, value_enum)]
    schedule: Schedule,
    /// AdamW weight decay [default: 0].
    #[arg(long)]
    weight_decay: f64,
    /// Clip gradients to this global L2 norm; 0 disables [default: 1].
    #[arg(long)]
    max_grad_norm: f64,
    /// Pairs per micro-batch [default: 8].
    #[arg(long)]
    batch_size: usize,
    /// Micro-batches per optimizer step [default: 1].
    #[arg(long)]
    grad_accum: usize,
    /// Tokens kept of each prompt+completion (the start is kept) [default: 512].
    #[arg(long)]
    max_length: usize,
    /// Optimizer steps to run [default: all epochs].
    #[arg(long)]
    max_steps: usize,
    /// Passes over the training data, when max_steps is not set [default: 1].
    #[arg(long)]
    epochs: usize,
    /// Seed of the data order [default: 42].
    #[arg(long)]
    seed: u64,
    /// Shuffle the pairs each epoch [default: true].
    #[arg(long)]
    shuffle: bool,
    /// k of the top-k entropy and mass metrics; 0 leaves them out [default: 10].
    #[arg(long)]
    top_k: usize,
    /// Evaluate on the held-out pairs every N steps; 0 disables [default: 0].
    #[arg(long)]
    eval_every: usize,
    /// Also evaluate the starting model, as step 0, when evaluation is on: the baseline a score
    /// rule compares with, and the checkpoint a stop can fall back to [default: true].
    #[arg(long)]
    eval_on_start: bool,
    /// Eval prompts to generate completions for at each evaluation; 0 disables [default: 8].
    #[arg(long)]
    gen_prompts: usize,
    /// Sampling temperature of those generations [default: 0.5].
    #[arg(long)]
    gen_temperature: f64,
    /// Nucleus (top-p) of those generations [default: 0.75].
    #[arg(long)]
    gen_top_p: f64,
    /// Most tokens generated per prompt [default: 32].
    #[arg(long)]
    gen_max_tokens: usize,
    /// Write a checkpoint every N steps; 0: only at the end [default: 0].
    #[arg(long)]
    checkpoint_every: usize,
    /// Folder for metrics.jsonl, checkpoints and resume state [default: redline-runs/RUN_ID].
    #[arg(long)]
    output_dir: PathBuf,
    /// cpu, or cuda / cuda:N with the `cuda` feature [default: cpu].
    #[arg(long)]
    device: DeviceSpec,
    /// What the model computes in: f32, or bf16 (weights, optimizer and checkpoints stay f32;
    /// each layer casts its weights as it uses them, as PyTorch's autocast) [default: f32].
    #[arg(long)]
    dtype: Precision,
    /// Redline server URL, e.g. http://127.0.0.1:8080; without it the run is offline (metrics.jsonl only).
    #[arg(long, env = "REDLINE_SERVER")]
    server: String,
    /// Bearer token for the server.
    #[arg(long, env = "REDLINE_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    token: String,
    /// After training, how many seconds to wait for a server that makes no progress before
    /// leaving the undelivered steps in the spool for `redline push` [default: 30].
    #[arg(long, env = "REDLINE_FINISH_GRACE", value_name = "SECONDS")]
    finish_grace: u64,
    /// Run id on the server (1-64 of [A-Za-z0-9_.-]); reusing one resumes that run [default: RUN_NAME-TIME].
    #[arg(long)]
    run_id: String,
    /// Display name of the run [default: the run id].
    #[arg(long)]
    run_name: String,
    /// Project of the run [default: default].
    #[arg(long)]
    project: String,
    /// Tags of the run (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Rule sets that watch the run on the server, in order (repeatable; `--rules none` for
    /// none) [default: presets].
    #[arg(long = "rules")]
    rules: Vec<String>,
    }
}

impl TrainArgs {
    /// Reads a TOML file; unknown keys are errors that name the key.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        toml::from_str(&text).map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))
    }
}

/// What a run's model computes in; its parameters, optimizer state and checkpoints stay f32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

/// The name `--dtype` takes.
impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = clap::ValueEnum::to_possible_value(self).expect("no variant is skipped");
        f.write_str(value.get_name())
    }
}

impl Precision {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Self::F32 => candle_core::DType::F32,
            Self::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// Where a run trains: `cpu`, or `cuda` / `cuda:N` (N the GPU's number; `cuda` is `cuda:0`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let ordinal = match s {
            "cpu" => return Ok(Self::Cpu),
            "cuda" => Some(0),
            _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()),
        };
        ordinal
            .map(Self::Cuda)
            .ok_or_else(|| format!("must be cpu, cuda or cuda:N, got {s:?}"))
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl DeviceSpec {
    /// The candle device; a GPU needs the `cuda` feature and a machine that has one.
    pub fn open(self) -> Result<candle_core::Device> {
        match self {
            Self::Cpu => Ok(candle_core::Device::Cpu),
            Self::Cuda(n) => candle_core::Device::new_cuda(n).map_err(|e| {
                TrainError::Config(format!(
                    "device {self}: {e} (build with --features cuda on a machine with a GPU)"
                ))
            }),
        }
    }
}

/// What a run optimises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    /// A pairwise loss on {prompt, chosen, rejected} rows.
    Preference(LossKind),
    /// CUT on {prompt, response, judgment, aligned} rows.
    Cut(CutSettings),
}

/// The objective's own settings, beside `loss` in the run's config: CUT's λ and weight, the
/// robust loss's ε.
impl Serialize for Objective {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        match self {
            Self::Cut(cut) => {
                map.serialize_entry("cut_threshold", &cut.threshold)?;
                map.serialize_entry("cut_weight", &cut.weight)?;
            }
            Self::Preference(LossKind::Robust { epsilon }) => {
                map.serialize_entry("label_smoothing", epsilon)?;
            }
            Self::Preference(_) => {}
        }
        map.end()
    }
}

impl Objective {
    pub fn preference(self) -> Option<LossKind> {
        match self {
            Self::Preference(k) => Some(k),
            Self::Cut(_) => None,
        }
    }
}

/// A validated configuration. Serialised, it is the run's config on the server: the settings
/// that shape the training; where it reports (output folder, server, run id, name, project, tags,
/// rules) is left out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainConfig {
    pub model: PathBuf,
    pub reference: PathBuf,
    pub precompute_ref: bool,
    pub train_data: PathBuf,
    pub eval_data: Option<PathBuf>,
    #[serde(flatten)]
    pub objective: Objective,
    #[serde(rename = "loss")]
    pub loss_name: String,
    pub beta: f64,
    pub nll_alpha: f64,
    pub lr: f64,
    pub warmup_steps: usize,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_length: usize,
    pub max_steps: Option<usize>,
    pub epochs: usize,
    pub seed: u64,
    pub shuffle: bool,
    pub top_k: usize,
    pub eval_every: usize,
    pub eval_on_start: bool,
    pub gen_prompts: usize,
    /// Recorded as `gen_temperature`, `gen_top_p` and `gen_max_tokens`, the settings' names.
    #[serde(flatten)]
    pub sampling: Sampling,
    pub checkpoint_every: usize,
    pub device: DeviceSpec,
    pub dtype: Precision,
    #[serde(skip)]
    pub output_dir: PathBuf,
    #[serde(skip)]
    pub server: Option<String>,
    #[serde(skip)]
    pub token: Option<String>,
    /// How long the reporter waits for a server making no progress after training.
    #[serde(skip)]
    pub finish_grace: std::time::Duration,
    #[serde(skip)]
    pub run_id: String,
    #[serde(skip)]
    pub run_name: String,
    #[serde(skip)]
    pub project: String,
    #[serde(skip)]
    pub tags: Vec<String>,
    /// The server's default (the presets) when `None`.
    #[serde(skip)]
    pub rules: Option<Vec<RuleSetName>>,
    /// Where the run sits in a series of runs (iterative training), recorded in its config.
    #[serde(rename = "iterative", skip_serializing_if = "Option::is_none")]
    pub lineage: Option<Lineage>,
}

fn bad(field: &str, message: impl fmt::Display) -> TrainError {
    TrainError::Config(format!("{field}: {message}"))
}

fn positive(field: &str, v: usize) -> Result<usize> {
    if v == 0 {
        Err(bad(field, "must be at least 1"))
    } else {
        Ok(v)
    }
}

fn finite_non_negative(field: &str, v: f64) -> Result<f64> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(bad(field, format!("must be a finite number ≥ 0, got {v}")))
    }
}

fn resolve_objective(a: &TrainArgs) -> Result<(String, Objective)> {
    let name = a.loss.clone().unwrap_or_else(|| "sigmoid".into());
    if name == "cut" {
        let threshold = a.cut_threshold.unwrap_or(1.2);
        if !(threshold.is_finite() && threshold > 0.0) {
            return Err(bad(
                "cut_threshold",
                format!("must be a finite number > 0, got {threshold}"),
            ));
        }
        let weight = finite_non_negative("cut_weight", a.cut_weight.unwrap_or(0.5))?;
        if a.label_smoothing.is_some() {
            return Err(bad("label_smoothing", "applies to the robust loss only"));
        }
        if a.precompute_ref == Some(true) {
            return Err(bad(
                "precompute_ref",
                "applies to preference losses; cut uses no reference",
            ));
        }
        return Ok((name, Objective::Cut(CutSettings { threshold, weight })));
    }
    if a.cut_threshold.is_some() || a.cut_weight.is_some() {
        return Err(bad(
            "cut_threshold",
            "cut_threshold and cut_weight apply to loss = \"cut\" only",
        ));
    }
    let mut loss = LossKind::parse(&name).ok_or_else(|| {
        bad(
            "loss",
            format!(
                "unknown loss {name:?}; known: sigmoid, ipo, hinge, slic, robust, discopop, dbaql, \
                 aql, aqfl, padll, cell, pfl, cut"
            ),
        )
    })?;
    if let Some(eps) = a.label_smoothing {
        match &mut loss {
            LossKind::Robust { epsilon } if (0.0..0.5).contains(&eps) => *epsilon = eps,
            LossKind::Robust { .. } => return Err(bad("label_smoothing", "must be in [0, 0.5)")),
            _ => return Err(bad("label_smoothing", "applies to the robust loss only")),
        }
    }
    Ok((name, Objective::Preference(loss)))
}

/// The given id, or one made from the run name and the time, checked against the server's rules.
fn resolve_run_id(id: Option<String>, run_name: &str, now: u64) -> Result<String> {
    let id = id.unwrap_or_else(|| {
        let base: String = run_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .take(48)
            .collect();
        format!(
            "{}-{now}",
            base.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        )
    });
    redline_core::RunId::parse(id.as_str()).map_err(|e| bad("run_id", format!("run id {e}")))?;
    Ok(id)
}

fn resolve_sampling(
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<usize>,
) -> Result<Sampling> {
    let temperature = finite_non_negative("gen_temperature", temperature.unwrap_or(0.5))?;
    let top_p = top_p.unwrap_or(0.75);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(bad("gen_top_p", format!("must be in (0, 1], got {top_p}")));
    }
    Ok(Sampling {
        temperature,
        top_p,
        max_new_tokens: positive("gen_max_tokens", max_tokens.unwrap_or(32))?,
    })
}

/// The model to train: a folder with a `config.json`, or a GGUF file.
fn resolve_model(model: Option<PathBuf>) -> Result<PathBuf> {
    let model = model.ok_or_else(|| {
        bad(
            "model",
            "is required: the model folder or GGUF file to train",
        )
    })?;
    if is_gguf(&model) {
        if !model.is_file() {
            return Err(bad("model", format!("{} does not exist", model.display())));
        }
    } else if !model.join("config.json").is_file() {
        return Err(bad(
            "model",
            format!(
                "{} has no config.json (nor is it a .gguf file)",
                model.display()
            ),
        ));
    }
    Ok(model)
}

impl TrainConfig {
    /// Fills defaults and checks every field. `now` (Unix seconds) names runs that have no id.
    pub fn resolve(a: TrainArgs, now: u64) -> Result<Self> {
        let (loss_name, objective) = resolve_objective(&a)?;
        let model = resolve_model(a.model)?;
        let beta = a.beta.unwrap_or(0.1);
        if !(beta.is_finite() && beta > 0.0) {
            return Err(bad(
                "beta",
                format!("must be a finite number > 0, got {beta}"),
            ));
        }
        let batch_size = positive("batch_size", a.batch_size.unwrap_or(8))?;
        if objective
            .preference()
            .is_some_and(LossKind::uses_batch_statistics)
            && batch_size < 2
        {
            return Err(bad(
                "batch_size",
                format!("{loss_name} uses batch statistics: needs at least 2"),
            ));
        }
        let lr = a.lr.unwrap_or(1e-6);
        if !(lr.is_finite() && lr > 0.0) {
            return Err(bad("lr", format!("must be a finite number > 0, got {lr}")));
        }
        let run_name = a.run_name.unwrap_or_else(|| {
            model
                .file_stem()
                .map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned())
        });
        let run_id = resolve_run_id(a.run_id, &run_name, now)?;
        // A model folder may carry its data; a GGUF file cannot.
        let beside_model = |name: &str| Some(model.join(name)).filter(|_| !is_gguf(&model));
        let train_data = a
            .train_data
            .or_else(|| beside_model("train.jsonl"))
            .ok_or_else(|| bad("train_data", "is required when the model is a GGUF file"))?;
        let eval_data = a
            .eval_data
            .or_else(|| beside_model("eval.jsonl").filter(|p| p.is_file()));
        let rules = a
            .rules
            .map(|names| {
                names
                    .into_iter()
                    .filter(|n| n != "none")
                    .map(|n| {
                        RuleSetName::parse(n).map_err(|e| bad("rules", format!("rule set {e}")))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        Ok(Self {
            reference: a.reference.unwrap_or_else(|| model.clone()),
            precompute_ref: a.precompute_ref.unwrap_or(false),
            output_dir: a
                .output_dir
                .unwrap_or_else(|| PathBuf::from("redline-runs").join(&run_id)),
            model,
            train_data,
            eval_data,
            objective,
            loss_name,
            beta,
            nll_alpha: finite_non_negative("nll_alpha", a.nll_alpha.unwrap_or(0.0))?,
            lr,
            warmup_steps: a.warmup_steps.unwrap_or(0),
            schedule: a.schedule.unwrap_or(Schedule::Linear),
            weight_decay: finite_non_negative("weight_decay", a.weight_decay.unwrap_or(0.0))?,
            max_grad_norm: finite_non_negative("max_grad_norm", a.max_grad_norm.unwrap_or(1.0))?,
            batch_size,
            grad_accum: positive("grad_accum", a.grad_accum.unwrap_or(1))?,
            max_length: a.max_length.unwrap_or(512).max(2),
            max_steps: a.max_steps.map(|s| positive("max_steps", s)).transpose()?,
            epochs: positive("epochs", a.epochs.unwrap_or(1))?,
            seed: a.seed.unwrap_or(42),
            shuffle: a.shuffle.unwrap_or(true),
            top_k: a.top_k.unwrap_or(10),
            eval_every: a.eval_every.unwrap_or(0),
            eval_on_start: a.eval_on_start.unwrap_or(true),
            gen_prompts: a.gen_prompts.unwrap_or(8),
            sampling: resolve_sampling(a.gen_temperature, a.gen_top_p, a.gen_max_tokens)?,
            checkpoint_every: a.checkpoint_every.unwrap_or(0),
            device: a.device.unwrap_or_default(),
            dtype: a.dtype.unwrap_or_default(),
            server: a.server.map(|s| s.trim_end_matches('/').to_owned()),
            token: a.token,
            finish_grace: a.finish_grace.map_or(
                crate::reporter::FINISH_GRACE,
                std::time::Duration::from_secs,
            ),
            run_id,
            run_name,
            project: a.project.unwrap_or_else(|| "default".into()),
            tags: a.tags.unwrap_or_default(),
            rules,
            lineage: None,
        })
    }

    /// The configuration as JSON, for the run's record on the server.
    pub fn to_json(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self).map_err(|e| TrainError::Config(format!("the run's config: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama")
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file: TrainArgs = toml::from_str(&format!(
            "model = {:?}\nloss = \"ipo\"\nbeta = 0.5\nmax_steps = 3\n",
            fixture()
        ))
        .unwrap();
        let flags = TrainArgs {
            beta: Some(0.2),
            ..TrainArgs::default()
        };
        let c = TrainConfig::resolve(file.overlaid_with(flags), 1_700_000_000).unwrap();
        assert_eq!(
            (c.objective, c.beta, c.max_steps, c.batch_size),
            (Objective::Preference(LossKind::Ipo), 0.2, Some(3), 8)
        );
        assert_eq!(c.run_id, "tiny-llama-1700000000");
        assert_eq!(c.train_data, fixture().join("train.jsonl"));
        assert_eq!(c.eval_data, Some(fixture().join("eval.jsonl")));
    }

    /// The documented example file stays valid.
    #[test]
    fn the_example_config_resolves() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/run.example.toml");
        let mut args = TrainArgs::from_toml_file(&path).unwrap();
        // Its paths are relative to the repository root.
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        for p in [&mut args.model, &mut args.train_data, &mut args.eval_data] {
            *p = p.as_ref().map(|p| root.join(p));
        }
        let c = TrainConfig::resolve(args, 0).unwrap();
        assert_eq!(
            (c.loss_name.as_str(), c.schedule, c.max_steps),
            ("sigmoid", Schedule::Cosine, Some(200))
        );
        assert_eq!(c.tags, ["dpo", "rpo", "tiny"]);
    }

    /// The run's config on the server keeps the keys and forms it always had; the objective's own
    /// settings are added beside `loss`.
    #[test]
    fn the_recorded_config_names_every_training_setting() {
        let args = TrainArgs {
            model: Some(fixture()),
            schedule: Some(Schedule::Cosine),
            device: Some("cuda".parse().unwrap()),
            ..TrainArgs::default()
        };
        let json = TrainConfig::resolve(args.clone(), 0)
            .unwrap()
            .to_json()
            .unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        let mut expected: Vec<&str> =
            "model reference precompute_ref train_data eval_data loss beta \
            nll_alpha lr warmup_steps schedule weight_decay max_grad_norm batch_size grad_accum \
            max_length max_steps epochs seed shuffle top_k eval_every eval_on_start gen_prompts \
            gen_temperature gen_top_p gen_max_tokens checkpoint_every device dtype"
                .split_whitespace()
                .collect();
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(
            (&json["schedule"], &json["device"], &json["loss"]),
            (&"cosine".into(), &"cuda:0".into(), &"sigmoid".into())
        );
        assert_eq!(json["gen_max_tokens"], 32);
        let cut = TrainArgs {
            loss: Some("cut".into()),
            cut_weight: Some(0.25),
            ..args
        };
        let json = TrainConfig::resolve(cut, 0).unwrap().to_json().unwrap();
        assert_eq!(
            (&json["cut_threshold"], &json["cut_weight"]),
            (&1.2.into(), &0.25.into())
        );
    }

    #[test]
    fn the_device_and_the_schedule_are_words_from_a_known_set() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda:1".parse(), Ok(DeviceSpec::Cuda(1)));
        for bad in ["gpu", "cuda:x", "cuda1"] {
            let err = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        let err = |text: &str| toml::from_str::<TrainArgs>(text).unwrap_err().to_string();
        let device = err("device = \"gpu\"");
        assert!(
            device.contains("device") && device.contains("\"gpu\""),
            "{device}"
        );
        let schedule = err("schedule = \"cosin\"");
        assert!(
            schedule.contains("schedule") && schedule.contains("cosin"),
            "{schedule}"
        );
    }

    #[test]
    fn bad_settings_name_the_field() {
        let err = |toml_text: &str| {
            let a: std::result::Result<TrainArgs, _> = toml::from_str(toml_text);
            match a {
                Err(e) => e.to_string(),
                Ok(a) => TrainConfig::resolve(a, 0).unwrap_err().to_string(),
            }
        };
        let m = format!("model = {:?}\n", fixture());
        assert!(err("beta = 0.1").contains("model: is required"));
        assert!(err(&format!("{m}loss = \"dpo2\"")).contains("loss: unknown loss"));
        assert!(err(&format!("{m}beta = -1.0")).contains("beta"));
        assert!(err(&format!("{m}batch_size = 0")).contains("batch_size"));
        assert!(err(&format!("{m}loss = \"dbaql\"\nbatch_size = 1")).contains("batch statistics"));
        assert!(err(&format!("{m}label_smoothing = 0.1")).contains("robust loss only"));
        assert!(err(&format!("{m}cut_weight = 1.0")).contains("apply to loss = \"cut\" only"));
        assert!(err(&format!("{m}loss = \"cut\"\ncut_threshold = 0.0")).contains("cut_threshold"));
        assert!(err(&format!("{m}lerning_rate = 1.0")).contains("lerning_rate"));
        assert!(err("model = \"/nowhere\"").contains("/nowhere has no config.json"));
        assert!(err(&format!("{m}run_id = \"a b\"")).contains("run_id"));
        assert!(err(&format!("{m}rules = [\"Presets\"]")).contains("rules: rule set"));
    }
}
