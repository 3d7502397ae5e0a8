//! `redline demo`: the server on the embedded SQLite store, a small model warmed up on a
//! synthetic arithmetic task with supervised steps, then DPO set to over-optimise with the
//! presets on. The held-out exact-match score (`eval/score`) is measured every few steps, so the
//! dashboard shows it rise, peak and fall, and the presets' stop near the peak.

pub(crate) mod task;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use redline_core::rules::{LABEL_FREE_NAME, REGULATE_NAME, RuleSet, label_free, presets};
use redline_core::wire::FinalStatus;
use redline_server::config::DatabaseUrl;
use redline_server::startup::shutdown_signal;
use redline_server::{Server, ServerConfig};
use redline_trainer::config::{TrainArgs, TrainConfig};
use redline_trainer::model::write_model_folder;
use redline_trainer::optim::Schedule;
use redline_trainer::train::Checkpoints;

use crate::cli::{DemoArgs, TaskArgs};
use crate::run_log::RunLog;
use crate::study::analysis;

/// Runs the demo; returns when the user presses Ctrl-C after it finished.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let dir = fresh_dir(&args.dir, "demo")?;
    let server = LocalServer::start(&dir.join("redline.db"), args.listen)?;
    println!(
        "Redline demo: open {}/ to watch (store: {})",
        server.url,
        dir.join("redline.db").display()
    );
    let outcome = train_both(args, &dir, &server.url);
    match &outcome {
        Ok(report) => println!("{report}"),
        Err(e) => eprintln!("redline demo: training failed: {e:#}"),
    }
    println!("The dashboard stays at {}/ until Ctrl-C.", server.url);
    server.stop_on_ctrl_c()?;
    outcome.map(drop)
}

/// A Redline server on the embedded SQLite store, serving in the background of a synchronous
/// command (the demo, the study's regulated runs).
pub(crate) struct LocalServer {
    runtime: tokio::runtime::Runtime,
    pub url: String,
    shutdown: tokio_util::sync::CancellationToken,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl LocalServer {
    pub fn start(db: &Path, listen: std::net::SocketAddr) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let server = runtime.block_on(Server::build(ServerConfig {
            listen,
            ..ServerConfig::local(DatabaseUrl::Sqlite(db.to_path_buf()))
        }))?;
        let url = format!("http://{}", server.local_addr());
        let shutdown = server.shutdown_token();
        let serving = runtime.spawn(server.run());
        Ok(Self {
            runtime,
            url,
            shutdown,
            serving,
        })
    }

    /// Stops serving once every open request is answered.
    pub fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        Ok(self.runtime.block_on(self.serving)??)
    }

    fn stop_on_ctrl_c(self) -> anyhow::Result<()> {
        self.runtime.block_on(shutdown_signal());
        self.stop()
    }
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
    /// The warmed-up model's held-out score; `None` without a warm-up (each run then evaluates
    /// its starting model itself, at step 0).
    pub start_score: Option<f64>,
}

/// Writes the task and the starting model under `dir`, and warms the model up with supervised
/// steps (the NLL of the gold answers; β is tiny, so the DPO term, zero at the start where
/// policy = reference, stays negligible beside it). `server`: where runs report, if anywhere.
pub(crate) fn prepare(
    task: &TaskArgs,
    seed: u64,
    dir: &Path,
    eval_every: usize,
    server: Option<&str>,
    project: &str,
    reuse: bool,
) -> anyhow::Result<Prepared> {
    let data = dir.join("data");
    task::write_data(task.task, &data, task.train_pairs, task.eval_prompts, seed)?;
    // The tiny Llama unless the user brought a model (a folder or a GGUF file, e.g. SmolLM2).
    let start = if let Some(model) = &task.model {
        model.clone()
    } else {
        let tiny = dir.join("model");
        task::write_model(&tiny)?;
        tiny
    };
    let common = TrainArgs {
        train_data: Some(data.join("train.jsonl")),
        eval_data: Some(data.join("eval.jsonl")),
        eval_every: Some(eval_every),
        gen_prompts: Some(task.eval_prompts),
        // Greedy decoding: the score is the model's answer, not a sample's luck.
        gen_temperature: Some(0.0),
        gen_max_tokens: Some(24),
        batch_size: Some(task.batch_size),
        schedule: Some(Schedule::Constant),
        warmup_steps: Some(0),
        seed: Some(seed),
        server: server.map(str::to_owned),
        project: Some(project.into()),
        ..TrainArgs::default()
    };
    if task.warmup_steps == 0 {
        return Ok(Prepared {
            common,
            warmed: start,
            start_score: None,
        });
    }
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
    let warmed = dir.join("warmed-model");
    let warmed_before = reuse
        && finished_log(&sft_dir, task.warmup_steps).is_some()
        && warmed.join("model.safetensors").is_file();
    if !warmed_before {
        let sft_outcome = train(sft)?;
        write_model_folder(
            &start,
            &Checkpoints::of_run(&sft_dir).weights(sft_outcome.last_step),
            &warmed,
        )?;
    }
    let start_score = scores(&sft_dir)?.last().map(|s| s.1);
    Ok(Prepared {
        common,
        warmed,
        start_score,
    })
}

