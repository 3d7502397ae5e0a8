//! The presets shipped with Redline: one TOML file per preset in core/presets/, each explaining
//! what it catches, where its numbers come from and what can make it fire falsely.

use super::RuleSet;

/// The rule-set name under which a run carries the presets.
pub const PRESETS_NAME: &str = "presets";

/// The preset files concatenated in a fixed order; the order is the order of the rules.
const SOURCE: &str = concat!(
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
    include_str!("../../presets/held-out-score-drop.toml"),
);

/// The shipped presets as one rule-file source (the preset files concatenated, in a fixed order).
pub fn presets_source() -> &'static str {
    SOURCE
}

/// The shipped presets, parsed. A unit test proves they parse.
pub fn presets() -> RuleSet {
    RuleSet::parse(SOURCE).expect("the shipped presets parse (tested)")
}
