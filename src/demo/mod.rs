//! `redline demo`: the server on the embedded SQLite store, a small model warmed up on a
//! synthetic arithmetic task with supervised steps, then DPO set to over-optimise with the
//! presets on. The held-out exact-match score (`eval/score`) is measured every few steps, so the
//! dashboard shows it rise, peak and fall, and the presets' stop near the peak.

pub(crate) mod task;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use redline_server::startup::shutdown_signal;
use redline_server::store::DatabaseUrl;
use redline_server::{Server, ServerConfig};
use redline_trainer::config::{TrainArgs, TrainConfig};
use redline_trainer::model::write_model_folder;
use redline_trainer::train::Checkpoints;

use crate::cli::{DemoArgs, TaskArgs};
use crate::run_log::RunLog;

/// Runs the demo; returns when the user presses Ctrl-C after it finished.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let dir = fresh_dir(&args.dir, "demo")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let server = runtime.block_on(Server::build(ServerConfig {
        listen: args.listen,
        ..ServerConfig::local(DatabaseUrl::Sqlite(dir.join("redline.db")))
    }))?;
    let url = format!("http://{}", server.local_addr());
    let shutdown = server.shutdown_token();
    let serving = runtime.spawn(server.run());
    println!(
        "Redline demo: open {url}/ to watch (store: {})",
        dir.join("redline.db").display()
    );

    let outcome = train_both(args, &dir, &url);
    match &outcome {
        Ok(report) => println!("{report}"),
        Err(e) => eprintln!("redline demo: training failed: {e:#}"),
    }
    println!("The dashboard stays at {url}/ until Ctrl-C.");
    runtime.block_on(async {
        shutdown_signal().await;
        shutdown.cancel();
        serving.await
    })??;
    outcome.map(drop)
}

/// A working folder of `what` ("demo", "study"): emptied if an earlier one left it (it holds
/// the `.redline-{what}` marker); any other non-empty folder is refused.
pub(crate) fn fresh_dir(dir: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let marker = dir.join(format!(".redline-{what}"));
    if marker.is_file() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("clearing the earlier {what} in {}", dir.display()))?;
    } else if dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        anyhow::bail!(
            "{} is not empty and not an earlier {what}'s folder: pass --dir with a new or empty folder",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        &marker,
        format!("made by `redline {what}`; the next {what} clears it\n"),
    )?;
    Ok(dir.to_path_buf())
}

/// The task's data and the warmed-up model, ready for preference training.
pub(crate) struct Prepared {
    /// The settings every run on the task shares (data, evaluation, batch, schedule, seed).
    pub common: TrainArgs,
    pub warmed: PathBuf,
    /// The warmed-up model's held-out score.
    pub start_score: f64,
}

/// Writes the task and the starting model under `dir`, and warms the model up with supervised
/// steps (the NLL of the gold answers; β is tiny, so the DPO term, zero at the start where
/// policy = reference, stays negligible beside it). `server`: where runs report, if anywhere.
pub(crate) fn prepare(
    task: &TaskArgs,
    dir: &Path,
    eval_every: usize,
    server: Option<&str>,
    project: &str,
) -> anyhow::Result<Prepared> {
    let data = dir.join("data");
    task::write_data(&data, task.train_pairs, task.eval_prompts, task.seed)?;
    let start = dir.join("model");
    task::write_model(&start)?;
    let common = TrainArgs {
        train_data: Some(data.join("train.jsonl")),
        eval_data: Some(data.join("eval.jsonl")),
        eval_every: Some(eval_every),
        gen_prompts: Some(task.eval_prompts),
        // Greedy decoding: the score is the model's answer, not a sample's luck.
        gen_temperature: Some(0.0),
        gen_max_tokens: Some(24),
        batch_size: Some(16),
        schedule: Some("constant".into()),
        warmup_steps: Some(0),
        seed: Some(task.seed),
        server: server.map(str::to_owned),
        project: Some(project.into()),
        ..TrainArgs::default()
    };
    let sft_dir = dir.join("runs/warmup");
    let sft = TrainArgs {
        model: Some(start.clone()),
        loss: Some("sigmoid".into()),
        beta: Some(0.001),
        nll_alpha: Some(1.0),
        lr: Some(task.warmup_lr),
        max_steps: Some(task.warmup_steps),
        checkpoint_every: Some(0),
        eval_every: Some(task.warmup_steps.div_ceil(10)),
        output_dir: Some(sft_dir.clone()),
        run_id: Some(format!("{project}-warmup")),
        run_name: Some("1. supervised warm-up".into()),
        tags: Some(vec!["warmup".into()]),
        rules: Some(vec!["none".into()]),
        ..common.clone()
    };
    let sft_outcome = train(sft)?;
    let warmed = dir.join("warmed-model");
    write_model_folder(
        &start,
        &Checkpoints::of_run(&sft_dir).weights(sft_outcome.last_step),
        &warmed,
    )?;
    let start_score = scores(&sft_dir)?.last().map_or(0.0, |s| s.1);
    Ok(Prepared {
        common,
        warmed,
        start_score,
    })
}

