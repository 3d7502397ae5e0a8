//! The command line. Every option can also be set through the environment variable named in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use redline_server::config::{ApiToken, ConnectionLimits};
use redline_server::http::parse_public_host;
use redline_trainer::config::{DeviceSpec, Precision};

use crate::demo::task::Task;

#[derive(Debug, Parser)]
#[command(
    name = "redline",
    version,
    about = "Watches preference-optimisation training for likelihood over-optimisation, and acts on the run",
    long_about = "Redline stores the per-step metrics of DPO-family training runs (losses, rewards, \
        log-likelihoods, top-k entropy and mass), serves them over HTTP API v1, and sends signals \
        (stop, checkpoint, set a hyperparameter) back to the trainer.\n\n\
        Start here: `redline serve`, then open http://127.0.0.1:8080/api/v1/openapi.json."
)]
pub struct Cli {
    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `redline_server=debug`) [default:
    /// info; for `demo` and `study`, info,redline_trainer=warn: their own training runs say only
    /// what goes wrong].
    #[arg(long, env = "REDLINE_LOG", global = true)]
    pub log: Option<String>,
    /// Log line format.
    #[arg(long, env = "REDLINE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl Cli {
    /// The log filter: the one given, else the command's default. The demo and the study train
    /// several runs of their own and print their own report, so the trainer's progress events
    /// would only bury it; its warnings still show.
    pub fn log_filter(&self) -> &str {
        match (&self.log, &self.command) {
            (Some(filter), _) => filter,
            (None, Command::Demo(_) | Command::Study(_)) => "info,redline_trainer=warn",
            (None, _) => "info",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: HTTP API v1 over the chosen store.
    Serve(ServeArgs),
    /// Create, list or revoke API tokens kept (hashed) in the store.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The quickstart: the server on SQLite, a small model warmed up on synthetic arithmetic, then
    /// DPO set to over-optimise with the presets watching; the dashboard stays up until Ctrl-C.
    Demo(DemoArgs),
    /// The detection-quality study: a sweep of losses, β and learning rates on the demo's task;
    /// where the presets stop against the peak score, and against two baselines.
    Study(StudyArgs),
    /// Train a model with a DPO-family loss, streaming every step to a server (or offline).
    Train(Box<TrainCommand>),
    /// Send a run folder's undelivered steps (and how the run ended) to a server: what `redline
    /// train` kept in its spool when the server was down or refused it.
    Push(PushArgs),
    /// Rule sets: check a rule file, list, show and store versions.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Webhooks that receive alerts: add, list, remove, send a test, read the delivery log.
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Runs: delete one, or rename it and edit its tags.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Measure ingest and read throughput over real HTTP on this machine.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The metric catalogue: every metric Redline reports, its unit, chart and meaning. Rules may
    /// also read `eval/<name>` (the held-out twin) and any metric a run reports itself.
    Metrics(MetricsArgs),
}

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Print the catalogue as JSON (metrics, charts, the held-out prefix).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address of the dashboard (loopback: the demo runs without tokens).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The demo's folder: store, data, model, runs. An earlier demo's folder is cleared.
    #[arg(long, default_value = "redline-demo")]
    pub dir: PathBuf,
    #[command(flatten)]
    pub task: TaskArgs,
    /// Most DPO steps (the presets are expected to stop it earlier).
    #[arg(long, default_value_t = 400)]
    pub dpo_steps: usize,
    /// DPO learning rate: high for this model, to over-optimise.
    #[arg(long, default_value_t = 6e-5)]
    pub lr: f64,
    /// DPO β.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    /// Evaluate (and checkpoint) every N steps.
    #[arg(long, default_value_t = 10)]
    pub eval_every: usize,
    /// Seeds the task's data, the warm-up and the batch order. 7 is one of the study's tuning
    /// seeds.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// The synthetic task of the demo and the study, and the warm-up before preference training.
#[derive(Debug, Clone, Args)]
pub struct TaskArgs {
    /// The task: `sums` for the tiny model (warmed up first), `chat-sums` for a chat model such
    /// as SmolLM2-Instruct (with `--model` and `--warmup-steps 0`).
    #[arg(long, value_enum, default_value = "sums")]
    pub task: Task,
    /// Training pairs.
    #[arg(long, default_value_t = 4000)]
    pub train_pairs: usize,
    /// Held-out problems scored by exact match at each evaluation (one problem is 1/N of the
    /// score: with few, the score moves by noise as much as by training).
    #[arg(long, default_value_t = 256)]
    pub eval_prompts: usize,
    /// Supervised warm-up steps; 0 for none (a model that already knows the task's format).
    #[arg(long, default_value_t = 450)]
    pub warmup_steps: usize,
    #[arg(long, default_value_t = 3e-3)]
    pub warmup_lr: f64,
    /// The model to warm up and train: a folder in Hugging Face format or a GGUF file (e.g.
    /// `target/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`) [default: the trainer's tiny Llama,
    /// written fresh]. Lower --warmup-lr and --batch-size for a real model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Preference pairs per step, in the warm-up and every run.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
}

/// The detection-quality study (docs/study.md).
#[derive(Debug, Args)]
pub struct StudyArgs {
    /// Working folder: task, model, one folder per run. Cleared when an earlier study left it.
    #[arg(long, default_value = "redline-study")]
    pub dir: PathBuf,
    #[command(flatten)]
    pub task: TaskArgs,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sigmoid,ipo,hinge,discopop,slic"
    )]
    pub losses: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.5")]
    pub betas: Vec<f64>,
    #[arg(long, value_delimiter = ',', default_value = "1e-5,6e-5")]
    pub lrs: Vec<f64>,
    /// DPO steps per run (runs are not stopped: the presets are replayed on the full log).
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    #[arg(long, default_value_t = 20)]
    pub eval_every: usize,
    /// The patience baselines (on the held-out score, the gold one, and on eval loss) stop after
    /// this many evaluations without a new best.
    #[arg(long, default_value_t = 3)]
    pub patience: usize,
    /// Seeds whose runs may be read to choose a preset's thresholds (the report's sweep table
    /// uses only these). Each seed is a fresh task, warm-up and batch order. Give the flag with no
    /// value for none (a study that only reports, e.g. on another model).
    #[arg(long, value_delimiter = ',', num_args = 0.., default_value = "7,8,9")]
    pub tuning_seeds: Vec<u64>,
    /// Seeds never used to choose a threshold: the report judges the targets on these.
    #[arg(long, value_delimiter = ',', default_value = "10,11,12")]
    pub held_out_seeds: Vec<u64>,
    /// Skip arm (f): the runs trained again with the `regulate` rule set steering them through a
    /// server (only the settings that over-optimised without it).
    #[arg(long)]
    pub no_regulate: bool,
    /// Keep the runs an earlier study left finished in --dir instead of training them again
    /// (a run is finished when its log reaches --steps; change no setting between the two).
    #[arg(long)]
    pub reuse: bool,
    /// The markdown report; its plots go to a folder beside it named after it.
    #[arg(long, default_value = "docs/study.md")]
    pub report: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Validates rule files without storing them; errors name the line.
    Check { files: Vec<PathBuf> },
    /// The newest version of every rule set.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Prints a rule set's file.
    Show {
        name: String,
        #[arg(long)]
        version: Option<i32>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Stores FILE as the next version of rule set NAME (runs created from now on use it).
    Put {
        name: String,
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Registers URL under NAME and prints its signing secret (shown only now).
    Add {
        name: String,
        url: String,
        #[arg(long, value_parser = ["json", "slack", "discord"], default_value = "json")]
        format: String,
        /// Alerts below this severity are not sent.
        #[arg(long, value_parser = ["info", "warning", "critical"], default_value = "info")]
        min_severity: String,
        /// `whsec_…` signing secret; generated when left out.
        #[arg(long, env = "REDLINE_WEBHOOK_SECRET", hide_env_values = true)]
        secret: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Every webhook (URLs shortened to their host).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Deletes a webhook with its queued messages and delivery log.
    Remove {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Sends a signed test message now and prints the result.
    Test {
        name: String,
        #[command(flatten)]
        delivery: DeliveryArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// The newest delivery attempts, newest first.
    Deliveries {
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Deletes a run with its series, signals, rule events and alert deliveries, in one
    /// transaction. Asks first, unless --yes.
    Delete {
        run_id: String,
        /// Delete without asking (needed where there is no terminal to ask on).
        #[arg(long, short)]
        yes: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Renames a run and/or replaces its tags, and prints the run.
    Edit {
        run_id: String,
        /// The new display name.
        #[arg(long)]
        name: Option<String>,
        /// A tag of the new set, replacing all the old ones (repeatable).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Remove every tag.
        #[arg(long, conflicts_with = "tags")]
        no_tags: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// How webhooks are delivered.
#[derive(Debug, Clone, Args)]
pub struct DeliveryArgs {
    /// Non-public hosts, addresses or CIDR networks webhooks may reach (private and loopback
    /// addresses are refused otherwise), e.g. `127.0.0.1,10.0.0.0/8,hooks.internal`.
    #[arg(
        long = "webhook-allow",
        env = "REDLINE_WEBHOOK_ALLOW",
        value_delimiter = ','
    )]
    pub allow: Vec<String>,
    /// Per-attempt timeout, in milliseconds.
    #[arg(
        long = "webhook-timeout-ms",
        env = "REDLINE_WEBHOOK_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub timeout_ms: u64,
    /// Attempts per message before giving up.
    #[arg(
        long = "webhook-max-attempts",
        env = "REDLINE_WEBHOOK_MAX_ATTEMPTS",
        default_value_t = 8
    )]
    pub max_attempts: u32,
    /// The wait after the first failed attempt, in milliseconds; it doubles after each further one.
    #[arg(
        long = "webhook-backoff-ms",
        env = "REDLINE_WEBHOOK_BACKOFF_MS",
        default_value_t = 5_000
    )]
    pub backoff_ms: u64,
    /// The longest wait between attempts, in milliseconds (Retry-After is capped to it too).
    #[arg(
        long = "webhook-backoff-max-ms",
        env = "REDLINE_WEBHOOK_BACKOFF_MAX_MS",
        default_value_t = 300_000
    )]
    pub backoff_max_ms: u64,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Every setting can be given in the TOML file (same names, with _ for -) \
    or as a flag; flags win. Example: redline train --model trainer/tests/fixtures/tiny-llama \
    --lr 1e-3 --max-steps 20 --server http://127.0.0.1:8080"
)]
pub struct TrainCommand {
    /// TOML file with the run's settings.
    #[arg(long, env = "REDLINE_TRAIN_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub args: redline_trainer::config::TrainArgs,
    #[command(flatten)]
    pub iterative: IterativeArgs,
}

