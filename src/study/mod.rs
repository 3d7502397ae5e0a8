//! `redline study`: how good are the presets' stop and the `regulate` set's steering? A sweep of
//! losses, β and learning rates on the demo's task, on two groups of seeds: tuning seeds, whose
//! runs may be read to choose a threshold, and held-out seeds, on which the report judges the
//! targets. Each seed is its own task, warm-up and batch order.
//!
//! Every run trains to the end offline and is then analysed (`analysis`): peak held-out score, and
//! where each arm (label-free presets, all presets, score and eval-loss patience, the final
//! checkpoint) stops and what it keeps. Each setting that over-optimises is trained again with
//! the shipped `regulate` set steering it through a live server (arm f). Writes a markdown report
//! with plots (`report`).

pub(crate) mod analysis;
mod report;

use std::path::Path;

use anyhow::bail;
use redline_core::rules::REGULATE_NAME;
use redline_trainer::config::TrainArgs;

use self::analysis::{Analysis, Regulated, analyse, logged_start};
use crate::cli::StudyArgs;
use crate::demo::{LocalServer, finished_log, fresh_dir, prepare, train};
use crate::run_log::RunLog;

/// Which seeds a run belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    /// Read to choose thresholds.
    Tuning,
    /// Never read to choose anything: the targets are judged here.
    HeldOut,
}

impl Group {
    pub const ALL: [Self; 2] = [Self::Tuning, Self::HeldOut];

    pub fn name(self) -> &'static str {
        match self {
            Self::Tuning => "tuning seeds",
            Self::HeldOut => "held-out seeds",
        }
    }
}

pub(crate) struct StudyRun {
    pub label: String,
    /// The run's folder name, e.g. `sigmoid-b0.1-lr1e-5`.
    pub name: String,
    pub seed: u64,
    pub group: Group,
    pub log: RunLog,
    pub analysis: Analysis,
    /// Arm (f): the same setting trained again with the `regulate` set steering it, for the
    /// settings that over-optimised without it.
    pub regulated: Option<Regulated>,
}

/// One seed's task: its group and its warmed-up model's score.
pub(crate) struct Seed {
    pub number: u64,
    pub group: Group,
    pub start_score: f64,
}

