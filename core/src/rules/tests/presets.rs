//! The shipped presets: they parse, each fires on a series shaped like its failure at a plausible
//! step, and all stay quiet on a healthy run.

use std::collections::BTreeMap;

use super::{feed, noise};
use crate::rules::{
    Action, Evaluator, Firing, PRESETS_NAME, RuleKind, RuleSet, label_free, presets,
    presets_source, regulate,
};

fn preset_evaluator() -> Evaluator {
    Evaluator::new(&[(PRESETS_NAME.to_owned(), presets())])
}

/// Runs the presets over `n` steps whose metrics come from `f(step)`.
fn run(n: i64, f: impl Fn(i64) -> Vec<(&'static str, f64)>) -> Vec<Firing> {
    let mut ev = preset_evaluator();
    (1..=n).flat_map(|s| feed(&mut ev, s, &f(s))).collect()
}

/// A healthy DPO run: entropy rising slowly, stable mass, chosen likelihood rising (RPO), margin
/// growing, accuracy below 1, finite loss, a small KL.
fn healthy(s: i64) -> Vec<(&'static str, f64)> {
    let t = s as f64;
    vec![
        ("topk_entropy/chosen", 2.0 + 0.0015 * t + 0.05 * noise(s, 1)),
        ("topk_mass/chosen", 0.9 + 0.02 * noise(s, 2)),
        ("logps_mean/chosen", -1.2 + 0.001 * t + 0.1 * noise(s, 3)),
        ("rewards/margins", 0.005 * t + 0.2 * noise(s, 4)),
        (
            "rewards/accuracies",
            (0.6 + 0.001 * t).min(0.85) + 0.1 * noise(s, 5),
        ),
        ("loss", 0.69 - 0.0005 * t + 0.05 * noise(s, 6)),
        ("grad_norm", 1.0 + 0.3 * noise(s, 7)),
        ("kl/chosen", 0.001 * t + 0.05 * noise(s, 8)),
    ]
}

fn fired<'a>(firings: &'a [Firing], rule: &str) -> Vec<&'a Firing> {
    firings.iter().filter(|f| f.rule == rule).collect()
}

fn stop_keep(f: &Firing) -> Option<i64> {
    match f.action {
        Action::Stop { keep_step } => keep_step,
        _ => panic!("not a stop: {f:?}"),
    }
}

#[test]
fn shipped_rules_read_only_catalogue_metrics() {
    for (name, set) in [
        (PRESETS_NAME, presets()),
        ("label-free", label_free()),
        ("regulate", regulate()),
    ] {
        assert_eq!(set.outside_catalogue(), Vec::<String>::new(), "{name}");
    }
    // The check itself: a misspelt metric and a user metric are outside; twins are inside.
    let set = RuleSet::parse(
        "[[rules]]\nname = \"r\"\nactions = [\"alert\"]\n[[rules.when]]\n\
         metric = [\"topk_entropy/chosn\", \"val/bleu\", \"eval/kl/chosen\"]\nabove = 1.0\n",
    )
    .unwrap();
    assert_eq!(set.outside_catalogue(), ["topk_entropy/chosn", "val/bleu"]);
}

#[test]
fn presets_parse_in_a_fixed_order() {
    let set = presets();
    let names: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "topk-entropy-reversal",
            "topk-mass-decline",
            "likelihood-displacement",
            "likelihood-displacement-confident",
            "reward-saturation",
            "non-finite",
            "kl-budget",
            "held-out-likelihood-drop",
            "generated-entropy-rise",
            "held-out-score-drop"
        ]
    );
    assert!(
        set.rules
            .iter()
            .all(|r| matches!(r.kind, RuleKind::Trip(_)) && r.description.is_some())
    );
    assert!(presets_source().contains("[[rules]]"));
    assert!(set.metrics().contains("topk_entropy/generated"));
    assert!(set.metrics().contains("grad_norm"));
}

#[test]
fn presets_stay_quiet_on_a_healthy_run() {
    let firings = run(600, healthy);
    assert!(firings.is_empty(), "{firings:#?}");
}