#[derive(Debug, Args)]
#[command(
    long_about = "Send a run folder's undelivered steps, and how the run ended, to a server.\n\n\
    `redline train` writes every step to DIR/metrics.jsonl before sending it; DIR/metrics.jsonl.sent \
    holds how far the server has taken them, and DIR/server-run.json the run's id, how to create it \
    and how the trainer ended it. When the server was down, or refused the token, the rest stays there \
    and `redline train` says how many steps it could not deliver. `redline push DIR` creates or resumes \
    the run on the server, sends the steps after the offset (each exactly once: the server keeps the \
    first value of a step), then finishes the run with the status the trainer recorded (a run whose \
    trainer was interrupted stays running). Pushing again sends nothing new. Running the same \
    `redline train` again (same --run-id and --output-dir) resumes the run and sends them too.\n\n\
    Exit status: 0 when everything was delivered; 75 when the server could not be reached in time \
    (try again later); 1 when it refused the token or the run."
)]
pub struct PushArgs {
    /// The run's folder: the --output-dir of `redline train`.
    pub dir: PathBuf,
    /// Server URL [default: the server the run was trained against].
    #[arg(long, env = "REDLINE_SERVER")]
    pub server: Option<String>,
    /// Bearer token for the server.
    #[arg(long, env = "REDLINE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Give up after this many seconds without progress.
    #[arg(
        long,
        env = "REDLINE_FINISH_GRACE",
        value_name = "SECONDS",
        default_value_t = 30
    )]
    pub timeout: u64,
}

