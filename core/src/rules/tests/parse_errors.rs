//! The rule-file format: errors at exact lines and columns, naming the rule and the field.

use super::parse::KL;
use crate::rules::{RuleFileError, RuleSet};

fn err(src: &str) -> RuleFileError {
    match RuleSet::parse(src) {
        Ok(set) => panic!("parsed: {set:?}"),
        Err(e) => e,
    }
}

/// Asserts the error's line and column and that its message contains `needle`.
#[track_caller]
fn assert_err(src: &str, line: usize, column: usize, needle: &str) {
    let e = err(src);
    assert_eq!((e.line, e.column), (line, column), "{e}");
    assert!(e.message.contains(needle), "{e}");
}

#[test]
fn errors_name_the_rule_and_field_at_the_exact_position() {
    // ema out of range: the value on line 8.
    let e = err(&KL.replace("above = 1.0", "above = 1.0\nema = 1.5"));
    assert_eq!(
        e.to_string(),
        r#"line 9, column 7: rule "kl-budget": ema must be in [0, 1), got 1.5"#
    );
    // An unknown key in a condition: the key itself.
    assert_err(
        &KL.replace("above = 1.0", "above = 1.0\nabove_x = 2"),
        9,
        1,
        "unknown field `above_x`",
    );
    // An unknown key on the rule, reported with the rule's name.
    assert_err(
        &KL.replace("actions", "sevrity = 1\nactions"),
        4,
        1,
        r#"rule "kl-budget": unknown field `sevrity`"#,
    );
    // Two tests: the second one.
    assert_err(
        &KL.replace("above = 1.0", "above = 1.0\nbelow = 0.5"),
        9,
        9,
        "both above and below",
    );
    // No test: the condition's table header.
    assert_err(&KL.replace("above = 1.0", ""), 6, 1, "needs one test");
    // A wrong type names the key.
    assert_err(
        &KL.replace("above = 1.0", "above = \"1\""),
        8,
        9,
        "above: invalid type",
    );
    assert_err(
        &KL.replace("actions", "for_steps = 0\nactions"),
        4,
        13,
        "for_steps must be >= 1, got 0",
    );
    assert_err(
        &KL.replace("actions", "for_steps = 1.5\nactions"),
        4,
        13,
        "for_steps: invalid type",
    );
    // A missing field names its table.
    assert_err(
        &KL.replace("metric = \"kl/chosen\"\n", ""),
        6,
        1,
        "when: missing field `metric`",
    );
}

#[test]
fn duplicate_names_point_at_the_second_name() {
    let src = format!("{KL}{KL}");
    let e = err(&src);
    assert_eq!((e.line, e.column), (11, 8), "{e}");
    assert!(
        e.message.contains("already used by the rule at line 2"),
        "{e}"
    );
}

