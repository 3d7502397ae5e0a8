//! The report's evidence on the label-free presets: when each fires, how the new presets'
//! thresholds were chosen (tuning seeds only), which way the literature's other indicators moved,
//! and where the label-free arm misses on the held-out seeds.

use std::fmt::Write as _;

use redline_core::rules::RuleSet;

use super::super::analysis::{Arm, CLOSE_TO_PEAK, peak, shipped_setting, stop_by, variant};
use super::super::{Group, Seed, StudyRun, summary};
use super::{close, of};

/// The label-free presets whose thresholds the study chose, and the values swept for each (the
/// shipped value must be among them). `for_steps` is swept over [`SWEPT_FOR_STEPS`].
const SWEEPS: [(&str, &[f64]); 2] = [
    (
        "held-out-likelihood-drop",
        &[-0.01, -0.02, -0.03, -0.05, -0.07, -0.1],
    ),
    ("generated-entropy-rise", &[0.01, 0.02, 0.03, 0.05, 0.08]),
];
const SWEPT_FOR_STEPS: [u64; 2] = [1, 2];

/// For each label-free preset, where it first fired against each over-optimising run's peak.
pub(super) fn leads(md: &mut String, g: Group, runs: &[&StudyRun]) {
    let over: Vec<&&StudyRun> = runs.iter().filter(|r| r.analysis.over_optimised).collect();
    let Some(first) = over.first() else {
        return;
    };
    let _ = writeln!(
        md,
        "## When the label-free presets fire, {}\n\n\
         Lead = the step a rule first fired (any action) − the step of the run's peak score: negative \
         fired before the peak, positive after it. Over the {} over-optimising runs:\n\n\
         | rule | fired in | median lead | earliest | latest |\n|---|---:|---:|---:|---:|",
        g.name(),
        over.len()
    );
    for rule in first.analysis.first_fired.keys() {
        let mut leads: Vec<i64> = over
            .iter()
            .filter_map(|r| Some((*r.analysis.first_fired.get(rule)?)? - r.analysis.peak_step))
            .collect();
        leads.sort_unstable();
        let cells = match (leads.first(), leads.last()) {
            (Some(e), Some(l)) => format!("{} | {e} | {l}", leads[leads.len() / 2]),
            _ => "— | — | —".into(),
        };
        let _ = writeln!(
            md,
            "| `{rule}` | {} of {} | {cells} |",
            leads.len(),
            over.len()
        );
    }
    let _ = writeln!(md);
}

/// The threshold sweeps of the new label-free presets, on the tuning seeds only.
pub(super) fn sweeps(md: &mut String, seeds: &[Seed], tuning: &[&StudyRun]) {
    let start = |r: &StudyRun| {
        seeds
            .iter()
            .find(|s| s.number == r.seed)
            .map_or(0.0, |s| s.start_score)
    };
    if tuning.is_empty() {
        let _ = writeln!(
            md,
            "## How the thresholds were chosen\n\nThis study has no tuning seeds: the shipped thresholds \
             come from the sweeps of docs/study.md.\n"
        );
        return;
    }
    let over = tuning.iter().filter(|r| r.analysis.over_optimised).count();
    let healthy = tuning.len() - over;
    let _ = writeln!(
        md,
        "## How the thresholds were chosen (tuning seeds only)\n\n\
         Each new label-free preset alone, replayed on the {} tuning runs with its threshold and \
         `for_steps` replaced. The rule: the most over-optimising runs kept within {CLOSE_TO_PEAK}, \
         with at most 10% of healthy runs stopped; among equals, the setting that stops fewer healthy \
         runs. The shipped setting is in bold.\n",
        tuning.len()
    );
    for (name, thresholds) in SWEEPS {
        let shipped = shipped_setting(name);
        let guarded = variant(name, 0.0, 1, true) != variant(name, 0.0, 1, false);
        let versions: &[bool] = if guarded { &[true, false] } else { &[true] };
        for &guards in versions {
            let _ = writeln!(
                md,
                "`{name}`{}:\n\n| change threshold | for_steps | over-optimising kept within {CLOSE_TO_PEAK} | healthy stopped | mean regret |\n|---:|---:|---:|---:|---:|",
                if guards {
                    ""
                } else {
                    ", its change test alone (without its other conditions)"
                }
            );
            for &t in thresholds {
                for n in SWEPT_FOR_STEPS {
                    let Some(set) = variant(name, t, n, guards) else {
                        continue;
                    };
                    let row = sweep_row(&set, tuning, &start, over, healthy);
                    let row = format!("{t} | {n} | {row}");
                    let is_shipped =
                        guards && shipped.is_some_and(|s| (s.0 - t).abs() < 1e-12 && s.1 == n);
                    if is_shipped {
                        let bold: Vec<String> =
                            row.split(" | ").map(|c| format!("**{c}**")).collect();
                        let _ = writeln!(md, "| {} |", bold.join(" | "));
                    } else {
                        let _ = writeln!(md, "| {row} |");
                    }
                }
            }
            let _ = writeln!(md);
        }
    }
}