/// Iterative RPO: sample, score, pair, train, repeat.
#[derive(Debug, Clone, Args)]
pub struct IterativeArgs {
    /// Train N iterations of Iterative RPO instead of one run: each samples completions of the
    /// training prompts from the current model, pairs a right answer (by the rows' `answer`) with
    /// a wrong one, and trains DPO + NLL (nll_alpha default 1) from the current model as its own
    /// reference. Runs are RUN_ID-iter1, -iter2, …
    #[arg(long, value_name = "N")]
    pub iterative: Option<usize>,
    /// Completions sampled per prompt in each iteration.
    #[arg(long, default_value_t = 8, requires = "iterative")]
    pub samples: usize,
    /// Training prompts sampled per iteration (from the start of the training data).
    #[arg(long, default_value_t = 256, requires = "iterative")]
    pub sample_prompts: usize,
    /// Temperature of those samples.
    #[arg(long, default_value_t = 1.0, requires = "iterative")]
    pub sample_temperature: f64,
}

/// Where the data lives.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Store URL: `postgres://USER@HOST/DB` for PostgreSQL, or `sqlite://PATH`. Without it,
    /// Redline uses the SQLite file `redline.db` inside --data-dir.
    #[arg(long, env = "REDLINE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Folder for the embedded SQLite store, created on first use.
    #[arg(long, env = "REDLINE_DATA_DIR", default_value = "./redline-data")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Without tokens, only a loopback address is accepted
    /// (see --allow-unauthenticated-remote).
    #[arg(long, env = "REDLINE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    /// A bearer token that may write (repeatable; in the environment, comma-separated).
    /// With any token configured, here or by `redline token create`, every write needs one.
    #[arg(
        long = "token",
        env = "REDLINE_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = ApiToken::parse
    )]
    pub tokens: Vec<ApiToken>,
    /// Let reads (GET) through without a token even when tokens are configured.
    #[arg(long, env = "REDLINE_PUBLIC_READ")]
    pub public_read: bool,
    /// Allow a non-loopback --listen address with no token configured. Only on a trusted network.
    #[arg(long, env = "REDLINE_ALLOW_UNAUTHENTICATED_REMOTE")]
    pub allow_unauthenticated_remote: bool,
    /// A host name the server answers to besides 127.0.0.1, localhost and [::1] (repeatable; in
    /// the environment, comma-separated), e.g. the name a reverse proxy forwards. Requests for
    /// any other host get 421, which defeats DNS rebinding. Listening beyond loopback without
    /// one, any host is answered.
    #[arg(long = "public-host", env = "REDLINE_PUBLIC_HOSTS", value_delimiter = ',', value_parser = parse_public_host)]
    pub public_hosts: Vec<String>,
    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "REDLINE_MAX_BODY_BYTES", default_value_t = redline_server::config::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    #[command(flatten)]
    pub limits: ConnectionArgs,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
}

