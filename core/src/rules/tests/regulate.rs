//! The regulator: direction, gain, clipping, bounds, cooldown, warmup and where the current
//! hyperparameter value comes from.

use super::{evaluator, feed};
use crate::rules::{Action, Evaluator, Firing, Severity};

/// A regulator holding "m" in [2, 3] (unless `extra` names a band) with nll_alpha; `extra` adds
/// keys to [rules.regulate].
fn regulator(rule: &str, extra: &str) -> Evaluator {
    let cooldown = if extra.contains("cooldown") {
        ""
    } else {
        "cooldown = 0"
    };
    let band = if extra.contains("band") {
        ""
    } else {
        "band = [2, 3]"
    };
    evaluator(&format!(
        "[[rules]]\nname = \"hold\"\n{rule}\n[rules.regulate]\nmetric = \"m\"\n{band}\nhparam = \"nll_alpha\"\nwhen_below = \"raise\"\nstep = 0.25\nbounds = [0, 2]\n{cooldown}\n{extra}\n"
    ))
}

/// The values the regulator set, in order.
fn set_values(firings: &[Firing]) -> Vec<f64> {
    firings
        .iter()
        .map(|f| match &f.action {
            Action::SetHparam { name, value } => {
                assert_eq!(name, "nll_alpha");
                *value
            }
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Feeds "m" values at steps 1, 2, …
fn run(ev: &mut Evaluator, values: &[f64]) -> Vec<Firing> {
    values
        .iter()
        .zip(1..)
        .flat_map(|(&v, s)| feed(ev, s, &[("m", v)]))
        .collect()
}

#[test]
fn raises_below_the_band_and_lowers_above_it() {
    let mut ev = regulator("", "initial = 1.0");
    let firings = run(&mut ev, &[1.5, 1.5, 2.5, 3.5]);
    assert_eq!(set_values(&firings), [1.25, 1.5, 1.25]);
    assert_eq!(
        firings[0].message,
        "m 1.5 below band [2, 3]: nll_alpha 1 → 1.25"
    );
    assert_eq!(
        firings[2].message,
        "m 3.5 above band [2, 3]: nll_alpha 1.5 → 1.25"
    );
    assert_eq!(firings[0].severity, Severity::Info);
    assert_eq!(firings[0].rule, "hold");
    let keys: Vec<&String> = firings[0].values.keys().collect();
    assert_eq!(keys, ["m", "m:smoothed", "nll_alpha:new", "nll_alpha:old"]);
    assert_eq!(firings[0].values["nll_alpha:old"], 1.0);
}

#[test]
fn lower_when_below_moves_the_other_way() {
    let src = "[[rules]]\nname = \"hold\"\n[rules.regulate]\nmetric = \"m\"\nband = [2, 3]\nhparam = \"beta\"\nwhen_below = \"lower\"\nstep = 0.1\nbounds = [0.1, 1]\ncooldown = 0\ninitial = 0.5\n";
    let mut ev = evaluator(src);
    let firings = run(&mut ev, &[1.0, 4.0]);
    let values: Vec<&Action> = firings.iter().map(|f| &f.action).collect();
    assert_eq!(
        values,
        [
            &Action::SetHparam {
                name: "beta".to_owned(),
                value: 0.4
            },
            &Action::SetHparam {
                name: "beta".to_owned(),
                value: 0.5
            },
        ]
    );
}

#[test]
fn gain_grows_the_change_with_the_distance_and_max_step_clips_it() {
    let mut ev = regulator("", "initial = 0.0\ngain = 1.0\nmax_step = 1.0");
    // 0.5 outside a band 1 wide: 0.25 × (1 + 0.5) = 0.375. 10 outside: 2.75, clipped to 1.
    let firings = run(&mut ev, &[1.5, -8.0]);
    assert_eq!(set_values(&firings), [0.375, 1.375]);
}

#[test]
fn bounds_hold_and_a_change_of_nothing_is_not_signalled() {
    let mut ev = regulator("", "initial = 1.9");
    let firings = run(&mut ev, &[1.0, 1.0, 1.0]);
    assert_eq!(set_values(&firings), [2.0]);
    let mut ev = regulator("", "initial = 0.1");
    assert_eq!(set_values(&run(&mut ev, &[4.0, 4.0])), [0.0]);
}

#[test]
fn cooldown_spaces_the_changes() {
    let mut ev = regulator("", "initial = 0.0\ncooldown = 3");
    let firings = run(&mut ev, &[1.0; 8]);
    let steps: Vec<i64> = firings.iter().map(|f| f.step).collect();
    assert_eq!(steps, [1, 4, 7]);
    // The default cooldown is 10 steps.
    let mut ev = evaluator(
        "[[rules]]\nname = \"hold\"\n[rules.regulate]\nmetric = \"m\"\nband = [2, 3]\nhparam = \"nll_alpha\"\nwhen_below = \"raise\"\nstep = 0.25\nbounds = [0, 9]\ninitial = 0\n",
    );
    let steps: Vec<i64> = run(&mut ev, &[1.0; 25]).iter().map(|f| f.step).collect();
    assert_eq!(steps, [1, 11, 21]);
}

#[test]
fn warmup_counts_the_steps_the_metric_was_reported() {
    let mut ev = regulator("warmup = 2", "initial = 0.0");
    let mut firings = feed(&mut ev, 1, &[("m", 1.0)]);
    firings.extend(feed(&mut ev, 2, &[("other", 1.0)]));
    firings.extend(feed(&mut ev, 3, &[("m", 1.0)]));
    firings.extend(feed(&mut ev, 4, &[("m", f64::NAN)]));
    assert!(firings.is_empty());
    assert_eq!(feed(&mut ev, 5, &[("m", 1.0)]).len(), 1);
}

#[test]
fn reads_the_reported_value_then_builds_on_its_own_commands() {
    let mut ev = regulator("", "");
    // Nothing to start from: no firing, no error.
    assert!(feed(&mut ev, 1, &[("m", 1.0)]).is_empty());
    let f = feed(&mut ev, 2, &[("m", 1.0), ("nll_alpha", 0.5)]);
    assert_eq!(set_values(&f), [0.75]);
    // The trainer still reports 0.5 (it applies the signal later): build on 0.75, not 0.5.
    let f = feed(&mut ev, 3, &[("m", 1.0), ("nll_alpha", 0.5)]);
    assert_eq!(set_values(&f), [1.0]);
    // initial is only the fallback before anything was reported.
    let mut ev = regulator("", "initial = 1.5");
    let f = feed(&mut ev, 1, &[("m", 1.0), ("nll_alpha", 0.25)]);
    assert_eq!(set_values(&f), [0.5]);
}

#[test]
fn smoothing_decides_against_the_band() {
    let mut ev = regulator("", "initial = 0.0\nema = 0.5");
    // 2.5, then 1.5: smoothed (0.5 × 1.25 + 0.75) / 0.75 = 1.833 < 2.
    let firings = run(&mut ev, &[2.5, 1.5]);
    assert_eq!(set_values(&firings), [0.25]);
    assert_eq!(
        firings[0].message,
        "m (EMA 0.5) 1.83 below band [2, 3]: nll_alpha 0 → 0.25"
    );
}

#[test]
fn a_band_with_a_baseline_holds_the_change_from_the_metrics_own_peak() {
    // Hold "m" within 10% of its peak: 1.0, 2.0 (the peak), 1.9 (5% below, in the band), 1.6
    // (20% below: raise), 2.2 (a new peak: in the band again).
    let mut ev = regulator(
        "",
        "initial = 0.0\nbaseline = \"max\"\nbaseline_steps = 1\nrelative = true\nband = [-0.1, 1.0]",
    );
    let firings = run(&mut ev, &[1.0, 2.0, 1.9, 1.6, 2.2]);
    assert_eq!(set_values(&firings), [0.25]);
    assert_eq!(
        firings[0].message,
        "m 1.6 is 20% below its peak 2 (change -0.2) below band [-0.1, 1]: nll_alpha 0 → 0.25"
    );
    assert_eq!(firings[0].values["m:baseline"], 2.0);
    assert!((firings[0].values["m:change"] + 0.2).abs() < 1e-12);
}

#[test]
fn baseline_keys_need_a_baseline() {
    for extra in ["baseline_steps = 3", "relative = true"] {
        let src = format!(
            "[[rules]]\nname = \"hold\"\n[rules.regulate]\nmetric = \"m\"\nband = [2, 3]\nhparam = \"nll_alpha\"\nwhen_below = \"raise\"\nstep = 0.25\nbounds = [0, 2]\n{extra}\n"
        );
        let err = crate::rules::RuleSet::parse(&src).unwrap_err();
        assert!(err.message.contains("needs baseline"), "{err}");
    }
}
