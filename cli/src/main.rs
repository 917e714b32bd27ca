//! `kubectl-drover`: the kubectl plugin for Drover Jobs and fleets.

mod args;
mod cluster;
mod commands;
mod dlq;
mod fleet;
mod history;
mod logs;
mod render;
mod timeline;
mod watch;

use std::process::ExitCode;

use clap::Parser as _;

use args::{Cli, Command, DlqCommand};
use cluster::Target;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let target = Target::connect(cli).await?;
    match &cli.command {
        Command::Submit(args) => commands::submit(&target, args).await,
        Command::Get(args) => commands::get(&target, args).await,
        Command::Describe { job } => commands::describe(&target, job).await,
        Command::Logs(args) => commands::logs(&target, args).await,
        Command::Cancel { job } => commands::cancel(&target, job).await,
        Command::Retry(args) => commands::retry(&target, args).await,
        Command::Resubmit(args) => commands::resubmit(&target, args).await,
        Command::Dlq(DlqCommand::List(args)) => dlq::list(&target, args).await,
        Command::Dlq(DlqCommand::Replay(args)) => dlq::replay(&target, args).await,
        Command::Fleet(args) => commands::fleets(&target, args).await,
        Command::History(args) => history::history(&target, args).await,
    }
}