/// The supervised warm-up, then DPO from its result; a short report.
fn train_both(args: &DemoArgs, dir: &Path, url: &str) -> anyhow::Result<String> {
    let Prepared { common, warmed, .. } =
        prepare(&args.task, dir, args.eval_every, Some(url), "demo")?;

    // DPO set to over-optimise: high learning rate, low β, no NLL term; the presets watch it.
    let dpo_dir = dir.join("runs/dpo");
    let dpo = TrainArgs {
        model: Some(warmed),
        loss: Some("sigmoid".into()),
        beta: Some(args.beta),
        nll_alpha: Some(0.0),
        lr: Some(args.lr),
        max_steps: Some(args.dpo_steps),
        checkpoint_every: Some(args.eval_every),
        output_dir: Some(dpo_dir.clone()),
        run_id: Some("demo-dpo".into()),
        run_name: Some("2. DPO, set to over-optimise".into()),
        tags: Some(vec!["dpo".into(), "over-optimising".into()]),
        ..common
    };
    let dpo_outcome = train(dpo)?;
    let scores = scores(&dpo_dir)?;
    Ok(report(&dpo_outcome, &scores, &dpo_dir))
}

pub(crate) fn train(args: TrainArgs) -> anyhow::Result<redline_trainer::train::Outcome> {
    let config = TrainConfig::resolve(args, 0)?;
    println!("  {}: training…", config.run_name);
    let outcome = redline_trainer::train::train(&config)?;
    println!("  {}: {}", config.run_name, outcome.message);
    Ok(outcome)
}

/// `(step, eval/score)` of the run written to `run`.
fn scores(run: &Path) -> anyhow::Result<Vec<(i64, f64)>> {
    Ok(RunLog::read(&run.join("metrics.jsonl"))?.series("eval/score"))
}

fn report(outcome: &redline_trainer::train::Outcome, scores: &[(i64, f64)], run: &Path) -> String {
    let Some(&(peak_step, peak)) = scores.iter().max_by(|a, b| a.1.total_cmp(&b.1)) else {
        return "The DPO run reported no eval/score.".into();
    };
    let kept = Checkpoints::of_run(run).best().map(|k| k as i64);
    let kept_score = kept.and_then(|k| scores.iter().find(|s| s.0 == k).map(|s| s.1));
    let last = scores.last().map_or(0.0, |s| s.1);
    let mut out = format!(
        "Held-out exact match: peak {peak:.3} at step {peak_step}; {last:.3} at the last evaluation (step {}).",
        outcome.last_step
    );
    match (outcome.status, kept, kept_score) {
        ("stopped", Some(k), Some(s)) => {
            let _ = write!(
                out,
                "\nRedline stopped the run and kept the checkpoint of step {k} (score {s:.3}, {:.3} below the peak).",
                peak - s
            );
        }
        ("stopped", _, _) => {
            out.push_str("\nRedline stopped the run; see its page for the step it kept.");
        }
        _ => out.push_str("\nNo preset stopped this run."),
    }
    out
}
