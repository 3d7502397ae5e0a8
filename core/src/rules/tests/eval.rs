//! The evaluator's tests and keep steps: each test kind, smoothing, non-finite values.

use super::{evaluator, feed, keep_at, one, run_one, trips};
use crate::rules::Firing;

#[test]
fn above_and_below_compare_the_value_with_the_threshold() {
    let mut ev = one("", "above = 5");
    assert_eq!(trips(&run_one(&mut ev, "m", 10, |s| s as f64)), [6]);
    let mut ev = one("", "below = 5");
    assert_eq!(trips(&run_one(&mut ev, "m", 10, |s| 10.0 - s as f64)), [6]);
}

#[test]
fn ema_is_bias_corrected() {
    let mut ev = one("", "ema = 0.9\nbelow = 3");
    // Without the correction the first smoothed value would be 0.1 × 5 = 0.5 and fire.
    assert!(feed(&mut ev, 1, &[("m", 5.0)]).is_empty());
    let f = feed(&mut ev, 2, &[("m", 1.0)]);
    // (0.9 × 0.5 + 0.1 × 1) / (1 − 0.81)
    let expected = 0.55 / 0.19;
    assert!(
        (f[0].values["m:smoothed"] - expected).abs() < 1e-12,
        "{f:?}"
    );
    assert_eq!(f[0].values["m"], 1.0);
    assert_eq!(f[0].message, "m (EMA 0.9) 2.89 is below 3");
}

#[test]
fn non_finite_values_are_skipped_by_other_tests() {
    let mut ev = one("for_steps = 3", "ema = 0.5\nabove = 5");
    let values = [
        10.0,
        10.0,
        f64::NAN,
        10.0,
        10.0,
        f64::INFINITY,
        10.0,
        10.0,
        10.0,
    ];
    let firings: Vec<Firing> = values
        .iter()
        .zip(1..)
        .flat_map(|(&v, s)| feed(&mut ev, s, &[("m", v)]))
        .collect();
    // The NaN and the inf each break the streak; neither reaches the smoothing.
    assert_eq!(trips(&firings), [9]);
    assert_eq!(firings[0].values["m:smoothed"], 10.0);
}

#[test]
fn non_finite_fires_on_nan_or_inf_and_keeps_the_last_finite_step() {
    let mut ev = one("", "non_finite = true");
    let mut firings = Vec::new();
    for (step, v) in [
        (1, 1.0),
        (2, 1.0),
        (3, 1.0),
        (5, f64::INFINITY),
        (6, f64::NAN),
        (7, 1.0),
        (8, f64::NAN),
    ] {
        firings.extend(feed(&mut ev, step, &[("m", v)]));
    }
    // Step 6 is still tripped; the finite value at 7 re-arms it.
    assert_eq!(trips(&firings), [5, 8]);
    assert_eq!(keep_at(&firings, 5), Some(3));
    assert_eq!(keep_at(&firings, 8), Some(7));
    assert_eq!(firings[0].message, "m is inf");
    assert!(firings[2].values["m"].is_nan());
}

#[test]
fn baseline_first_is_the_mean_of_the_first_finite_values() {
    let mut ev = one(
        "",
        "baseline = \"first\"\nbaseline_steps = 4\nchange_below = -1",
    );
    let values = [9.0, f64::NAN, 11.0, 10.0, 10.0, 9.5, 8.5];
    let firings: Vec<Firing> = values
        .iter()
        .zip(1..)
        .flat_map(|(&v, s)| feed(&mut ev, s, &[("m", v)]))
        .collect();
    assert_eq!(trips(&firings), [7]);
    assert_eq!(firings[0].values["m:baseline"], 10.0);
    assert_eq!(firings[0].values["m:change"], -1.5);
    assert_eq!(firings[0].message, "m 8.5 is 1.5 below its start 10");
    // Falling: the keep step is where the (here unsmoothed) value peaked.
    assert_eq!(keep_at(&firings, 7), Some(3));

    let mut ev = one(
        "",
        "baseline = \"first\"\nbaseline_steps = 2\nchange_above = 0.1\nrelative = true",
    );
    let firings = run_one(&mut ev, "m", 10, |s| {
        [-10.0, -10.0, -9.5, -8.5][(s as usize - 1).min(3)]
    });
    assert_eq!(trips(&firings), [4]);
    assert!((firings[0].values["m:change"] - 0.15).abs() < 1e-12);
    assert_eq!(firings[0].message, "m -8.5 is 15% above its start -10");
}