#[test]
fn a_rule_is_either_a_trip_rule_or_a_regulator() {
    let both = r#"
[[rules]]
name = "both"
actions = ["alert"]
[rules.regulate]
metric = "m"
band = [0, 1]
hparam = "beta"
when_below = "lower"
step = 0.1
bounds = [0, 1]
"#;
    assert_err(both, 4, 11, r#"rule "both": actions is for trip rules"#);
    assert_err(
        "[[rules]]\nname = \"none\"\n",
        1,
        1,
        "needs actions and [[rules.when]]",
    );
    assert_err(
        "[[rules]]\nname = \"a\"\nactions = [\"alert\"]\n",
        1,
        1,
        "no [[rules.when]]",
    );
    assert_err(
        &KL.replace("actions = [\"alert\"]", ""),
        6,
        1,
        "but no actions",
    );
    assert_err(
        &both.replace("actions = [\"alert\"]", "cooldown = 3"),
        4,
        12,
        "cooldown goes in [rules.regulate]",
    );
}

/// (text replaced in KL, replacement, line, column, message part)
const OUT_OF_RANGE: &[(&str, &str, usize, usize, &str)] = &[
    (
        "above = 1.0",
        "above = nan",
        8,
        9,
        "above must be a finite number",
    ),
    (
        "above = 1.0",
        "above = 1.0\nhysteresis = -1",
        9,
        14,
        "hysteresis must be >= 0",
    ),
    (
        "above = 1.0",
        "slope_window = 1\nslope_above = 0",
        8,
        16,
        "slope_window must be >= 2",
    ),
    (
        "above = 1.0",
        "slope_above = 0",
        8,
        15,
        "needs slope_window",
    ),
    ("above = 1.0", "change_below = -1", 8, 16, "needs baseline"),
    (
        "above = 1.0",
        "above = 1.0\nrelative = true",
        9,
        12,
        "relative is only for baseline tests",
    ),
    (
        "above = 1.0",
        "above = 1.0\nbaseline_steps = 3",
        9,
        18,
        "baseline_steps is only for baseline",
    ),
    (
        "above = 1.0",
        "baseline = \"first\"\nchange_below = -1\nafter_rise = 0.1",
        10,
        14,
        "after_rise needs baseline = \"max\"",
    ),
    (
        "above = 1.0",
        "baseline = \"max\"\nchange_below = -1\nbaseline_steps = 0",
        10,
        18,
        "baseline_steps must be >= 1",
    ),
    (
        "above = 1.0",
        "baseline = \"mean\"\nchange_below = -1",
        8,
        12,
        "unknown variant `mean`",
    ),
    (
        "above = 1.0",
        "non_finite = true\nema = 0.5",
        9,
        7,
        "ema is not allowed with non_finite",
    ),
    (
        "above = 1.0",
        "non_finite = false",
        8,
        14,
        "non_finite must be true",
    ),
    (
        "\"kl/chosen\"",
        "\"kl chosen\"",
        7,
        10,
        "metric \"kl chosen\" contains ' '",
    ),
    ("\"kl/chosen\"", "[]", 7, 10, "at least one metric"),
    ("\"kl/chosen\"", "[\"a\", \"a\"]", 7, 16, "listed twice"),
    ("\"kl/chosen\"", "\"\"", 7, 10, "must not be empty"),
    ("[\"alert\"]", "[]", 4, 11, "actions must not be empty"),
    (
        "[\"alert\"]",
        "[\"alert\", \"alert\"]",
        4,
        21,
        "same action twice",
    ),
    (
        "[\"alert\"]",
        "[\"regulate\"]",
        4,
        12,
        "unknown variant `regulate`",
    ),
    (
        "\"kl-budget\"",
        "\"KL budget\"",
        3,
        8,
        "name must be 1 to 64 characters",
    ),
];

#[test]
fn values_out_of_range_are_refused() {
    for &(from, to, line, column, needle) in OUT_OF_RANGE {
        let e = err(&KL.replace(from, to));
        assert_eq!((e.line, e.column), (line, column), "{to}: {e}");
        assert!(e.message.contains(needle), "{to}: {e}");
        assert!(e.message.starts_with("rule "), "{to}: {e}");
    }
}

#[test]
fn regulator_values_out_of_range_are_refused() {
    let base = r#"[[rules]]
name = "reg"
[rules.regulate]
metric = "m"
band = [2.0, 2.8]
hparam = "nll_alpha"
when_below = "raise"
step = 0.25
bounds = [0, 5]
"#;
    assert!(RuleSet::parse(base).is_ok());
    assert_err(&base.replace("[2.0, 2.8]", "[2.8, 2.0]"), 5, 8, "lo < hi");
    assert_err(&base.replace("[0, 5]", "[5, 0]"), 9, 10, "lo <= hi");
    assert_err(
        &base.replace("\"nll_alpha\"", "\"lr\""),
        6,
        10,
        "beta, nll_alpha, lr_scale",
    );
    // Bounds the trainer would refuse are refused in the file, from the same definition.
    assert_err(
        &base.replace("hparam = \"nll_alpha\"", "hparam = \"beta\""),
        9,
        10,
        "beta must be greater than 0",
    );
    assert_err(
        &base.replace("step = 0.25", "step = 0"),
        8,
        8,
        "step must be > 0",
    );
    assert_err(&format!("{base}gain = -1\n"), 10, 8, "gain must be >= 0");
    assert_err(
        &format!("{base}max_step = 0.1\n"),
        10,
        12,
        "max_step must be >= 0.25",
    );
    assert_err(&format!("{base}initial = 6\n"), 10, 11, "within bounds");
    assert_err(
        &format!("{base}ema = -0.1\n"),
        10,
        7,
        "ema must be in [0, 1)",
    );
    assert_err(
        &base.replace("step = 0.25\n", ""),
        3,
        1,
        "regulate: missing field `step`",
    );
    assert_err(
        &base.replace("name = \"reg\"", "name = \"reg\"\nseverity = \"info\""),
        3,
        12,
        "always info",
    );
}

#[test]
fn file_level_errors_have_positions_too() {
    assert_err("[[rules]\nname = 1", 1, 9, "expected `]`");
    assert_err("version = 1\n", 1, 1, "unknown key `version`");
    assert_err("rules = 3\n", 1, 9, "array of tables");
    let nine = KL.to_owned() + &"[[rules.when]]\nmetric = \"m\"\nabove = 1\n".repeat(8);
    assert_err(&nine, 30, 1, "at most 8 conditions");
}
