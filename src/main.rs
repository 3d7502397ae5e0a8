//! `redline`: one command-line program for the server, its tokens and its benchmarks.

mod bench;
mod cli;
mod commands;
mod demo;
mod manage;
mod run_log;
mod study;

use clap::Parser;

/// Training allocates and frees thousands of tensors per step; glibc's malloc returns large
/// blocks to the OS each time (mmap/munmap, page faults, TLB shootdowns), mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = cli::Cli::parse();
    commands::init_logging(cli.log_filter(), cli.log_format);
    // Training uses blocking HTTP on its own threads: it runs outside the async runtime.
    match cli.command {
        cli::Command::Train(cmd) => return commands::train(cmd),
        cli::Command::Push(args) => return commands::push(&args),
        // The trainer runs on this thread; the demo keeps its own runtime for the server.
        cli::Command::Demo(args) => demo::run(&args)?,
        cli::Command::Study(args) => study::run(&args)?,
        cli::Command::Metrics(args) => commands::metrics(&args)?,
        cli::Command::Bench(cli::BenchCommand::Train(args)) => bench::train::run(&args)?,
        cli::Command::Bench(cli::BenchCommand::Device(args)) => bench::device::run(&args)?,
        cli::Command::Bench(cli::BenchCommand::Generate(args)) => bench::generate::run(&args)?,
        cli::Command::Bench(cli::BenchCommand::TrlMetrics(args)) => bench::trl_metrics::run(&args)?,
        command => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(commands::run(command))?;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
