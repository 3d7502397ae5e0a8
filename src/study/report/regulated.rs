//! Arm (f) in the report: the settings that over-optimised, trained again with the shipped
//! `regulate` set steering them, against the same settings without it.

use std::fmt::Write as _;

use redline_core::rules::{RuleKind, regulate};

use super::super::analysis::{CLOSE_TO_PEAK, Regulated};
use super::super::{Group, StudyRun};
use super::{close, of};

/// What the shipped regulators do, in words, from the set itself.
fn regulators() -> String {
    regulate()
        .rules
        .iter()
        .filter_map(|r| match &r.kind {
            RuleKind::Regulate(g) => Some(format!(
                "`{}` moves `{}` by {} (bounds {} to {}) whenever `{}`{} leaves [{}, {}]",
                r.name,
                g.hparam,
                g.step,
                g.bounds.0,
                g.bounds.1,
                g.metric.join("`, `"),
                match g.baseline {
                    Some(b) if b.relative => " (its change from its baseline, relative)",
                    Some(_) => " (its change from its baseline)",
                    None => "",
                },
                g.band.0,
                g.band.1
            )),
            RuleKind::Trip(_) => None,
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Arm (f): the regulated runs against the same settings without the regulator.
pub(super) fn regulated(md: &mut String, held_out: &[&StudyRun], tuning: &[&StudyRun]) {
    let _ = writeln!(
        md,
        "## Arm (f): the `regulate` set in the loop\n\n\
         Each setting that over-optimised was trained again from the same warmed-up model with \
         `--rules regulate`, the server's controller steering it while it trained: {}. Peak and final \
         are the held-out score's.\n\n\
         | seeds | settings | final within {CLOSE_TO_PEAK} of its peak, without | with | peak as high or higher with | mean peak without → with | mean final without → with |\n\
         |---|---:|---:|---:|---:|---:|---:|",
        regulators()
    );
    for (g, runs) in [(Group::HeldOut, held_out), (Group::Tuning, tuning)] {
        let reg: Vec<(&StudyRun, &Regulated)> = runs
            .iter()
            .filter_map(|r| Some((*r, r.regulated.as_ref()?)))
            .collect();
        let n = reg.len();
        let mean = |f: &dyn Fn(&(&StudyRun, &Regulated)) -> f64| {
            reg.iter().map(f).sum::<f64>() / n.max(1) as f64
        };
        let _ = writeln!(
            md,
            "| {} | {n} | {} | {} | {} | {:.3} → {:.3} | {:.3} → {:.3} |",
            g.name(),
            of(
                reg.iter()
                    .filter(|(r, _)| close(r.analysis.final_score, r))
                    .count(),
                n
            ),
            of(reg.iter().filter(|(_, g)| g.held()).count(), n),
            of(
                reg.iter()
                    .filter(|(r, g)| g.peak >= r.analysis.peak)
                    .count(),
                n
            ),
            mean(&|(r, _)| r.analysis.peak),
            mean(&|(_, g)| g.peak),
            mean(&|(r, _)| r.analysis.final_score),
            mean(&|(_, g)| g.final_score),
        );
    }
    let _ = writeln!(
        md,
        "\nHeld-out seeds, per setting:\n\n\
         | run | seed | peak without (step) | final without | peak with (step) | final with | largest nll_alpha |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    );
    for r in held_out {
        if let Some(g) = &r.regulated {
            let _ = writeln!(
                md,
                "| {} | {} | {:.3} ({}) | {:.3} | {:.3} ({}) | {:.3} | {} |",
                r.label,
                r.seed,
                r.analysis.peak,
                r.analysis.peak_step,
                r.analysis.final_score,
                g.peak,
                g.peak_step,
                g.final_score,
                g.max_nll_alpha
            );
        }
    }
    let _ = writeln!(md);
}
