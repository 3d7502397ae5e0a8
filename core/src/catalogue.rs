//! The metric catalogue: every metric Redline's trainer and Python client report, with its chart,
//! its unit and what it measures. This is the one definition of those names: the trainer writes
//! them from here, the dashboard groups and labels its charts from here, the shipped presets are
//! checked against it, and `redline metrics --json` hands it to the Python client's tests.
//!
//! Two kinds of names sit outside it, by rule:
//! - **held-out twins**: `eval/<name>` is `<name>` measured on the held-out pairs (the trainer's
//!   evaluation and TRL's `eval_` logs); it shares the metric's unit and gets a chart of its own.
//! - **user metrics**: any other valid metric name a run reports (TRL's `logits/chosen`, `epoch`,
//!   a user's own `val/bleu`) is stored and charted one per chart. User rule files may name them;
//!   shipped presets may not (a test holds them to the catalogue and its twins).

use serde::Serialize;

use crate::hparams::Steerable;

/// What a metric's values count, for axis labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// A plain number: a loss, a reward (β times a log-ratio), a coefficient.
    Number,
    /// Natural-log units (log-likelihoods, full-vocabulary entropy, KL).
    Nats,
    /// Nats per completion token.
    NatsPerToken,
    /// Base-2 units: the top-k entropy is in bits, as the over-optimisation paper reports it.
    Bits,
    /// A probability, 0 to 1.
    Probability,
    /// A share of cases, 0 to 1 (reward accuracy, exact-match score).
    Fraction,
    Seconds,
    Tokens,
    TokensPerSecond,
}

impl Unit {
    /// The unit as an axis or title shows it; `None` for a plain number.
    pub fn label(self) -> Option<&'static str> {
        match self {
            Self::Number => None,
            Self::Nats => Some("nats"),
            Self::NatsPerToken => Some("nats/token"),
            Self::Bits => Some("bits"),
            Self::Probability => Some("probability"),
            Self::Fraction => Some("fraction"),
            Self::Seconds => Some("s"),
            Self::Tokens => Some("tokens"),
            Self::TokensPerSecond => Some("tokens/s"),
        }
    }
}

/// One metric Redline reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Metric {
    pub name: &'static str,
    /// The slug of the chart it is drawn in; `None`: listed under the run's other series.
    pub chart: Option<&'static str>,
    pub unit: Unit,
    pub about: &'static str,
}

impl Metric {
    const fn new(
        name: &'static str,
        chart: Option<&'static str>,
        unit: Unit,
        about: &'static str,
    ) -> Self {
        Self {
            name,
            chart,
            unit,
            about,
        }
    }

    /// The hyperparameter a signal may set, when this metric reports one's current value.
    pub fn steerable(&self) -> Option<Steerable> {
        Steerable::parse(self.name).ok()
    }

    /// The name of this metric measured on the held-out pairs.
    pub fn held_out(&self) -> String {
        format!("{EVAL_PREFIX}{}", self.name)
    }
}

/// Which sequences a per-sequence metric was measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The preferred completions of the batch's pairs.
    Chosen,
    /// The dispreferred completions.
    Rejected,
    /// The policy's own samples on held-out prompts (what the over-optimisation paper measures).
    Generated,
    /// The single response of a CUT example.
    Response,
}

impl Side {
    pub const PAIR: [Self; 2] = [Self::Chosen, Self::Rejected];
}

/// A metric measured on each [`Side`]: one entry per side, in `Side`'s order.
#[derive(Debug, Clone, Copy)]
pub struct Sided([Metric; 4]);

impl Sided {
    pub const fn on(&self, side: Side) -> &Metric {
        &self.0[side as usize]
    }
}

// Why a macro: the four names must be `&'static str` constants (the trainer inserts them per step
// and the charts match on them), and `concat!` is the only way to build them from one prefix.
macro_rules! sided {
    ($prefix:literal, $chart:literal, $unit:expr, $what:literal) => {
        Sided([
            Metric::new(
                concat!($prefix, "/chosen"),
                Some($chart),
                $unit,
                concat!($what, ", on the chosen completions"),
            ),
            Metric::new(
                concat!($prefix, "/rejected"),
                Some($chart),
                $unit,
                concat!($what, ", on the rejected completions"),
            ),
            Metric::new(
                concat!($prefix, "/generated"),
                Some($chart),
                $unit,
                concat!($what, ", on the policy's own samples of held-out prompts"),
            ),
            Metric::new(
                concat!($prefix, "/response"),
                Some($chart),
                $unit,
                concat!($what, ", on CUT's responses"),
            ),
        ])
    };
}

/// The prefix of a metric measured on the held-out pairs.
pub const EVAL_PREFIX: &str = "eval/";