pub fn run(args: &StudyArgs) -> anyhow::Result<()> {
    check_seeds(args)?;
    let dir = if args.reuse {
        std::fs::create_dir_all(&args.dir)?;
        args.dir.clone()
    } else {
        fresh_dir(&args.dir, "study")?
    };
    let started = std::time::Instant::now();
    // Arm (f) needs the server's controller in the loop: replaying a regulator afterwards cannot
    // change how a run trained.
    let server = if args.no_regulate {
        None
    } else {
        Some(LocalServer::start(
            &dir.join("redline.db"),
            ([127, 0, 0, 1], 0).into(),
        )?)
    };
    let mut seeds = Vec::new();
    let mut runs = Vec::new();
    for group in Group::ALL {
        let list = match group {
            Group::Tuning => &args.tuning_seeds,
            Group::HeldOut => &args.held_out_seeds,
        };
        for &seed in list {
            println!("Seed {seed} ({}):", group.name());
            let url = server.as_ref().map(|s| s.url.as_str());
            let (start_score, seed_runs) = study_seed(args, &dir, seed, group, url)?;
            seeds.push(Seed {
                number: seed,
                group,
                start_score,
            });
            runs.extend(seed_runs);
        }
    }
    if let Some(server) = server {
        server.stop()?;
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    report::write(args, &seeds, &runs, &command, started.elapsed())?;
    println!("Report: {}", args.report.display());
    Ok(())
}

fn check_seeds(args: &StudyArgs) -> anyhow::Result<()> {
    if args.held_out_seeds.is_empty() {
        bail!("--held-out-seeds needs at least one seed: the targets are judged on them");
    }
    if let Some(s) = args
        .held_out_seeds
        .iter()
        .find(|s| args.tuning_seeds.contains(s))
    {
        bail!(
            "seed {s} is in both --tuning-seeds and --held-out-seeds: a held-out seed must never be used to choose a threshold"
        );
    }
    let mut all: Vec<u64> = args.tuning_seeds.clone();
    all.extend(&args.held_out_seeds);
    all.sort_unstable();
    if let Some([twice, _]) = all.windows(2).find(|w| w[0] == w[1]) {
        bail!("seed {twice} is listed twice");
    }
    Ok(())
}

/// The grid on one seed: the task and warm-up, then every setting, and the regulated run of each
/// setting that over-optimised.
fn study_seed(
    args: &StudyArgs,
    dir: &Path,
    seed: u64,
    group: Group,
    server: Option<&str>,
) -> anyhow::Result<(f64, Vec<StudyRun>)> {
    let dir = dir.join(format!("seed-{seed}"));
    std::fs::create_dir_all(&dir)?;
    let prepared = prepare(
        &args.task,
        seed,
        &dir,
        args.eval_every,
        None,
        "study",
        args.reuse,
    )?;
    let mut runs = Vec::new();
    // Without a warm-up the start is the first run's own step-0 evaluation.
    let mut start_score = prepared.start_score;
    for loss in &args.losses {
        for &beta in &args.betas {
            for &lr in &args.lrs {
                let label = format!("{loss} β={beta} lr={lr:e}");
                let name = format!("{loss}-b{beta}-lr{lr:e}");
                let id = format!("study-s{seed}-{name}").replace(['+', ' '], "");
                let setting = TrainArgs {
                    model: Some(prepared.warmed.clone()),
                    loss: Some(loss.clone()),
                    beta: Some(beta),
                    nll_alpha: Some(0.0),
                    lr: Some(lr),
                    max_steps: Some(args.steps),
                    checkpoint_every: Some(0),
                    run_name: Some(format!("{label}, seed {seed}")),
                    ..prepared.common.clone()
                };
                let log = trained(
                    args,
                    &dir.join("runs").join(&name),
                    TrainArgs {
                        run_id: Some(id.clone()),
                        ..setting.clone()
                    },
                )?;
                let start = *start_score.get_or_insert_with(|| logged_start(&log).unwrap_or(0.0));
                let analysis = analyse(&log, start, args.patience);
                println!("  {label}: {}", summary(&analysis));
                let regulated = match server {
                    Some(url) if analysis.over_optimised => {
                        let log = trained(
                            args,
                            &dir.join("runs").join(format!("{name}-regulated")),
                            TrainArgs {
                                server: Some(url.to_owned()),
                                rules: Some(vec![REGULATE_NAME.to_owned()]),
                                // A fresh id per attempt: the server keeps an unfinished
                                // attempt's steps, and reusing its id would resume it.
                                run_id: Some(format!("{id}-regulated-{}", std::process::id())),
                                run_name: Some(format!("{label}, seed {seed}, regulated")),
                                tags: Some(vec!["regulated".into()]),
                                ..setting
                            },
                        )?;
                        let r = Regulated::of(&log, start);
                        println!(
                            "  {label}, regulated: peak {:.3} at {}, final {:.3}",
                            r.peak, r.peak_step, r.final_score
                        );
                        Some(r)
                    }
                    _ => None,
                };
                runs.push(StudyRun {
                    label,
                    name,
                    seed,
                    group,
                    log,
                    analysis,
                    regulated,
                });
            }
        }
    }
    Ok((start_score.unwrap_or(0.0), runs))
}

/// Trains one run into `out`, or with `--reuse` takes the log an earlier study left there.
fn trained(args: &StudyArgs, out: &Path, run: TrainArgs) -> anyhow::Result<RunLog> {
    if args.reuse
        && let Some(log) = finished_log(out, args.steps)
    {
        return Ok(log);
    }
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    train(TrainArgs {
        output_dir: Some(out.to_path_buf()),
        ..run
    })?;
    RunLog::read(&out.join("metrics.jsonl"))
}

pub(crate) fn summary(a: &Analysis) -> String {
    let stop = a
        .label_free
        .as_ref()
        .map_or("no label-free stop".to_owned(), |s| {
            format!(
                "label-free stop at {} by {}, kept {} ({:.3})",
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