#[test]
fn baseline_max_keeps_the_peak_and_can_require_a_rise_first() {
    let peaked = |s: i64| if s <= 10 { s as f64 } else { 20.0 - s as f64 };
    let mut ev = one(
        "",
        "baseline = \"max\"\nbaseline_steps = 3\nchange_below = -3",
    );
    let firings = run_one(&mut ev, "m", 20, peaked);
    assert_eq!(trips(&firings), [14]);
    assert_eq!(keep_at(&firings, 14), Some(10));
    assert_eq!(firings[0].message, "m 6 is 4 below its peak 10 at step 10");

    // after_rise: the peak must be 5 above the mean of the first 3 (2): 10 is, 6 is not.
    let mut ev = one(
        "",
        "baseline = \"max\"\nbaseline_steps = 3\nchange_below = -3\nafter_rise = 5",
    );
    assert_eq!(trips(&run_one(&mut ev, "m", 20, peaked)), [14]);
    let mut ev = one(
        "",
        "baseline = \"max\"\nbaseline_steps = 3\nchange_below = -1\nafter_rise = 5",
    );
    let low_peak = |s: i64| if s <= 6 { s as f64 } else { 12.0 - s as f64 };
    assert!(run_one(&mut ev, "m", 20, low_peak).is_empty());
    // A series that only falls has its max at step 1, above its first-3 mean, but never rose.
    let mut ev = one(
        "",
        "baseline = \"max\"\nbaseline_steps = 3\nchange_below = -0.1\nrelative = true\nafter_rise = 0.01\nema = 0.5",
    );
    assert!(run_one(&mut ev, "m", 50, |s| 100.0 - 2.0 * s as f64).is_empty());
}

#[test]
fn baseline_min_keeps_the_trough_and_can_require_a_fall_first() {
    let dipped = |s: i64| {
        if s <= 10 {
            -(s as f64)
        } else {
            s as f64 - 20.0
        }
    };
    let mut ev = one(
        "",
        "baseline = \"min\"\nbaseline_steps = 3\nchange_above = 3",
    );
    let firings = run_one(&mut ev, "m", 20, dipped);
    assert_eq!(trips(&firings), [14]);
    assert_eq!(keep_at(&firings, 14), Some(10));
    assert_eq!(firings[0].message, "m -6 is 4 above its low -10 at step 10");
    let mut ev = one(
        "",
        "baseline = \"min\"\nbaseline_steps = 3\nchange_above = 3\nafter_fall = 9",
    );
    assert!(
        run_one(&mut ev, "m", 20, dipped).is_empty(),
        "fell only 8 below the first-3 mean"
    );
}

#[test]
fn slope_is_least_squares_per_step() {
    let mut ev = one("", "slope_window = 3\nslope_above = 1.5");
    let firings = run_one(&mut ev, "m", 5, |s| 2.0 * s as f64);
    assert_eq!(trips(&firings), [3]);
    assert!((firings[0].values["m:slope"] - 2.0).abs() < 1e-12);
    assert_eq!(firings[0].message, "m rises 2/step");

    // Per step, not per sample: values 10 steps apart rising by 10 have slope 1.
    let mut ev = one("", "slope_window = 3\nslope_below = 1.01");
    let mut firings = Vec::new();
    for (step, v) in [(10, 0.0), (20, 10.0), (30, 20.0)] {
        firings.extend(feed(&mut ev, step, &[("m", v)]));
    }
    assert!(
        (firings[0].values["m:slope"] - 1.0).abs() < 1e-12,
        "{firings:?}"
    );
    // Noisy values: the least-squares fit, not the end-to-end difference.
    // (End to end it would be 2/3 per step.)
    let mut ev = one("", "slope_window = 4\nslope_above = 0.3");
    let firings = run_one(&mut ev, "m", 4, |s| [0.0, 3.0, 1.0, 2.0][s as usize - 1]);
    assert!(
        (firings[0].values["m:slope"] - 0.4).abs() < 1e-12,
        "{firings:?}"
    );
}

#[test]
fn keep_step_of_threshold_tests_is_the_step_before_the_streak() {
    let mut ev = one("for_steps = 2", "above = 5");
    let mut firings = Vec::new();
    for (step, v) in [(1, 1.0), (2, 1.0), (4, 1.0), (6, 9.0), (7, 9.0)] {
        firings.extend(feed(&mut ev, step, &[("m", v)]));
    }
    assert_eq!(keep_at(&firings, 7), Some(4));
    // A streak from the first evaluated step has nothing before it.
    let mut ev = one("", "above = 0");
    assert_eq!(keep_at(&feed(&mut ev, 3, &[("m", 1.0)]), 3), None);
}

#[test]
fn a_rules_keep_step_is_the_earliest_its_conditions_give() {
    let src = r#"
[[rules]]
name = "r"
actions = ["stop"]
[[rules.when]]
metric = "a"
baseline = "max"
baseline_steps = 1
change_below = -2
[[rules.when]]
metric = "b"
above = 0
"#;
    let mut ev = evaluator(src);
    let mut firings = Vec::new();
    // a peaks at step 3; b holds from step 5 (the step before its streak: 4).
    for (step, a, b) in [
        (1, 1.0, -1.0),
        (2, 2.0, -1.0),
        (3, 5.0, -1.0),
        (4, 4.0, -1.0),
        (5, 2.0, 1.0),
    ] {
        firings.extend(feed(&mut ev, step, &[("a", a), ("b", b)]));
    }
    assert_eq!(keep_at(&firings, 5), Some(3));
    let mut ev = evaluator(src);
    let mut firings = Vec::new();
    for (step, a, b) in [(1, 5.0, -1.0), (2, 4.0, 1.0), (3, 2.0, 1.0)] {
        firings.extend(feed(&mut ev, step, &[("a", a), ("b", b)]));
    }
    // a peaks at step 1; the rule's streak began at step 3 (so 2 before it): the earliest is 1.
    assert_eq!(keep_at(&firings, 3), Some(1));
}
