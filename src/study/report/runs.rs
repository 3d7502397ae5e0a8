//! Every run in the report: a table row per run and a plot per held-out run.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use redline_core::series::Bucket;
use redline_server::charts::{Chart, Line, Marker, MarkerKind, render};

use super::super::StudyRun;
use super::super::analysis::Stop;

pub(super) fn table(md: &mut String, runs: &[StudyRun]) {
    let _ = writeln!(
        md,
        "## Every run\n\n\
         | run | seed | peak (step) | final | over-optimised | label-free stop: step, rule | kept (score) | all presets kept (score) | score patience kept (score) |\n\
         |---|---:|---:|---:|---|---|---:|---:|---:|"
    );
    let kept = |s: Option<&Stop>, fin: f64| {
        s.map_or(format!("final ({fin:.3})"), |s| {
            format!("{} ({:.3})", s.kept_step, s.kept_score)
        })
    };
    for r in runs {
        let a = &r.analysis;
        let stop = a
            .label_free
            .as_ref()
            .map_or("—".to_owned(), |s| format!("{} {}", s.step, s.by));
        let _ = writeln!(
            md,
            "| {} | {} | {:.3} ({}) | {:.3} | {} | {stop} | {} | {} | {} |",
            r.label,
            r.seed,
            a.peak,
            a.peak_step,
            a.final_score,
            if a.over_optimised { "yes" } else { "no" },
            kept(a.label_free.as_ref(), a.final_score),
            kept(a.presets.as_ref(), a.final_score),
            kept(a.score_patience.as_ref(), a.final_score),
        );
    }
    let _ = writeln!(md);
}

fn plot(run: &StudyRun) -> String {
    let line = |label: &str, points: Vec<(i64, f64)>| Line {
        label: label.into(),
        buckets: points
            .iter()
            .map(|&(s, v)| Bucket::of_point(s, v))
            .collect(),
    };
    let mut lines = vec![line("eval/score", run.log.series("eval/score"))];
    if let Some(g) = &run.regulated {
        lines.push(line("eval/score, regulated", g.scores.clone()));
    }
    let mut markers = Vec::new();
    if let Some(s) = &run.analysis.label_free {
        markers.push(Marker {
            step: s.step,
            kind: MarkerKind::Stop,
        });
        markers.push(Marker {
            step: s.kept_step,
            kind: MarkerKind::Best,
        });
    }
    let last = run.log.steps.last().map_or(1, |s| s.0);
    render(&Chart {
        title: format!("eval/score · {}, seed {}", run.label, run.seed),
        legend: lines.len() > 1,
        lines,
        markers,
        steps: (0, last),
        log_y: false,
        smoothing: 0.0,
        size: (480, 220),
    })
}

/// One SVG per held-out run, in a folder named after the report, linked from it.
pub(super) fn plots(md: &mut String, report_path: &Path, runs: &[&StudyRun]) -> anyhow::Result<()> {
    let plots_dir = report_path.with_extension("");
    // Plots of an earlier report go: seeds and settings may differ now.
    if let Ok(entries) = std::fs::read_dir(&plots_dir) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "svg") {
                std::fs::remove_file(e.path())?;
            }
        }
    }
    std::fs::create_dir_all(&plots_dir)
        .with_context(|| format!("creating {}", plots_dir.display()))?;
    let plots_name = plots_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("study")
        .to_owned();
    let _ = writeln!(
        md,
        "## Score curves (held-out seeds)\n\nVermillion: where the label-free presets stopped; green: \
         the checkpoint they kept. The second line, where drawn, is the same setting with the \
         `regulate` set.\n"
    );
    for r in runs {
        let file = format!("seed-{}-{}.svg", r.seed, r.name);
        let path = plots_dir.join(&file);
        std::fs::write(&path, plot(r)).with_context(|| format!("writing {}", path.display()))?;
        let _ = writeln!(md, "![{}, seed {}]({plots_name}/{file})", r.label, r.seed);
    }
    Ok(())
}
