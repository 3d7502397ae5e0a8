//! Unit tests of the rule engine. Helpers here; one file per area.

mod eval;
mod flow;
mod parse;
mod parse_errors;
mod presets;
mod regulate;

use std::collections::BTreeMap;

use super::{Action, Evaluator, Firing, RuleSet};

/// An evaluator over one set named "t" parsed from `src`.
fn evaluator(src: &str) -> Evaluator {
    let set = RuleSet::parse(src).unwrap_or_else(|e| panic!("{e}"));
    Evaluator::new(&[("t".to_owned(), set)])
}

/// Feeds one step with the given metric values.
fn feed(ev: &mut Evaluator, step: i64, values: &[(&str, f64)]) -> Vec<Firing> {
    let map: BTreeMap<&str, f64> = values.iter().copied().collect();
    ev.observe(step, &|name| map.get(name).copied())
}

/// Feeds steps 1..=n of a single metric from `f(step)`, returning every firing.
fn run_one(ev: &mut Evaluator, metric: &str, n: i64, f: impl Fn(i64) -> f64) -> Vec<Firing> {
    (1..=n)
        .flat_map(|s| feed(ev, s, &[(metric, f(s))]))
        .collect()
}

/// The steps at which firings happened.
fn steps(firings: &[Firing]) -> Vec<i64> {
    firings.iter().map(|f| f.step).collect()
}

/// Deterministic noise in [-1, 1], so the synthetic runs are not suspiciously smooth.
fn noise(step: i64, seed: u64) -> f64 {
    let mut x = (step as u64).wrapping_mul(6_364_136_223_846_793_005)
        ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x % 20_001) as f64 / 10_000.0 - 1.0
}

/// One rule named "r" with one condition on metric "m"; `rule` and `cond` are extra TOML lines.
pub(super) fn one(rule: &str, cond: &str) -> Evaluator {
    evaluator(&format!(
        "[[rules]]\nname = \"r\"\nactions = [\"alert\", \"stop\"]\n{rule}\n[[rules.when]]\nmetric = \"m\"\n{cond}\n"
    ))
}

/// The keep step of the stop firing at `step`.
fn keep_at(firings: &[Firing], step: i64) -> Option<i64> {
    let firing = firings
        .iter()
        .find(|f| f.step == step && matches!(f.action, Action::Stop { .. }))
        .unwrap_or_else(|| panic!("no stop at {step}: {firings:#?}"));
    match firing.action {
        Action::Stop { keep_step } => keep_step,
        _ => unreachable!(),
    }
}

/// The distinct steps at which the rule fired (each trip yields two firings: alert, stop).
fn trips(firings: &[Firing]) -> Vec<i64> {
    let mut s = steps(firings);
    s.dedup();
    s
}
