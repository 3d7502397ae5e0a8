//! What each subcommand does. The server itself lives in `redline-server`; this is the glue.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use redline_server::auth::{generate_token, hash_token};
use redline_server::config::DatabaseUrl;
use redline_server::startup::shutdown_signal;
use redline_server::store;
use redline_server::{Server, ServerConfig};
use tracing_subscriber::EnvFilter;

use crate::bench;
use redline_core::wire::RunStatus;
use redline_trainer::reporter::Delivery;

use crate::cli::{
    BenchCommand, Command, LogFormat, MetricsArgs, PushArgs, ServeArgs, StoreArgs, TokenCommand,
    TrainCommand,
};

pub fn init_logging(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("ignoring the log filter {filter:?} ({e}); logging at info");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(args).await,
        Command::Token(cmd) => token(cmd).await,
        Command::Rules(cmd) => crate::manage::rules(cmd).await,
        Command::Webhook(cmd) => crate::manage::webhook(cmd).await,
        Command::Runs(cmd) => crate::manage::runs(cmd).await,
        Command::Bench(BenchCommand::Ingest(args)) => bench::ingest::run(args).await,
        Command::Bench(BenchCommand::Read(args)) => bench::read::run(args).await,
        Command::Bench(BenchCommand::Dashboard(args)) => bench::dashboard::run(args).await,
        Command::Bench(BenchCommand::Signals(args)) => bench::signals::run(args).await,
        Command::Bench(BenchCommand::RunsPage(args)) => bench::runs_page::run(args).await,
        Command::Bench(BenchCommand::Connections(args)) => bench::connections::run(args).await,
        Command::Train(_)
        | Command::Push(_)
        | Command::Demo(_)
        | Command::Study(_)
        | Command::Metrics(_)
        | Command::Bench(
            BenchCommand::Train(_)
            | BenchCommand::Device(_)
            | BenchCommand::Generate(_)
            | BenchCommand::TrlMetrics(_),
        ) => {
            unreachable!("training runs outside the async runtime")
        }
    }
}

/// The exit status of a run whose data did not all reach the server although nothing failed for
/// good: sysexits' EX_TEMPFAIL, "try again later" (`redline push` does).
const UNDELIVERED: u8 = 75;