#[test]
fn entropy_reversal_fires_after_the_turn_and_keeps_the_peak() {
    // Rises 2.0 → 2.6 over 60 steps, then falls to 2.1 over the next 40.
    let entropy = |s: i64| {
        let t = s as f64;
        let v = if s <= 60 {
            2.0 + 0.01 * t
        } else {
            (2.6 - 0.0125 * (t - 60.0)).max(2.1)
        };
        v + 0.02 * noise(s, 11)
    };
    let firings = run(150, |s| {
        let mut m = healthy(s);
        m[0] = ("topk_entropy/chosen", entropy(s));
        m
    });
    let mine = fired(&firings, "topk-entropy-reversal");
    assert_eq!(mine.len(), 2, "{firings:#?}");
    assert_eq!(mine[0].action, Action::Alert);
    let step = mine[0].step;
    assert!((80..=105).contains(&step), "fired at {step}");
    let keep = stop_keep(mine[1]).expect("a keep step");
    assert!((58..=70).contains(&keep), "keep {keep}");
    assert!(
        mine[0].message.contains("below its peak"),
        "{}",
        mine[0].message
    );
    assert_eq!(firings.len(), 2, "only this preset fires: {firings:#?}");
}

#[test]
fn entropy_that_only_falls_is_not_a_reversal() {
    let firings = run(200, |s| {
        let mut m = healthy(s);
        m[0] = ("topk_entropy/chosen", 2.6 - 0.004 * s as f64);
        m
    });
    assert!(
        fired(&firings, "topk-entropy-reversal").is_empty(),
        "{firings:#?}"
    );
}

#[test]
fn mass_decline_fires_on_the_hinge_failure() {
    // Stable at 0.9 for 50 steps, then shrinking by 0.004 a step (the hinge failure mode).
    let firings = run(200, |s| {
        let mut m = healthy(s);
        let decline = 0.004 * (s - 50).max(0) as f64;
        m[1] = ("topk_mass/chosen", 0.9 - decline + 0.01 * noise(s, 12));
        m
    });
    let mine = fired(&firings, "topk-mass-decline");
    assert_eq!(mine.len(), 1, "{firings:#?}");
    // 15% of 0.9 is 0.135, reached at step ~84; EMA lag and for_steps 10 add ~18.
    assert!(
        (90..=115).contains(&mine[0].step),
        "fired at {}",
        mine[0].step
    );
    assert_eq!(mine[0].action, Action::Alert);
}

#[test]
fn likelihood_displacement_fires_when_chosen_falls_while_the_margin_grows() {
    let firings = run(300, |s| {
        let t = s as f64;
        let mut m = healthy(s);
        m[2] = ("logps_mean/chosen", -1.2 - 0.01 * t + 0.1 * noise(s, 13));
        m[3] = ("rewards/margins", 0.01 * t + 0.05 * noise(s, 14));
        m
    });
    let mine = fired(&firings, "likelihood-displacement");
    assert_eq!(mine.len(), 2, "{firings:#?}");
    // 1 nat below the first-20 mean (about -1.3) at step ~110, plus EMA lag and for_steps.
    assert!(
        (110..=135).contains(&mine[0].step),
        "fired at {}",
        mine[0].step
    );
    let keep = stop_keep(mine[1]).expect("a keep step");
    assert!(
        keep < 20,
        "the smoothed likelihood peaked at the start: {keep}"
    );
}

#[test]
fn reward_saturation_fires_when_accuracy_is_one_and_loss_zero() {
    let firings = run(200, |s| {
        let mut m = healthy(s);
        if s > 100 {
            m[4] = ("rewards/accuracies", 1.0);
            m[5] = ("loss", 0.005 + 0.002 * noise(s, 15));
        }
        m
    });
    let mine = fired(&firings, "reward-saturation");
    assert_eq!(mine.len(), 1, "{firings:#?}");
    assert!(
        (140..=165).contains(&mine[0].step),
        "fired at {}",
        mine[0].step
    );
}

#[test]
fn non_finite_stops_at_the_first_nan_and_keeps_the_last_finite_step() {
    let firings = run(80, |s| {
        let mut m = healthy(s);
        if s >= 50 {
            m[5] = ("loss", f64::NAN);
        }
        m
    });
    let mine = fired(&firings, "non-finite");
    assert_eq!(mine.len(), 2, "{firings:#?}");
    assert_eq!(mine[0].step, 50);
    assert_eq!(stop_keep(mine[1]), Some(49));
    assert_eq!(mine[0].message, "loss is NaN");
}

