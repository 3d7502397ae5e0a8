//! The evaluator's flow: streaks, warmup, cooldown, hysteresis, sparse metrics, fallbacks,
//! several actions and several rule sets.

use super::{evaluator, feed, one, run_one, steps, trips};
use crate::rules::{Action, Evaluator, RuleSet, Severity};

#[test]
fn for_steps_needs_consecutive_evaluated_steps() {
    let mut ev = one("for_steps = 3", "above = 5");
    let firings = run_one(&mut ev, "m", 8, |s| {
        [6.0, 6.0, 4.0, 6.0, 6.0, 6.0, 6.0, 6.0][s as usize - 1]
    });
    assert_eq!(trips(&firings), [6]);
    assert_eq!(firings[0].message, "m 6 is above 5, for 3 steps");
}

#[test]
fn warmup_counts_evaluated_steps() {
    let mut ev = one("warmup = 3", "above = 0");
    let mut firings = Vec::new();
    for step in 1..=40 {
        // m is reported every 10 steps; the other metric does not make the rule evaluate.
        let values: &[(&str, f64)] = if step % 10 == 0 {
            &[("m", 1.0), ("x", 1.0)]
        } else {
            &[("x", 1.0)]
        };
        firings.extend(feed(&mut ev, step, values));
    }
    assert_eq!(trips(&firings), [40]);
}

#[test]
fn cooldown_counts_real_steps() {
    let mut ev = one("cooldown = 10", "above = 5");
    let firings = run_one(&mut ev, "m", 25, |s| if s % 2 == 1 { 6.0 } else { 4.0 });
    assert_eq!(trips(&firings), [1, 11, 21]);
    let mut ev = one("", "above = 5");
    assert_eq!(
        trips(&run_one(&mut ev, "m", 6, |s| if s % 2 == 1 {
            6.0
        } else {
            4.0
        })),
        [1, 3, 5]
    );
}

#[test]
fn hysteresis_re_arms_only_after_clearing_by_the_margin() {
    let series = [6.0, 4.5, 6.0, 4.0, 6.0, 5.5, 6.0];
    let mut ev = one("", "above = 5\nhysteresis = 1");
    // 4.5 is below 5 but not below 5 − 1: still tripped. 4.0 clears it.
    assert_eq!(
        trips(&run_one(&mut ev, "m", 7, |s| series[s as usize - 1])),
        [1, 5]
    );
    let mut ev = one("", "above = 5");
    assert_eq!(
        trips(&run_one(&mut ev, "m", 7, |s| series[s as usize - 1])),
        [1, 3, 5]
    );
    // While tripped the condition keeps holding: no firing however long.
    let mut ev = one("", "above = 5");
    assert_eq!(trips(&run_one(&mut ev, "m", 50, |_| 6.0)), [1]);
}

#[test]
fn steps_that_do_not_increase_are_ignored() {
    let mut ev = one("", "above = 5");
    assert!(feed(&mut ev, 5, &[("m", 1.0)]).is_empty());
    assert!(feed(&mut ev, 5, &[("m", 9.0)]).is_empty());
    assert!(feed(&mut ev, 4, &[("m", 9.0)]).is_empty());
    assert_eq!(ev.last_step(), Some(5));
    // The ignored values left no trace: a new value of 1 does not fire.
    assert!(feed(&mut ev, 6, &[("m", 1.0)]).is_empty());
    assert_eq!(ev.last_step(), Some(6));
    assert_eq!(feed(&mut ev, 7, &[("m", 9.0)]).len(), 2);
}

#[test]
fn a_sparse_condition_keeps_its_previous_result() {
    let src = r#"
[[rules]]
name = "r"
actions = ["alert"]
for_steps = 3
[[rules.when]]
metric = "a"
above = 0
[[rules.when]]
metric = "b"
above = 5
"#;
    let mut ev = evaluator(src);
    let mut firings = Vec::new();
    for step in 1..=20 {
        let mut values = vec![("a", 1.0)];
        if step % 10 == 0 {
            values.push(("b", 6.0));
        }
        firings.extend(feed(&mut ev, step, &values));
    }
    // b holds from step 10 and is held on the steps it is not reported.
    assert_eq!(trips(&firings), [12]);
}

#[test]
fn the_first_candidate_with_enough_history_decides() {
    let mut ev = evaluator(
        "[[rules]]\nname = \"r\"\nactions = [\"alert\"]\nfor_steps = 2\n[[rules.when]]\nmetric = [\"gen\", \"chosen\"]\nabove = 5\n",
    );
    assert_eq!(ev.metrics().iter().collect::<Vec<_>>(), ["chosen", "gen"]);
    let mut firings = Vec::new();
    for step in 1..=15 {
        let mut values = vec![("chosen", 6.0)];
        // gen is reported every 5 steps: 0 at step 5, then 6.
        if step % 5 == 0 {
            values.push(("gen", if step == 5 { 0.0 } else { 6.0 }));
        }
        firings.extend(feed(&mut ev, step, &values));
    }
    // chosen decides until gen has a value (fires at 2); from step 5 gen decides, and the rule
    // is evaluated only when gen reports (steps 10 and 15 make the streak of 2).
    assert_eq!(steps(&firings), [2, 15]);
    assert_eq!(
        firings[0].values.keys().collect::<Vec<_>>(),
        ["chosen", "chosen:smoothed"]
    );
    assert_eq!(
        firings[1].values.keys().collect::<Vec<_>>(),
        ["gen", "gen:smoothed"]
    );
    assert!(
        firings[1].message.starts_with("gen 6 is above 5"),
        "{}",
        firings[1].message
    );
}