/// The exit status that says whether `delivery` left anything behind, and whether retrying helps.
fn delivered(delivery: Option<&Delivery>) -> ExitCode {
    match delivery {
        Some(d) if !d.complete() && d.retryable => ExitCode::from(UNDELIVERED),
        Some(d) if !d.complete() => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

/// `redline train`: runs on the main thread, outside any async runtime (the reporter uses
/// blocking HTTP on its own threads).
pub fn train(cmd: Box<TrainCommand>) -> anyhow::Result<ExitCode> {
    use redline_trainer::config::{TrainArgs, TrainConfig};
    let file = match &cmd.config {
        Some(path) => TrainArgs::from_toml_file(path)?,
        None => TrainArgs::default(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let args = file.overlaid_with(cmd.args);
    if let Some(iterations) = cmd.iterative.iterative {
        return train_iterative(&args, &cmd.iterative, iterations, now);
    }
    let config = TrainConfig::resolve(args, now)?;
    tracing::info!(
        run = %config.run_id,
        loss = %config.loss_name,
        server = config.server.as_deref().unwrap_or("offline"),
        output_dir = %config.output_dir.display(),
        "training"
    );
    let outcome = redline_trainer::train::train(&config)?;
    if let Some(left) = redline_trainer::train::leftover(&config, &outcome) {
        eprintln!("{left}");
    }
    println!("Run {} {}", config.run_id, outcome.message);
    Ok(delivered(outcome.delivery.as_ref()))
}

/// `redline push DIR`: blocking HTTP, like the trainer's reporter, outside the async runtime.
pub fn push(args: &PushArgs) -> anyhow::Result<ExitCode> {
    let pushed = redline_trainer::reporter::push(
        &args.dir,
        args.server.as_deref(),
        args.token.clone(),
        Duration::from_secs(args.timeout),
    )?;
    if let Some(left) = pushed.leftover(&args.dir) {
        eprintln!("{left}");
        return Ok(delivered(Some(&pushed.delivery)));
    }
    let end = match &pushed.ended {
        Some(end) => format!("the run is {} there", RunStatus::from(end.status).as_str()),
        None => "the trainer recorded no end (it was interrupted), so the run stays running there"
            .to_owned(),
    };
    println!(
        "Pushed {} new steps of run {} to {}; {end}.",
        pushed.sent, pushed.run_id, pushed.url
    );
    Ok(ExitCode::SUCCESS)
}

/// `redline train --iterative N`: the iterations, then a table of their scores.
fn train_iterative(
    args: &redline_trainer::config::TrainArgs,
    it: &crate::cli::IterativeArgs,
    iterations: usize,
    now: u64,
) -> anyhow::Result<ExitCode> {
    use redline_trainer::iterate::{Plan, train_iterative};
    let plan = Plan {
        iterations,
        samples: it.samples,
        prompts: it.sample_prompts,
        temperature: it.sample_temperature,
    };
    let report = train_iterative(args, &plan, now)?;
    println!("| iteration | run | pairs | held-out score | ended |");
    println!("|---:|---|---:|---:|---|");
    println!("| 0 | (starting model) | | {:.3} | |", report.start_score);
    for i in &report.iterations {
        if let Some(left) = &i.leftover {
            eprintln!("{left}");
        }
    }
    for i in &report.iterations {
        println!(
            "| {} | {} | {} | {:.3} | {} |",
            i.iteration,
            i.run_id,
            i.pairs,
            i.score,
            RunStatus::from(i.outcome.status).as_str()
        );
    }
    // Each iteration's leftover said what it left undelivered; the status tells scripts that
    // something did.
    let short = report
        .iterations
        .iter()
        .find_map(|i| i.outcome.delivery.as_ref().filter(|d| !d.complete()));
    Ok(delivered(short))
}

impl StoreArgs {
    pub fn database(&self) -> anyhow::Result<DatabaseUrl> {
        match &self.database_url {
            Some(url) => DatabaseUrl::parse(url).map_err(anyhow::Error::msg),
            None => Ok(DatabaseUrl::Sqlite(self.data_dir.join("redline.db"))),
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = ServerConfig {
        listen: args.listen,
        database: args.store.database()?,
        tokens: args.tokens,
        public_read: args.public_read,
        allow_unauthenticated_remote: args.allow_unauthenticated_remote,
        public_hosts: args.public_hosts,
        max_body_bytes: args.max_body_bytes,
        limits: args.limits.limits(),
        delivery: args.delivery.config()?,
    };
    let database = config.database.clone();
    let server = Server::build(config).await?;
    let addr = server.local_addr();
    let auth = if server.auth_enabled() {
        "bearer tokens required"
    } else {
        "off (no tokens configured: loopback only)"
    };
    // The one line meant for people (and scripts) to read: where the server is.
    println!("Redline listening on http://{addr} (store: {database}; auth: {auth})");
    tracing::info!(%addr, store = %database, "listening");
    let shutdown = server.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing requests and closing event streams");
        shutdown.cancel();
    });
    server.run().await.context("server failed")?;
    tracing::info!("stopped");
    Ok(())
}

pub async fn open(store: &StoreArgs) -> anyhow::Result<std::sync::Arc<dyn store::Store>> {
    let url = store.database()?;
    store::connect(&url)
        .await
        .with_context(|| format!("cannot open the store at {url}"))
}

async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { name, store } => {
            let name = name.trim();
            anyhow::ensure!(
                !name.is_empty() && name.len() <= 64,
                "a token name must be 1 to 64 characters"
            );
            let token = generate_token();
            open(&store)
                .await?
                .create_token(name, &hash_token(&token))
                .await?;
            eprintln!("Created token {name:?}. It is shown only now; keep it secret:");
            println!("{token}");
        }
        TokenCommand::List { store } => {
            for t in open(&store).await?.tokens().await? {
                let state = t
                    .revoked_at
                    .map_or_else(|| "active".to_owned(), |r| format!("revoked {r}"));
                println!("{}\tcreated {}\t{state}", t.name, t.created_at);
            }
        }
        TokenCommand::Revoke { name, store } => {
            open(&store).await?.revoke_token(&name).await?;
            eprintln!("Revoked token {name:?}.");
        }
    }
    Ok(())
}

/// `redline metrics`: the catalogue, as a table or as JSON.
pub fn metrics(args: &MetricsArgs) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    use std::io::Write as _;

    use redline_core::catalogue;
    let mut out = String::new();
    if args.json {
        out = serde_json::to_string_pretty(&catalogue::listing())? + "\n";
    } else {
        writeln!(out, "{:<28} {:<12} {:<14} about", "metric", "unit", "chart")?;
        for m in catalogue::all() {
            let steer = if m.steerable().is_some() {
                " (steerable)"
            } else {
                ""
            };
            let (unit, chart) = (m.unit.label().unwrap_or("-"), m.chart.unwrap_or("-"));
            writeln!(
                out,
                "{:<28} {unit:<12} {chart:<14} {}{steer}",
                m.name, m.about
            )?;
        }
        writeln!(
            out,
            "\n{}<metric>: the metric on the held-out pairs. Rules may read any other metric a run \
             reports.",
            catalogue::EVAL_PREFIX
        )?;
    }
    // `redline metrics | head` closes the pipe early: that is not an error.
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