#[test]
fn kl_budget_fires_when_the_log_ratio_stays_above_one() {
    let firings = run(200, |s| {
        let mut m = healthy(s);
        m[7] = ("kl/chosen", 0.02 * s as f64);
        m
    });
    let mine = fired(&firings, "kl-budget");
    assert_eq!(mine.len(), 1, "{firings:#?}");
    // Raw 1.0 at step 50; the EMA lags ~9 steps, then 10 steps of streak.
    assert!(
        (60..=75).contains(&mine[0].step),
        "fired at {}",
        mine[0].step
    );
}

/// A real over-optimising run (a small model trained with DPO at a high learning rate, no NLL):
/// logps_mean/chosen rises to about -4.0 at step 15, then falls to about -37 by step 120 while the
/// margin grows. Thinned to the metrics the presets read.
#[test]
fn likelihood_displacement_fires_on_a_real_over_optimising_run() {
    let mut ev = preset_evaluator();
    let mut firings = Vec::new();
    for line in include_str!("../testdata/over_optimising_run.jsonl").lines() {
        #[derive(serde::Deserialize)]
        struct Row {
            step: i64,
            metrics: BTreeMap<String, f64>,
        }
        let row: Row = serde_json::from_str(line).unwrap();
        firings.extend(ev.observe(row.step, &|n| row.metrics.get(n).copied()));
    }
    let mine = fired(&firings, "likelihood-displacement");
    assert_eq!(mine.len(), 2, "{firings:#?}");
    // Its relative twin sees the same fall (a few steps later here: -1 nat is half of -4's
    // start before it is -0.5 of it) and keeps the same peak.
    let twin = fired(&firings, "likelihood-displacement-confident");
    assert_eq!(twin.len(), 2, "{firings:#?}");
    assert_eq!(stop_keep(twin[1]), stop_keep(mine[1]));
    // Nothing else: the entropy falls from step 1 (the model is learning), which is no reversal.
    assert_eq!(firings.len(), 4, "{firings:#?}");
    assert_eq!(mine[0].action, Action::Alert);
    assert!(
        mine[0].message.contains("below its start"),
        "{}",
        mine[0].message
    );
    let keep = stop_keep(mine[1]).expect("a keep step");
    assert!(keep < mine[1].step);
    assert!(
        (10..=20).contains(&keep),
        "the chosen likelihood peaked near step 15: {keep}"
    );
}

/// The held-out score, evaluated every 10 steps, peaks at step 30 and falls: two evaluations 0.04
/// or more below the best stop the run, keeping the best evaluation. A single dip does not.
#[test]
fn held_out_score_drop_stops_after_two_low_evaluations_and_keeps_the_best() {
    let scores = [
        (10, 0.50),
        (20, 0.55),
        (30, 0.60),
        (40, 0.54),
        (50, 0.60),
        (60, 0.54),
        (70, 0.53),
    ];
    let mut ev = preset_evaluator();
    let mut firings = Vec::new();
    for step in 1..=70 {
        let score = scores.iter().find(|s| s.0 == step).map(|s| s.1);
        firings.extend(ev.observe(step, &|n| (n == "eval/score").then_some(score).flatten()));
    }
    let mine = fired(&firings, "held-out-score-drop");
    assert_eq!(mine.len(), 2, "{firings:#?}");
    assert_eq!(mine[1].step, 70, "the dip at step 40 alone does not stop");
    assert_eq!(
        stop_keep(mine[1]),
        Some(30),
        "the first step of the best score"
    );
    assert_eq!(firings.len(), 2, "{firings:#?}");
}

/// Feeds the presets evaluated metrics every 20 steps, from step 0: `series[k]` is the k-th
/// evaluation's values.
fn evaluations(series: &[Vec<(&str, f64)>]) -> Vec<Firing> {
    let mut ev = preset_evaluator();
    let mut firings = Vec::new();
    for (i, values) in series.iter().enumerate() {
        firings.extend(feed(&mut ev, 20 * i as i64, values));
    }
    firings
}