/// One sweep point on the tuning runs: kept near the peak, healthy runs stopped, mean regret.
fn sweep_row(
    set: &RuleSet,
    tuning: &[&StudyRun],
    start: &dyn Fn(&StudyRun) -> f64,
    over: usize,
    healthy: usize,
) -> String {
    let (mut kept, mut stopped, mut regret) = (0, 0, 0.0);
    for r in tuning {
        let stop = stop_by(&r.log, start(r), set.clone());
        let score = stop
            .as_ref()
            .map_or(r.analysis.final_score, |s| s.kept_score);
        regret += r.analysis.peak - score;
        if r.analysis.over_optimised {
            kept += usize::from(close(score, r));
        } else {
            stopped += usize::from(stop.is_some());
        }
    }
    format!(
        "{} | {} | {:.3}",
        of(kept, over),
        of(stopped, healthy),
        regret / tuning.len().max(1) as f64
    )
}

/// How `metric` moved from the evaluation at the score's peak to the last one: (rose, fell) over
/// the over-optimising runs that report it.
fn moved_after_peak(runs: &[&StudyRun], metric: &str) -> (usize, usize) {
    let mut counts = (0, 0);
    for r in runs.iter().filter(|r| r.analysis.over_optimised) {
        let series = r.log.series(metric);
        let at_peak = series.iter().rev().find(|p| p.0 <= r.analysis.peak_step);
        if let (Some(a), Some(b)) = (at_peak, series.last()) {
            if b.1 > a.1 {
                counts.0 += 1;
            } else if b.1 < a.1 {
                counts.1 += 1;
            }
        }
    }
    counts
}

/// The literature's other cheap indicators, measured but not shipped as stops: which way they
/// moved after the score's peak in the runs that over-optimised.
pub(super) fn other_indicators(md: &mut String, held_out: &[&StudyRun], tuning: &[&StudyRun]) {
    let _ = writeln!(
        md,
        "## Other indicators, measured (from the score's peak to the end of each over-optimising run)\n\n\
         | indicator | metric | seeds | rose | fell |\n|---|---|---|---:|---:|"
    );
    let rows = [
        (
            "squeezing (arXiv 2407.10490): probability piles onto the top token of rejected completions",
            "eval/top1_prob/rejected",
        ),
        (
            "chosen and rejected likelihoods falling together (arXiv 2410.08847): the chosen",
            "eval/logps_mean/chosen",
        ),
        ("… and the rejected", "eval/logps_mean/rejected"),
        (
            "top-k mass of the policy's samples (arXiv 2410.11677)",
            "topk_mass/generated",
        ),
    ];
    for (what, metric) in rows {
        for (g, runs) in [(Group::Tuning, tuning), (Group::HeldOut, held_out)] {
            let (rose, fell) = moved_after_peak(runs, metric);
            let _ = writeln!(
                md,
                "| {what} | `{metric}` | {} | {rose} | {fell} |",
                g.name()
            );
        }
    }
    let _ = writeln!(
        md,
        "\nSqueezing predicts a rise of `eval/top1_prob/rejected`; a fall means these runs did not \
         squeeze (their rejected completions grew flatter instead), so no stop is shipped on it.\n"
    );
}

/// Where the label-free arm misses on the held-out seeds, and what each indicator did there.
pub(super) fn failures(md: &mut String, held_out: &[&StudyRun]) {
    let _ = writeln!(
        md,
        "## Where the label-free presets miss (held-out seeds)\n\n\
         Each over-optimising run they did not keep within {CLOSE_TO_PEAK} of its peak, and each healthy \
         run they stopped, with the step each label-free rule first fired and the step the held-out \
         chosen likelihood peaked.\n"
    );
    let mut any = false;
    for r in held_out {
        let a = &r.analysis;
        let missed = a.over_optimised && !close(a.kept_score(Arm::LabelFree), r);
        let false_stop = !a.over_optimised && a.label_free.is_some();
        if !(missed || false_stop) {
            continue;
        }
        any = true;
        let fired: Vec<String> = a
            .first_fired
            .iter()
            .filter_map(|(rule, s)| Some(format!("{rule} at {}", (*s)?)))
            .collect();
        let likelihood_peak = peak(&r.log.series("eval/logps_mean/chosen"))
            .map_or("—".to_owned(), |p| p.0.to_string());
        let _ = writeln!(
            md,
            "- {}, seed {}{}: {}. Fired: {}. Held-out chosen likelihood peaked at step {likelihood_peak}.",
            r.label,
            r.seed,
            if false_stop {
                " (healthy, stopped)"
            } else {
                ""
            },
            summary(a),
            if fired.is_empty() {
                "nothing".into()
            } else {
                fired.join(", ")
            }
        );
    }
    if !any {
        let _ = writeln!(md, "Nowhere on the held-out seeds.");
    }
    let _ = writeln!(md);
}