/// The supervised warm-up, then DPO from its result twice: once with the label-free presets
/// watching (it over-optimises and one of them stops it), once with the `regulate` set steering
/// its NLL weight as well (it stays healthy). A short report of both, with the gold score rule
/// replayed on the first as a cross-check.
fn train_both(args: &DemoArgs, dir: &Path, url: &str) -> anyhow::Result<String> {
    let Prepared { common, warmed, .. } = prepare(
        &args.task,
        args.seed,
        dir,
        args.eval_every,
        Some(url),
        "demo",
        false,
    )?;

    // DPO set to over-optimise: high learning rate, low β, no NLL term; the label-free presets
    // watch it (the score rule, which reads gold answers, is replayed afterwards as a cross-check).
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
        rules: Some(vec![LABEL_FREE_NAME.into()]),
        ..common
    };
    // The same run with the regulator raising the NLL weight whenever the held-out chosen
    // likelihood falls below its best (RPO, adaptively).
    let regulated_dir = dir.join("runs/dpo-regulated");
    let regulated = TrainArgs {
        output_dir: Some(regulated_dir.clone()),
        run_id: Some("demo-dpo-regulated".into()),
        run_name: Some("3. DPO, the same, with the regulate set".into()),
        tags: Some(vec!["dpo".into(), "regulated".into()]),
        rules: Some(vec![LABEL_FREE_NAME.into(), REGULATE_NAME.into()]),
        ..dpo.clone()
    };
    let dpo_outcome = train(dpo)?;
    let regulated_outcome = train(regulated)?;
    Ok(format!(
        "DPO: {}\n  {}\nDPO with the regulate set: {}\nBoth, overlaid: {url}/compare?runs=demo-dpo,demo-dpo-regulated&metric=eval/score",
        report(&dpo_outcome, &scores(&dpo_dir)?, &dpo_dir)?,
        cross_check(&dpo_dir)?,
        report(&regulated_outcome, &scores(&regulated_dir)?, &regulated_dir)?
    ))
}

/// What the presets' gold rule (the held-out score against gold answers) says of the run in `run`,
/// replayed on its log: a cross-check of the label-free stop.
fn cross_check(run: &Path) -> anyhow::Result<String> {
    let log = RunLog::read(&run.join("metrics.jsonl"))?;
    let gold = RuleSet {
        rules: presets()
            .rules
            .into_iter()
            .filter(|r| !label_free().rules.iter().any(|f| f.name == r.name))
            .collect(),
    };
    let names: Vec<String> = gold.rules.iter().map(|r| r.name.clone()).collect();
    let start = analysis::logged_start(&log).unwrap_or(0.0);
    Ok(match analysis::stop_by(&log, start, gold) {
        Some(s) => format!(
            "Cross-check with the gold answers: {} would have stopped it at step {}, keeping step {} ({:.3}).",
            s.by, s.step, s.kept_step, s.kept_score
        ),
        None => format!(
            "Cross-check with the gold answers: {} would not have stopped it by step {}.",
            names.join(", "),
            log.steps.last().map_or(0, |s| s.0)
        ),
    })
}

/// The log of a run written to `out` that reached `steps`, if there is one: what `--reuse` keeps.
pub(crate) fn finished_log(out: &Path, steps: usize) -> Option<RunLog> {
    let log = RunLog::read(&out.join("metrics.jsonl")).ok()?;
    let last = log.steps.last()?.0;
    (usize::try_from(last).ok()? >= steps).then_some(log)
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

fn report(
    outcome: &redline_trainer::train::Outcome,
    scores: &[(i64, f64)],
    run: &Path,
) -> anyhow::Result<String> {
    let Some(&(peak_step, peak)) = scores.iter().max_by(|a, b| a.1.total_cmp(&b.1)) else {
        return Ok("The DPO run reported no eval/score.".into());
    };
    let kept = Checkpoints::of_run(run).best()?.map(|k| k as i64);
    let kept_score = kept.and_then(|k| scores.iter().find(|s| s.0 == k).map(|s| s.1));
    let last = scores.last().map_or(0.0, |s| s.1);
    let mut out = format!(
        "held-out exact match peaked at {peak:.3} (step {peak_step}); {last:.3} at the last evaluation (step {}).",
        outcome.last_step
    );
    match (outcome.status, kept, kept_score) {
        (FinalStatus::Stopped, Some(k), Some(s)) => {
            let _ = write!(
                out,
                "\n  Redline {}. It kept the checkpoint of step {k} (score {s:.3}, {:.3} below the peak).",
                outcome.message,
                peak - s
            );
        }
        (FinalStatus::Stopped, _, _) => {
            let _ = write!(out, "\n  Redline {}", outcome.message);
        }
        _ => out.push_str("\n  No preset stopped this run."),
    }
    Ok(out)
}