pub const LOSS: Metric = Metric::new("loss", Some("loss"), Unit::Number, "the training loss");
pub const REWARD_CHOSEN: Metric = Metric::new(
    "rewards/chosen",
    Some("rewards"),
    Unit::Number,
    "β·(log π − log π_ref) of the chosen completions, batch mean",
);
pub const REWARD_REJECTED: Metric = Metric::new(
    "rewards/rejected",
    Some("rewards"),
    Unit::Number,
    "β·(log π − log π_ref) of the rejected completions, batch mean",
);
pub const REWARD_MARGIN: Metric = Metric::new(
    "rewards/margins",
    Some("rewards"),
    Unit::Number,
    "chosen minus rejected reward, batch mean",
);
pub const REWARD_ACCURACY: Metric = Metric::new(
    "rewards/accuracies",
    Some("accuracies"),
    Unit::Fraction,
    "share of pairs whose chosen reward exceeds the rejected",
);
pub const LOGPS: Sided = sided!(
    "logps",
    "logps",
    Unit::Nats,
    "summed log-likelihood of each completion, batch mean"
);
pub const LOGPS_MEAN: Sided = sided!(
    "logps_mean",
    "logps_mean",
    Unit::NatsPerToken,
    "per-token log-likelihood of each completion, batch mean"
);
pub const TOPK_ENTROPY: Sided = sided!(
    "topk_entropy",
    "topk_entropy",
    Unit::Bits,
    "entropy of the next-token top k, renormalised within them"
);
pub const TOPK_MASS: Sided = sided!(
    "topk_mass",
    "topk_mass",
    Unit::Probability,
    "probability mass of the next-token top k"
);
pub const TOP1_PROB: Sided = sided!(
    "top1_prob",
    "top1_prob",
    Unit::Probability,
    "probability of the most likely next token (squeezing)"
);
pub const ENTROPY: Metric = Metric::new(
    "entropy",
    Some("entropy"),
    Unit::Nats,
    "full-vocabulary next-token entropy on the chosen completions",
);
pub const KL_CHOSEN: Metric = Metric::new(
    "kl/chosen",
    Some("kl"),
    Unit::NatsPerToken,
    "Σ (log π − log π_ref) over the chosen tokens, per token: a KL estimate",
);
pub const GRAD_NORM: Metric = Metric::new(
    "grad_norm",
    Some("grad_norm"),
    Unit::Number,
    "global gradient norm before clipping",
);
pub const LEARNING_RATE: Metric = Metric::new(
    "learning_rate",
    Some("learning_rate"),
    Unit::Number,
    "the learning rate applied at this step (schedule times lr_scale)",
);
pub const LR_SCALE: Metric = Metric::new(
    "lr_scale",
    Some("lr_scale"),
    Unit::Number,
    "the steered factor on the scheduled learning rate",
);
pub const BETA: Metric = Metric::new(
    "beta",
    Some("beta"),
    Unit::Number,
    "DPO's β at this step (steerable)",
);
pub const NLL_ALPHA: Metric = Metric::new(
    "nll_alpha",
    Some("nll_alpha"),
    Unit::Number,
    "weight of the NLL term on the chosen completions (RPO; steerable)",
);
pub const CUT_NLL: Metric = Metric::new(
    "cut/nll",
    Some("cut"),
    Unit::Number,
    "CUT's likelihood term on appropriate responses",
);
pub const CUT_UL: Metric = Metric::new(
    "cut/ul",
    Some("cut"),
    Unit::Number,
    "CUT's unlikelihood term on inappropriate tokens",
);
pub const CUT_INAPPROPRIATE_SHARE: Metric = Metric::new(
    "cut/inappropriate_share",
    None,
    Unit::Fraction,
    "share of the batch's tokens CUT marks inappropriate",
);
pub const TOKENS_PER_SECOND: Metric = Metric::new(
    "tokens_per_second",
    None,
    Unit::TokensPerSecond,
    "training throughput over this step",
);
pub const STEP_SECONDS: Metric = Metric::new(
    "time/step_seconds",
    None,
    Unit::Seconds,
    "wall time of this training step",
);
pub const TOPK_SECONDS: Metric = Metric::new(
    "time/topk_seconds",
    None,
    Unit::Seconds,
    "the part of the step spent on the top-k metrics",
);
/// The exact-match score on held-out prompts with a gold answer: what a run is for, when the task
/// has one. Label-free rules must not read it.
pub const EVAL_SCORE: Metric = Metric::new(
    "eval/score",
    None,
    Unit::Fraction,
    "exact match of the last number of a sample with the held-out gold answer",
);
pub const EVAL_GENERATED_TOKENS: Metric = Metric::new(
    "eval/generated_tokens",
    None,
    Unit::Tokens,
    "mean length of the policy's samples of held-out prompts",
);

/// The metrics measured once per step, in chart-legend order.
const SINGLE: &[Metric] = &[
    LOSS,
    REWARD_CHOSEN,
    REWARD_REJECTED,
    REWARD_MARGIN,
    REWARD_ACCURACY,
    ENTROPY,
    KL_CHOSEN,
    GRAD_NORM,
    LEARNING_RATE,
    LR_SCALE,
    BETA,
    NLL_ALPHA,
    CUT_NLL,
    CUT_UL,
    CUT_INAPPROPRIATE_SHARE,
    TOKENS_PER_SECOND,
    STEP_SECONDS,
    TOPK_SECONDS,
    EVAL_SCORE,
    EVAL_GENERATED_TOKENS,
];

