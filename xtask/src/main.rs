//! `cargo xtask test [-- <cargo test args>]` installs what the tests need and
//! runs them; `cargo xtask ci` checks format and lints first. This is the one
//! place that knows what the tests need; `.ci/run` only calls it.

mod cli;
mod packages;
mod path;
mod process;
mod steps;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use cli::Command;

fn main() -> ExitCode {
    let (task, cargo_test_args) = match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Run {
            task,
            cargo_test_args,
        }) => (task, cargo_test_args),
        Ok(Command::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("xtask: {err}");
            return ExitCode::from(2);
        }
    };
    // The xtask crate sits one level below the workspace root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut ctx = steps::Context {
        root,
        path: std::env::var_os("PATH").unwrap_or_default(),
        cargo: std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")),
        cargo_test_args,
        // CI builds a clean clone once.
        incremental: !matches!(task, cli::Task::Ci),
    };
    let started = Instant::now();
    let outcome = steps::run_all(&steps::for_task(task), &mut ctx);
    let took = started.elapsed().as_secs_f64();
    match outcome {
        Ok(()) => {
            steps::say(&format!("{} finished in {took:.1} s", task.as_str()));
            ExitCode::SUCCESS
        }
        Err((step, err)) => {
            steps::say(&format!(
                "{} failed at step `{step}` after {took:.1} s: {err}",
                task.as_str()
            ));
            ExitCode::FAILURE
        }
    }
}