#[test]
fn one_trip_fires_each_action_in_order_with_the_same_message() {
    let mut ev = evaluator(
        "[[rules]]\nname = \"r\"\nseverity = \"critical\"\nactions = [\"checkpoint\", \"alert\", \"stop\"]\n[[rules.when]]\nmetric = \"m\"\nabove = 0\n",
    );
    let f = feed(&mut ev, 3, &[("m", 1.0)]);
    let actions: Vec<&Action> = f.iter().map(|f| &f.action).collect();
    assert_eq!(
        actions,
        [
            &Action::Checkpoint,
            &Action::Alert,
            &Action::Stop { keep_step: None }
        ]
    );
    assert!(
        f.iter()
            .all(|x| x.message == f[0].message && x.values == f[0].values && x.step == 3)
    );
    assert!(
        f.iter()
            .all(|x| x.severity == Severity::Critical && x.rule_set == "t" && x.rule == "r")
    );
    assert_eq!(Severity::Critical.as_str(), "critical");
}

#[test]
fn match_any_fires_on_either_condition() {
    let src = "[[rules]]\nname = \"r\"\nactions = [\"alert\"]\nmatch = \"any\"\n[[rules.when]]\nmetric = \"a\"\nabove = 5\n[[rules.when]]\nmetric = \"b\"\nbelow = 0\n";
    let mut ev = evaluator(src);
    let mut firings = Vec::new();
    for (step, a, b) in [(1, 1.0, 1.0), (2, 6.0, 1.0), (3, 1.0, 1.0), (4, 1.0, -1.0)] {
        firings.extend(feed(&mut ev, step, &[("a", a), ("b", b)]));
    }
    assert_eq!(steps(&firings), [2, 4]);
    assert_eq!(firings[1].message, "b -1 is below 0");
}

#[test]
fn the_message_says_what_held() {
    let src = r#"
[[rules]]
name = "likelihood-displacement"
actions = ["alert"]
for_steps = 2
[[rules.when]]
metric = "logps_mean/chosen"
baseline = "first"
baseline_steps = 2
change_below = -1.0
[[rules.when]]
metric = "rewards/margins"
slope_window = 2
slope_above = 0
"#;
    let mut ev = evaluator(src);
    let mut firings = Vec::new();
    for (step, c, m) in [
        (1, -5.0, 0.0),
        (2, -5.0, 0.5),
        (3, -6.5, 1.0),
        (4, -7.0, 1.5),
    ] {
        firings.extend(feed(
            &mut ev,
            step,
            &[("logps_mean/chosen", c), ("rewards/margins", m)],
        ));
    }
    assert_eq!(firings.len(), 1);
    assert_eq!(
        firings[0].message,
        "logps_mean/chosen -7 is 2 below its start -5 while rewards/margins rises 0.5/step, for 2 steps"
    );
    let keys: Vec<&String> = firings[0].values.keys().collect();
    assert_eq!(
        keys,
        [
            "logps_mean/chosen",
            "logps_mean/chosen:baseline",
            "logps_mean/chosen:change",
            "logps_mean/chosen:smoothed",
            "rewards/margins",
            "rewards/margins:slope",
            "rewards/margins:smoothed"
        ]
    );
}

#[test]
fn rule_sets_keep_their_own_state_and_may_share_rule_names() {
    let a = RuleSet::parse("[[rules]]\nname = \"r\"\nactions = [\"alert\"]\n[[rules.when]]\nmetric = \"m\"\nabove = 0\n").unwrap();
    let b = RuleSet::parse("[[rules]]\nname = \"r\"\nactions = [\"alert\"]\n[[rules.when]]\nmetric = \"n\"\nabove = 0\n").unwrap();
    let mut ev = Evaluator::new(&[("first".to_owned(), a), ("second".to_owned(), b)]);
    assert_eq!(ev.metrics().iter().collect::<Vec<_>>(), ["m", "n"]);
    let f = feed(&mut ev, 1, &[("m", 1.0), ("n", 1.0)]);
    let sets: Vec<&str> = f.iter().map(|f| f.rule_set.as_str()).collect();
    assert_eq!(sets, ["first", "second"]);
    assert!(feed(&mut ev, 2, &[("m", 1.0), ("n", 1.0)]).is_empty());
    assert!(Evaluator::new(&[]).observe(1, &|_| Some(1.0)).is_empty());
}