/// How long and how many clients may hold connections (defaults in `ConnectionLimits`).
#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// Seconds a client has to send a request's headers, counted from when the connection is
    /// ready for a request (so idle keep-alive connections close after it too).
    #[arg(long, env = "REDLINE_HEADER_TIMEOUT", default_value_t = ConnectionLimits::default().header_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout: u64,
    /// Seconds a client has to send a request's whole body; then 408.
    #[arg(long, env = "REDLINE_BODY_TIMEOUT", default_value_t = ConnectionLimits::default().body_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout: u64,
    /// Seconds without a byte moving either way after which a connection is closed (more than
    /// the event streams' 15 s keep-alive).
    #[arg(long, env = "REDLINE_IDLE_TIMEOUT", default_value_t = ConnectionLimits::default().idle_timeout.as_secs(), value_parser = clap::value_parser!(u64).range(16..))]
    pub idle_timeout: u64,
    /// Connections open at once; a new one beyond it gets 503 and is closed.
    #[arg(long, env = "REDLINE_MAX_CONNECTIONS", default_value_t = ConnectionLimits::default().max_connections, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
}

impl ConnectionArgs {
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_secs(self.header_timeout),
            body_timeout: Duration::from_secs(self.body_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            max_connections: self.max_connections,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once; only its hash is stored. Restart running servers
    /// after creating the first token, since auth is switched on at start.
    Create {
        /// A name to recognise the token by, e.g. the machine or person using it.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List tokens by name (secrets are never shown).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a token by name; requests using it are refused from then on.
    Revoke {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Points per second accepted over HTTP and stored, per store and batch size, with a
    /// concurrent-clients variant, and MLflow's tracking server side by side when a peers venv exists.
    Ingest(BenchIngestArgs),
    /// Time to read a 1,000,000-step series back downsampled to 1,000 buckets, per store.
    Read(BenchReadArgs),
    /// A run page of 20 charts and single chart SVGs over series of a million steps each: time
    /// per request and page weight.
    Dashboard(BenchDashboardArgs),
    /// The runs page listing up to 1,000 runs, each with a few series: time per request and
    /// page weight.
    RunsPage(BenchRunsPageArgs),
    /// Signal latency: from the request carrying a step that trips a rule to the client holding
    /// the signal, p50 and p99 over many trips.
    Signals(BenchSignalsArgs),
    /// DPO steps per second against TRL on the peers' fixtures (needs the peers venv), and the
    /// share of a step the top-k metrics take; or, with --model, steps and tokens per second and
    /// MFU of one model on a device (a GPU: scripts/gpu-check.sh).
    Train(BenchTrainArgs),
    /// A device (a GPU) against the CPU: logits and DPO steps on a tiny fixture; the top-k
    /// metrics on a large vocabulary, timed; generation in tokens per second.
    Device(BenchDeviceArgs),
    /// Greedy generation from SmolLM2-135M-Instruct against transformers' `generate` (KV cache on)
    /// on the same prompts, cores and new-token count (needs the peers venv with `gguf`).
    Generate(BenchGenerateArgs),
    /// What idle and slow clients cost a `redline serve` process in memory, and whether its
    /// timeouts give it back (docs/security.md).
    Connections(BenchConnectionsArgs),
    /// What the Python client's over-optimisation metrics (`RedlineDPOTrainer`) add to a TRL
    /// step: TRL's `DPOTrainer` and the Redline one take turns on the same model and batches.
    TrlMetrics(BenchTrlMetricsArgs),
}

#[derive(Debug, Args)]
pub struct BenchTrlMetricsArgs {
    /// Timed steps per training (3 more run first, untimed).
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Trainings per side, taken in turns.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Threads for torch [default: the cores available].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Python virtual environment with torch, transformers and TRL (`scripts/python-env.sh`
    /// prints the path of one it builds; ../shared/peers/setup.sh makes one too).
    #[arg(long, env = "REDLINE_PEERS_VENV", default_value = ".peers-venv")]
    pub peers_venv: PathBuf,
}

#[derive(Debug, Args)]
pub struct BenchConnectionsArgs {
    /// Connections to open: a third send half their headers, a third sit idle after one
    /// request, a third declare a 100 GB body.
    #[arg(long, default_value_t = 2_000)]
    pub connections: usize,
    /// Seconds to wait for the server to close them.
    #[arg(long, default_value_t = 15)]
    pub wait: u64,
    /// The `redline` binary to start (default: this one), e.g. an older build to compare.
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Extra `redline serve` options, after `--`.
    #[arg(last = true)]
    pub serve_args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// Fixture sizes of ../shared/peers/make_fixture.py to measure.
    #[arg(long, value_delimiter = ',', default_values_t = ["tiny".to_owned(), "small".to_owned()])]
    pub sizes: Vec<String>,
    /// Measured steps (one more runs first, untimed).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 64)]
    pub max_length: usize,
    /// Python virtual environment with TRL (../shared/peers/setup.sh makes one).
    #[arg(long, env = "REDLINE_PEERS_VENV", default_value = ".peers-venv")]
    pub peers_venv: PathBuf,
    /// The peers folder (make_fixture.py, trl_dpo.py).
    #[arg(long, env = "REDLINE_PEERS_DIR", default_value = "../shared/peers")]
    pub peers_dir: PathBuf,
    /// Measure this model (a Hugging Face folder with its train.jsonl) instead of the fixture
    /// sizes, TRL on the same device and in the same precision.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// cpu, cuda or cuda:N (the `cuda` build).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// What Redline computes in; with --model, TRL runs with bf16 autocast or in f32 to match.
    #[arg(long, value_enum, default_value_t)]
    pub dtype: Precision,
    /// Redline alone, no TRL.
    #[arg(long)]
    pub no_trl: bool,
    /// The peak the MFU column is taken against, TFLOP/s (790: an H200's dense bf16 products as
    /// measured on the device machines; the datasheet says 989).
    #[arg(long, default_value_t = 790.0)]
    pub peak_tflops: f64,
}

#[derive(Debug, Args)]
pub struct BenchDeviceArgs {
    /// The device held to the CPU: cuda or cuda:N (cpu runs every part against itself, as a
    /// dry run of the command).
    #[arg(long, default_value = "cuda")]
    pub device: DeviceSpec,
    /// The model of the comparison (f32 logits and DPO steps on both sides).
    #[arg(long, default_value = "trainer/tests/fixtures/tiny-llama")]
    pub fixture: PathBuf,
    /// DPO steps compared.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// The largest difference allowed, relative to the CPU's value (at least 1).
    #[arg(long, default_value_t = 1e-3)]
    pub tolerance: f64,
    /// Vocabulary of the timed top-k metrics (49152: SmolLM2's).
    #[arg(long, default_value_t = 49_152)]
    pub vocab: usize,
    /// Positions (rows of logits) per timed top-k call.
    #[arg(long, default_value_t = 4096)]
    pub rows: usize,
    /// The k of the top-k metrics.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Model to time generation with (none: no generation timing).
    #[arg(long)]
    pub gen_model: Option<PathBuf>,
    /// JSON lines with a `prompt` field each.
    #[arg(
        long,
        default_value = "trainer/tests/fixtures/smollm2/generate_prompts.jsonl"
    )]
    pub gen_prompts: PathBuf,
    /// New tokens per prompt (greedy; fewer where EOS comes first).
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
}

#[derive(Debug, Args)]
pub struct BenchGenerateArgs {
    /// The model both sides generate from (scripts/fetch-smollm2.sh fetches this one).
    #[arg(long, default_value = "target/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")]
    pub model: PathBuf,
    /// JSON lines with a `prompt` field each, already in the model's chat format.
    #[arg(
        long,
        default_value = "trainer/tests/fixtures/smollm2/generate_prompts.jsonl"
    )]
    pub prompts: PathBuf,
    /// New tokens per prompt, fewer where the model ends its answer (EOS) first.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Timed generations per side, taken in turns (one more per side runs first, untimed).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Threads for both sides: candle's pool (`RAYON_NUM_THREADS`) and torch's
    /// [default: RAYON_NUM_THREADS if set, else the cores available].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Python virtual environment with transformers and gguf (../shared/peers/setup.sh makes one).
    #[arg(long, env = "REDLINE_PEERS_VENV", default_value = ".peers-venv")]
    pub peers_venv: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchStore {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Args)]
