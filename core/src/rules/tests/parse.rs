//! The rule-file format: what parses, and the defaults.

use crate::rules::{
    Baseline, Bound, ChangeTest, Combine, Condition, Direction, Regulator, RuleKind, RuleSet,
    Severity, Test, TripAction,
};

pub(super) const KL: &str = r#"
[[rules]]
name = "kl-budget"
actions = ["alert"]

[[rules.when]]
metric = "kl/chosen"
above = 1.0
"#;

#[test]
fn an_empty_file_is_an_empty_set() {
    assert_eq!(RuleSet::parse("").unwrap(), RuleSet::default());
    assert_eq!(RuleSet::parse("# nothing yet\n").unwrap().rules.len(), 0);
    assert_eq!(RuleSet::parse("rules = []").unwrap().rules.len(), 0);
}

#[test]
fn defaults_fill_what_is_left_out() {
    let set = RuleSet::parse(KL).unwrap();
    let rule = &set.rules[0];
    assert_eq!(rule.name, "kl-budget");
    assert_eq!((rule.description.as_deref(), rule.warmup), (None, 0));
    let RuleKind::Trip(trip) = &rule.kind else {
        panic!()
    };
    assert_eq!(trip.severity, Severity::Warning);
    assert_eq!(trip.actions, [TripAction::Alert]);
    assert_eq!(
        (trip.combine, trip.for_steps, trip.cooldown),
        (Combine::All, 1, 0)
    );
    assert_eq!(
        trip.conditions,
        [Condition {
            metric: vec!["kl/chosen".to_owned()],
            ema: 0.0,
            hysteresis: 0.0,
            test: Test::Level(Bound::Above(1.0)),
        }]
    );
}

#[test]
fn every_test_kind_parses() {
    let src = r#"
[[rules]]
name = "all-kinds"
severity = "critical"
actions = ["alert", "stop", "checkpoint"]
match = "any"
for_steps = 3
warmup = 4
cooldown = 5
[[rules.when]]
metric = ["topk_entropy/generated", "topk_entropy/chosen"]
ema = 0.9
hysteresis = 0.01
baseline = "max"
change_below = -0.1
relative = true
after_rise = 0.05
[[rules.when]]
metric = "x"
baseline = "min"
baseline_steps = 7
change_above = 2
after_fall = 1
[[rules.when]]
metric = "loss"
non_finite = true
[[rules.when]]
metric = "m"
slope_window = 20
slope_below = -0.5
[[rules.when]]
metric = "m"
below = 3
"#;
    let set = RuleSet::parse(src).unwrap();
    let RuleKind::Trip(trip) = &set.rules[0].kind else {
        panic!()
    };
    assert_eq!(trip.combine, Combine::Any);
    assert_eq!(trip.actions.len(), 3);
    assert_eq!(set.rules[0].warmup, 4);
    let tests: Vec<&Test> = trip.conditions.iter().map(|c| &c.test).collect();
    assert_eq!(
        tests,
        [
            &Test::Change(ChangeTest {
                baseline: Baseline::Max,
                steps: 20,
                bound: Bound::Below(-0.1),
                relative: true,
                after: Some(0.05),
            }),
            &Test::Change(ChangeTest {
                baseline: Baseline::Min,
                steps: 7,
                bound: Bound::Above(2.0),
                relative: false,
                after: Some(1.0),
            }),
            &Test::NonFinite,
            &Test::Slope {
                window: 20,
                bound: Bound::Below(-0.5)
            },
            &Test::Level(Bound::Below(3.0)),
        ]
    );
    assert_eq!(trip.conditions[0].metric.len(), 2);
    assert_eq!(trip.conditions[0].hysteresis, 0.01);
}

#[test]
fn a_regulator_parses_with_its_defaults() {
    let src = r#"
[[rules]]
name = "hold-topk-entropy"
warmup = 20
[rules.regulate]
metric = "topk_entropy/chosen"
band = [2.0, 2.8]
hparam = "nll_alpha"
when_below = "raise"
step = 0.25
bounds = [0, 5]
"#;
    let set = RuleSet::parse(src).unwrap();
    let RuleKind::Regulate(reg) = &set.rules[0].kind else {
        panic!()
    };
    assert_eq!(
        reg,
        &Regulator {
            metric: vec!["topk_entropy/chosen".to_owned()],
            ema: 0.0,
            baseline: None,
            band: (2.0, 2.8),
            hparam: "nll_alpha".to_owned(),
            when_below: Direction::Raise,
            step: 0.25,
            gain: 0.0,
            max_step: 0.25,
            bounds: (0.0, 5.0),
            cooldown: 10,
            initial: None,
        }
    );
    let metrics: Vec<String> = set.metrics().into_iter().collect();
    assert_eq!(metrics, ["nll_alpha", "topk_entropy/chosen"]);
}

#[test]
fn metrics_lists_every_candidate() {
    let set =
        RuleSet::parse(&KL.replace(r#""kl/chosen""#, r#"["kl/generated", "kl/chosen"]"#)).unwrap();
    let metrics: Vec<String> = set.metrics().into_iter().collect();
    assert_eq!(metrics, ["kl/chosen", "kl/generated"]);
}

#[test]
fn the_example_in_docs_rules_md_parses() {
    let doc = include_str!("../../../../docs/rules.md");
    let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = start + doc[start..].find("```").expect("closed");
    let set = RuleSet::parse(&doc[start..end]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.rules.len(), 4);
    assert!(matches!(set.rules[3].kind, RuleKind::Regulate(_)));
}
