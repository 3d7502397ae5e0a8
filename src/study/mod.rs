//! `redline study`: how good is the presets' stop? A sweep of losses, β and learning rates on the
//! demo's task, from the demo's warmed-up model, each run trained to the end offline and then
//! analysed (`analysis`): peak held-out score, and where each arm (label-free presets, all
//! presets, score and eval-loss patience, the final checkpoint) stops and what it keeps. Writes a
//! markdown report with one plot per run.

mod analysis;
mod report;

use redline_trainer::config::TrainArgs;

use self::analysis::{Analysis, analyse};
use crate::cli::StudyArgs;
use crate::demo::{fresh_dir, prepare, train};
use crate::run_log::RunLog;

pub(crate) struct StudyRun {
    pub label: String,
    pub log: RunLog,
    pub analysis: Analysis,
}

pub fn run(args: &StudyArgs) -> anyhow::Result<()> {
    let dir = fresh_dir(&args.dir, "study")?;
    let started = std::time::Instant::now();
    let prepared = prepare(&args.task, &dir, args.eval_every, None, "study")?;
    let mut runs = Vec::new();
    for loss in &args.losses {
        for &beta in &args.betas {
            for &lr in &args.lrs {
                let label = format!("{loss} β={beta} lr={lr:e}");
                let out = dir.join("runs").join(format!("{loss}-b{beta}-lr{lr:e}"));
                let run = TrainArgs {
                    model: Some(prepared.warmed.clone()),
                    loss: Some(loss.clone()),
                    beta: Some(beta),
                    nll_alpha: Some(0.0),
                    lr: Some(lr),
                    max_steps: Some(args.steps),
                    checkpoint_every: Some(0),
                    output_dir: Some(out.clone()),
                    run_id: Some(format!("study-{loss}-b{beta}-lr{lr:e}").replace(['+', ' '], "")),
                    run_name: Some(label.clone()),
                    ..prepared.common.clone()
                };
                train(run)?;
                let log = RunLog::read(&out.join("metrics.jsonl"))?;
                let analysis = analyse(&log, prepared.start_score, args.patience);
                println!("  {label}: {}", summary(&analysis));
                runs.push(StudyRun {
                    label,
                    log,
                    analysis,
                });
            }
        }
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    report::write(
        args,
        &runs,
        prepared.start_score,
        &command,
        started.elapsed(),
    )?;
    println!("Report: {}", args.report.display());
    Ok(())
}

pub(crate) fn summary(a: &Analysis) -> String {
    let stop = a.presets.as_ref().map_or("no stop".to_owned(), |s| {
        format!(
            "stopped at {} by {}, kept {} ({:.3})",
            s.step, s.by, s.kept_step, s.kept_score
        )
    });
    format!(
        "peak {:.3} at {}, final {:.3}{}; {stop}",
        a.peak,
        a.peak_step,
        a.final_score,
        if a.over_optimised {
            " (over-optimised)"
        } else {
            ""
        }
    )
}