pub struct BenchTargets {
    /// Stores to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BenchStore::Sqlite, BenchStore::Postgres])]
    pub stores: Vec<BenchStore>,
    /// PostgreSQL to measure (each run makes its own database there). Without it, a throwaway
    /// cluster is started with PostgreSQL's production durability settings.
    #[arg(long, env = "REDLINE_BENCH_DATABASE_URL")]
    pub postgres_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct BenchIngestArgs {
    #[command(flatten)]
    pub targets: BenchTargets,
    /// Steps per request (each step carries --metrics points).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 100, 10_000])]
    pub batch_sizes: Vec<usize>,
    /// Metrics per step.
    #[arg(long, default_value_t = 10)]
    pub metrics: usize,
    /// Points each measurement sends per client (rounded to whole requests).
    #[arg(long, default_value_t = 1_000_000)]
    pub points: usize,
    /// Requests cap per measurement, so batch size 1 stays short.
    #[arg(long, default_value_t = 2_000)]
    pub max_requests: usize,
    /// Rule sets on the benchmark runs; give both to measure what evaluating rules costs.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BenchRules::Presets])]
    pub rules: Vec<BenchRules>,
    /// Concurrent clients for the concurrent variant (each feeds its own run); 0 skips it.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Measurements of each configuration, interleaved across --rules; the median is reported.
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// Python virtual environment with MLflow (../shared/peers/setup.sh makes one). When it
    /// exists, MLflow's tracking server is measured too, with ../shared/peers/mlflow_ingest.py.
    #[arg(long, env = "REDLINE_PEERS_VENV", default_value = ".peers-venv")]
    pub peers_venv: PathBuf,
    /// The peers folder holding mlflow_ingest.py.
    #[arg(long, env = "REDLINE_PEERS_DIR", default_value = "../shared/peers")]
    pub peers_dir: PathBuf,
    /// Requests of 1,000 points sent to MLflow.
    #[arg(long, default_value_t = 20)]
    pub mlflow_requests: usize,
}

#[derive(Debug, Args)]
pub struct BenchDashboardArgs {
    #[command(flatten)]
    pub targets: BenchTargets,
    /// Steps in every series of the run.
    #[arg(long, default_value_t = 1_000_000)]
    pub steps: usize,
    /// Timed requests of each kind (the median and p90 are reported).
    #[arg(long, default_value_t = 21)]
    pub repeats: usize,
}

#[derive(Debug, Args)]
pub struct BenchRunsPageArgs {
    #[command(flatten)]
    pub targets: BenchTargets,
    /// Runs written, and listed on one page (at most 1,000, the page's largest).
    #[arg(long, default_value_t = 1_000)]
    pub runs: usize,
    /// Steps in every series of every run.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Timed requests (the median and p90 are reported).
    #[arg(long, default_value_t = 11)]
    pub repeats: usize,
}

#[derive(Debug, Args)]
pub struct BenchSignalsArgs {
    #[command(flatten)]
    pub targets: BenchTargets,
    /// Rule trips timed per store.
    #[arg(long, default_value_t = 1_000)]
    pub trips: usize,
}

/// The rule sets a benchmark run is created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchRules {
    /// The shipped presets (what every run gets by default).
    Presets,
    /// No rules: ingest alone.
    None,
}

#[derive(Debug, Args)]
pub struct BenchReadArgs {
    #[command(flatten)]
    pub targets: BenchTargets,
    /// Steps in the series read back.
    #[arg(long, default_value_t = 1_000_000)]
    pub steps: usize,
    /// Buckets to downsample to.
    #[arg(long, default_value_t = 1_000)]
    pub buckets: u32,
    /// Timed reads (the median is reported).
    #[arg(long, default_value_t = 21)]
    pub repeats: usize,
}
