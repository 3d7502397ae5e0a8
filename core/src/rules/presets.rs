//! The rule sets shipped with Redline: one TOML file per rule in core/presets/, each explaining
//! what it catches, where its numbers come from and what can make it fire falsely.
//! - `presets`: the stop and alert rules every run gets unless it names its own sets;
//! - `label-free`: the presets without the one that reads a gold answer per prompt, for runs
//!   that stop on label-free signals alone (the demo's);
//! - `regulate`: adaptive regularisation, opt-in (`--rules presets --rules regulate`), because it
//!   changes how the run trains.

use super::RuleSet;

/// The rule-set name under which a run carries the presets.
pub const PRESETS_NAME: &str = "presets";
/// The rule-set name of the presets that read no gold answer.
pub const LABEL_FREE_NAME: &str = "label-free";
/// The rule-set name of the shipped regulators.
pub const REGULATE_NAME: &str = "regulate";

/// The label-free preset files concatenated in a fixed order: every preset but the one that reads
/// a gold answer per prompt (`held-out-score-drop`). A macro, so that both sources are literals.
macro_rules! label_free_source {
    () => {
        concat!(
            include_str!("../../presets/topk-entropy-reversal.toml"),
            "\n",
            include_str!("../../presets/topk-mass-decline.toml"),
            "\n",
            include_str!("../../presets/likelihood-displacement.toml"),
            "\n",
            include_str!("../../presets/reward-saturation.toml"),
            "\n",
            include_str!("../../presets/non-finite.toml"),
            "\n",
            include_str!("../../presets/kl-budget.toml"),
            "\n",
            include_str!("../../presets/held-out-likelihood-drop.toml"),
            "\n",
            include_str!("../../presets/generated-entropy-rise.toml"),
        )
    };
}

const LABEL_FREE_SOURCE: &str = label_free_source!();
/// Every preset, in a fixed order; the order is the order of the rules.
const SOURCE: &str = concat!(
    label_free_source!(),
    "\n",
    include_str!("../../presets/held-out-score-drop.toml"),
);

const REGULATE_SOURCE: &str = include_str!("../../presets/regulate/hold-chosen-likelihood.toml");

/// The shipped presets as one rule-file source (the preset files concatenated, in a fixed order).
pub fn presets_source() -> &'static str {
    SOURCE
}

/// The shipped presets, parsed. A unit test proves they parse.
pub fn presets() -> RuleSet {
    RuleSet::parse(SOURCE).expect("the shipped presets parse (tested)")
}

/// The presets that read no gold answer, parsed. A unit test proves they parse and are the
/// presets minus those reading `eval/score`.
pub fn label_free() -> RuleSet {
    RuleSet::parse(LABEL_FREE_SOURCE).expect("the label-free presets parse (tested)")
}

/// The shipped regulators, parsed. A unit test proves they parse.
pub fn regulate() -> RuleSet {
    RuleSet::parse(REGULATE_SOURCE).expect("the shipped regulators parse (tested)")
}

/// Every shipped rule set: (name, source). The server stores each at startup.
pub fn shipped() -> [(&'static str, &'static str); 3] {
    [
        (PRESETS_NAME, SOURCE),
        (LABEL_FREE_NAME, LABEL_FREE_SOURCE),
        (REGULATE_NAME, REGULATE_SOURCE),
    ]
}