const SIDED: &[Sided] = &[LOGPS, LOGPS_MEAN, TOPK_ENTROPY, TOPK_MASS, TOP1_PROB];

/// Every catalogue metric.
pub fn all() -> impl Iterator<Item = &'static Metric> {
    SINGLE.iter().chain(SIDED.iter().flat_map(|s| s.0.iter()))
}

/// The catalogue entry of `name`, or of the metric it is the held-out twin of.
pub fn lookup(name: &str) -> Option<&'static Metric> {
    let exact = all().find(|m| m.name == name);
    exact.or_else(|| {
        let base = name.strip_prefix(EVAL_PREFIX)?;
        all().find(|m| m.name == base)
    })
}

/// A chart of related metrics drawn together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Chart {
    pub slug: &'static str,
    /// Without the unit: [`Chart::heading`] adds it.
    pub title: &'static str,
    pub unit: Unit,
    pub log_y: bool,
}

impl Chart {
    const fn new(slug: &'static str, title: &'static str, unit: Unit) -> Self {
        Self {
            slug,
            title,
            unit,
            log_y: false,
        }
    }

    /// The title with its unit, as the chart shows it.
    pub fn heading(&self) -> String {
        match self.unit.label() {
            Some(unit) => format!("{} ({unit})", self.title),
            None => self.title.to_owned(),
        }
    }

    /// The catalogue metrics drawn in this chart, in legend order.
    pub fn metrics(&self) -> impl Iterator<Item = &'static Metric> + '_ {
        all().filter(move |m| m.chart == Some(self.slug))
    }
}

/// The run page's charts, in order; a chart shows when the run has any of its metrics.
pub const CHARTS: &[Chart] = &[
    Chart::new("loss", "loss", Unit::Number),
    Chart::new("rewards", "rewards", Unit::Number),
    Chart::new("accuracies", "reward accuracy", Unit::Fraction),
    Chart::new("logps", "log-likelihood, summed", Unit::Nats),
    Chart::new("logps_mean", "log-likelihood per token", Unit::NatsPerToken),
    Chart::new("topk_entropy", "top-k entropy", Unit::Bits),
    Chart::new("topk_mass", "top-k probability mass", Unit::Probability),
    Chart::new(
        "top1_prob",
        "top-1 probability (squeezing)",
        Unit::Probability,
    ),
    Chart::new("entropy", "entropy, full vocabulary", Unit::Nats),
    Chart::new("kl", "KL estimate, chosen", Unit::NatsPerToken),
    Chart {
        log_y: true,
        ..Chart::new("grad_norm", "gradient norm", Unit::Number)
    },
    Chart::new("learning_rate", "learning rate", Unit::Number),
    Chart::new("lr_scale", "learning-rate factor", Unit::Number),
    Chart::new("beta", "β", Unit::Number),
    Chart::new("nll_alpha", "NLL α", Unit::Number),
    Chart::new("cut", "CUT terms", Unit::Number),
];

/// The catalogue as `redline metrics --json` prints it.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub metrics: Vec<Metric>,
    pub charts: Vec<Chart>,
    pub eval_prefix: &'static str,
}

pub fn listing() -> Listing {
    Listing {
        metrics: all().copied().collect(),
        charts: CHARTS.to_vec(),
        eval_prefix: EVAL_PREFIX,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::MetricName;

    #[test]
    fn names_are_unique_valid_and_charted_where_they_say() {
        let mut seen = HashSet::new();
        for m in all() {
            assert!(seen.insert(m.name), "{} twice", m.name);
            MetricName::parse(m.name).unwrap();
            if let Some(slug) = m.chart {
                assert!(CHARTS.iter().any(|c| c.slug == slug), "{}: {slug}", m.name);
            }
        }
        for c in CHARTS {
            assert!(c.metrics().next().is_some(), "chart {} is empty", c.slug);
            assert!(
                c.metrics().all(|m| m.unit == c.unit),
                "chart {} mixes units",
                c.slug
            );
        }
    }

    #[test]
    fn every_steerable_hyperparameter_is_reported() {
        let reported: Vec<_> = all().filter_map(Metric::steerable).collect();
        for h in Steerable::ALL {
            assert!(
                reported.contains(&h),
                "{} is not in the catalogue",
                h.as_str()
            );
        }
    }

    #[test]
    fn held_out_twins_resolve_to_their_metric() {
        assert_eq!(
            lookup("eval/topk_entropy/chosen"),
            Some(TOPK_ENTROPY.on(Side::Chosen))
        );
        assert_eq!(lookup("eval/score"), Some(&EVAL_SCORE));
        assert_eq!(lookup("logits/chosen"), None);
        assert_eq!(TOP1_PROB.on(Side::Generated).name, "top1_prob/generated");
        assert_eq!(LOGPS.on(Side::Chosen).held_out(), "eval/logps/chosen");
    }

    #[test]
    fn the_top_k_entropy_chart_is_in_bits() {
        let chart = CHARTS.iter().find(|c| c.slug == "topk_entropy").unwrap();
        assert_eq!(chart.heading(), "top-k entropy (bits)");
    }
}
