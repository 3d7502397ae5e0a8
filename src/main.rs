//! `redline`: one command-line program for the server, its tokens and its benchmarks.

mod bench;
mod cli;
mod commands;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    commands::init_logging(&cli.log, cli.log_format);
    if let cli::Command::Train(cmd) = cli.command {
        return commands::train(cmd);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(commands::run(cli.command))
}