/// The held-out chosen likelihood and margin of the study's seed 7, sigmoid β=0.1 lr=6e-5 (per
/// token, every 20 steps): the likelihood peaks at step 20 with the held-out score, then falls
/// while the margin grows. At step 60 it is 9% below the peak: the stop keeps step 20.
#[test]
fn held_out_likelihood_drop_stops_when_the_chosen_falls_while_the_margin_grows() {
    let run = |margins: [f64; 5]| {
        let likelihood = [-0.147, -0.133, -0.135, -0.145, -0.157];
        evaluations(
            &likelihood
                .iter()
                .zip(margins)
                .map(|(&l, m)| vec![("eval/logps_mean/chosen", l), ("eval/rewards/margins", m)])
                .collect::<Vec<_>>(),
        )
    };
    let firings = run([0.0, 0.3, 0.9, 1.6, 2.3]);
    let mine = fired(&firings, "held-out-likelihood-drop");
    assert_eq!(mine.len(), 2, "alert and stop: {firings:#?}");
    assert_eq!((mine[1].step, stop_keep(mine[1])), (60, Some(20)));
    assert_eq!(firings.len(), 2, "nothing else fires: {firings:#?}");
    // The same fall with a margin below 0 (a loss that is not learning the preference, as
    // DiscoPOP's runs in the study) is not likelihood displacement.
    assert!(run([0.0, -0.06, -0.09, -0.1, -0.11]).is_empty());
    // A likelihood that keeps rising (RPO) never trips it.
    let rising: Vec<Vec<(&str, f64)>> = (0..16)
        .map(|i| {
            vec![
                ("eval/logps_mean/chosen", -0.147 + 0.003 * f64::from(i)),
                ("eval/rewards/margins", 0.1 * f64::from(i)),
            ]
        })
        .collect();
    assert!(evaluations(&rising).is_empty());
}

/// The generated top-k entropy of the same run: it falls to its low at step 20 while the score
/// rises, then rises again as the score falls; 3% above the low twice in a row raises an alert
/// (a warning: as a stop it kept too few runs near their peak in the study).
#[test]
fn generated_entropy_rise_alerts_on_the_turn_up() {
    let entropy = [0.299, 0.291, 0.292, 0.301, 0.306, 0.313];
    let firings = evaluations(
        &entropy
            .iter()
            .map(|&e| vec![("topk_entropy/generated", e)])
            .collect::<Vec<_>>(),
    );
    let mine = fired(&firings, "generated-entropy-rise");
    assert_eq!(mine.len(), 1, "{firings:#?}");
    assert_eq!(
        (mine[0].step, &mine[0].action, mine[0].severity),
        (80, &Action::Alert, crate::rules::Severity::Warning)
    );
}

/// The shipped regulator on a held-out chosen likelihood shaped like the study's over-optimising
/// runs (evaluated every 20 steps: up to a peak at step 40, then down): it raises nll_alpha by
/// 0.5 at each evaluation more than 0.5% below the peak, and stops raising once a new peak holds.
#[test]
fn the_regulate_set_raises_the_nll_weight_while_the_held_out_likelihood_is_below_its_best() {
    let set = regulate();
    assert!(
        set.rules
            .iter()
            .all(|r| matches!(r.kind, RuleKind::Regulate(_)) && r.description.is_some())
    );
    let mut ev = Evaluator::new(&[(crate::rules::REGULATE_NAME.to_owned(), set)]);
    let held_out = [
        (0, -0.147),
        (20, -0.135),
        (40, -0.132),
        (60, -0.1326),
        (80, -0.136),
        (100, -0.140),
        (120, -0.131),
        (140, -0.1312),
    ];
    let mut set_to = Vec::new();
    for s in 0..=140 {
        let mut m = vec![("nll_alpha", 0.0)];
        if let Some(&(_, v)) = held_out.iter().find(|h| h.0 == s) {
            m.push(("eval/logps_mean/chosen", v));
        }
        for f in feed(&mut ev, s, &m) {
            match f.action {
                Action::SetHparam { name, value } if name == "nll_alpha" => set_to.push((s, value)),
                other => panic!("{other:?}"),
            }
        }
    }
    // 60 is 0.45% below the peak (in the band); 80 and 100 are 3% and 6% below; 140 is 0.15%
    // below the new peak of 120.
    assert_eq!(set_to, [(80, 0.5), (100, 1.0)]);
}
