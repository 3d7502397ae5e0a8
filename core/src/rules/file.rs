//! The rule-file format, first half: TOML into raw structs. toml parses the document once into a
//! spanned tree; each `[[rules]]` entry is then deserialized on its own so that a type error or an
//! unknown key can be reported with the rule it belongs to. Every field keeps its span
//! (`Spanned`), so the checks in `validate.rs` and `when.rs` point at the offending value too.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{Deserializer, SeqAccess, Visitor};
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue, ValueDeserializer};

use super::validate::Cx;
use super::{Baseline, Combine, Direction, RuleFileError, RuleSet, Severity, TripAction};

pub(super) type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub name: S<String>,
    pub description: Option<S<String>>,
    pub severity: Option<S<Severity>>,
    pub actions: Option<S<Vec<S<TripAction>>>>,
    #[serde(rename = "match")]
    pub combine: Option<S<Combine>>,
    pub for_steps: Option<S<u64>>,
    pub warmup: Option<S<u64>>,
    pub cooldown: Option<S<u64>>,
    pub when: Option<S<Vec<S<RawCondition>>>>,
    pub regulate: Option<S<RawRegulate>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCondition {
    pub metric: S<Candidates>,
    pub ema: Option<S<f64>>,
    pub hysteresis: Option<S<f64>>,
    pub above: Option<S<f64>>,
    pub below: Option<S<f64>>,
    pub non_finite: Option<S<bool>>,
    pub baseline: Option<S<Baseline>>,
    pub baseline_steps: Option<S<u64>>,
    pub change_below: Option<S<f64>>,
    pub change_above: Option<S<f64>>,
    pub relative: Option<S<bool>>,
    pub after_rise: Option<S<f64>>,
    pub after_fall: Option<S<f64>>,
    pub slope_window: Option<S<u64>>,
    pub slope_above: Option<S<f64>>,
    pub slope_below: Option<S<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegulate {
    pub metric: S<Candidates>,
    pub ema: Option<S<f64>>,
    pub baseline: Option<S<Baseline>>,
    pub baseline_steps: Option<S<u64>>,
    pub relative: Option<S<bool>>,
    pub band: S<(f64, f64)>,
    pub hparam: S<String>,
    pub when_below: S<Direction>,
    pub step: S<f64>,
    pub gain: Option<S<f64>>,
    pub max_step: Option<S<f64>>,
    pub bounds: S<(f64, f64)>,
    pub cooldown: Option<S<u64>>,
    pub initial: Option<S<f64>>,
}

/// `metric = "name"` or `metric = ["first choice", "fallback"]`.
pub(super) enum Candidates {
    One(String),
    Many(Vec<S<String>>),
}

impl<'de> Deserialize<'de> for Candidates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Candidates;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a metric name or a list of metric names")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Candidates, E> {
                Ok(Candidates::One(s.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Candidates, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<S<String>>()? {
                    names.push(name);
                }
                Ok(Candidates::Many(names))
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) fn parse(src: &str) -> Result<RuleSet, RuleFileError> {
    let doc = DeTable::parse(src).map_err(|e| toml_error(src, &e, None))?;
    let mut rules = None;
    for (key, value) in doc.get_ref() {
        if key.get_ref() != "rules" {
            let msg = format!(
                "unknown key `{}`: a rule file holds only [[rules]] tables",
                key.get_ref()
            );
            return Err(error_at(src, key.span(), msg));
        }
        rules = Some(value);
    }
    let Some(rules) = rules else {
        return Ok(RuleSet::default());
    };
    let Some(items) = rules.get_ref().as_array() else {
        let msg = "rules must be an array of tables: write each rule under [[rules]]";
        return Err(error_at(src, rules.span(), msg));
    };
    let mut out = RuleSet::default();
    // Name → line of its first use, for the duplicate message.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let label = match item.get_ref().as_table().and_then(|t| t.get("name")) {
            Some(name) if name.get_ref().is_str() => {
                format!("rule {:?}", name.get_ref().as_str().unwrap_or_default())
            }
            _ => format!("rule #{}", i + 1),
        };
        let raw = RawRule::deserialize(ValueDeserializer::from(item.clone()))
            .map_err(|e| toml_error(src, &e, Some((&label, item))))?;
        let name_span = raw.name.span();
        let rule = Cx { src, label }.rule(raw, item.span())?;
        if let Some(line) = seen.get(&rule.name) {
            let msg = format!(
                "rule {:?}: name is already used by the rule at line {line}",
                rule.name
            );
            return Err(error_at(src, name_span, msg));
        }
        seen.insert(rule.name.clone(), line_col(src, item.span().start).0);
        out.rules.push(rule);
    }
    Ok(out)
}

/// An error at a byte range of the source.
pub(super) fn error_at(src: &str, span: Range<usize>, message: impl Into<String>) -> RuleFileError {
    let (line, column) = line_col(src, span.start);
    RuleFileError {
        line,
        column,
        message: message.into(),
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// A toml error, with the rule it happened in and the key whose value was wrong, since toml's
/// own message ("invalid type: string, expected f64") names neither.
fn toml_error(
    src: &str,
    e: &toml::de::Error,
    rule: Option<(&str, &Spanned<DeValue<'_>>)>,
) -> RuleFileError {
    let span = e.span().unwrap_or(0..0);
    let mut message = e
        .message()
        .trim_end()
        .replace("expected u64", "expected a whole number >= 0")
        .replace("expected f64", "expected a number");
    if let Some((label, item)) = rule {
        if let Some(Found::Value(key)) = find_key(item.get_ref(), span.start) {
            message = format!("{key}: {message}");
        }
        message = format!("{label}: {message}");
    }
    error_at(src, span, message)
}

enum Found {
    Key,
    Value(String),
}

/// A table entry (key and value) or an array element (no key).
type Child<'a, 'i> = (Option<&'a Spanned<DeString<'i>>>, &'a Spanned<DeValue<'i>>);

/// The innermost key whose name or value lies at `at`. Table headers (`[[rules.when]]`) count as
/// the value's position, so "missing field" errors find their table too.
fn find_key(value: &DeValue<'_>, at: usize) -> Option<Found> {
    let children: Vec<Child<'_, '_>> = match value {
        DeValue::Table(t) => t.iter().map(|(k, v)| (Some(k), v)).collect(),
        DeValue::Array(a) => a.iter().map(|v| (None, v)).collect(),
        _ => return None,
    };
    for (key, child) in children {
        if key.is_some_and(|k| k.span().contains(&at)) {
            return Some(Found::Key);
        }
        let name = || key.map_or(String::new(), |k| k.get_ref().to_string());
        match find_key(child.get_ref(), at) {
            Some(Found::Value(inner)) if inner.is_empty() => return Some(Found::Value(name())),
            Some(found) => return Some(found),
            None if child.span().contains(&at) => return Some(Found::Value(name())),
            None => {}
        }
    }
    None
}
