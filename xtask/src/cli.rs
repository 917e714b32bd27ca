//! The command line: `cargo xtask <test|ci> [-- <cargo test args>]`.

use std::fmt;

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run a task; `cargo_test_args` are passed on to `cargo test`.
    Run {
        task: Task,
        cargo_test_args: Vec<String>,
    },
    /// Print the usage.
    Help,
}

/// The tasks the xtask knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Install what the tests need, then `cargo test --workspace`.
    Test,
    /// `cargo fmt --check`, clippy with `-D warnings`, then the same as `test`.
    Ci,
}

impl Task {
    /// The name the user types.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Test => "test",
            Task::Ci => "ci",
        }
    }
}

/// A command line that does not fit [`USAGE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n\n{USAGE}", self.0)
    }
}

impl std::error::Error for UsageError {}

/// What `cargo xtask help` prints.
pub const USAGE: &str = "\
usage: cargo xtask <task> [-- <cargo test args>]

tasks:
  test   install what the tests need (Debian's prometheus, ffmpeg and espeak-ng
         when a command is missing; Go on PATH; the Go-built test control plane,
         Pub/Sub emulator and helm, cached in ~/.cache/drover), then run
         `cargo test --workspace` with the arguments after `--`
  ci     `cargo fmt --all --check`, `cargo clippy --workspace --all-targets -- -D warnings`,
         then the same as `test`
  help   print this

examples:
  cargo xtask test
  cargo xtask test -- -p drover-crds
  cargo xtask test -- -p drover-e2e --test jobs -- --nocapture";

/// Parses the arguments after the program name.
pub fn parse<I>(args: I) -> Result<Command, UsageError>
where
    I: IntoIterator<Item = String>,
{
    let mut args = args.into_iter();
    let task = match args.next().as_deref() {
        Some("test") => Task::Test,
        Some("ci") => Task::Ci,
        Some("help" | "-h" | "--help") => return Ok(Command::Help),
        Some(other) => return Err(UsageError(format!("unknown task `{other}`"))),
        None => return Err(UsageError("no task given".into())),
    };
    match args.next().as_deref() {
        None => Ok(Command::Run {
            task,
            cargo_test_args: Vec::new(),
        }),
        Some("--") => Ok(Command::Run {
            task,
            cargo_test_args: args.collect(),
        }),
        Some("-h" | "--help") => Ok(Command::Help),
        Some(other) => Err(UsageError(format!(
            "unexpected argument `{other}`: arguments for cargo test go after `--`"
        ))),
    }
}

/// The arguments of the `cargo test` run: the whole workspace unless the
/// user picked packages (`-p` and `--workspace` together would run everything).
pub fn cargo_test_args(extra: &[String]) -> Vec<String> {
    let mut args = vec!["test".to_owned()];
    if !selects_packages(extra) {
        args.push("--workspace".to_owned());
    }
    args.extend(extra.iter().cloned());
    args
}

/// Whether cargo's own arguments (those before a second `--`, which go to
/// the test binaries) choose packages.
fn selects_packages(extra: &[String]) -> bool {
    extra
        .iter()
        .take_while(|arg| *arg != "--")
        .any(|arg| arg.starts_with("-p") || arg == "--package" || arg.starts_with("--package="))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn test_alone_passes_nothing_on() {
        assert_eq!(
            parse(args("test")),
            Ok(Command::Run {
                task: Task::Test,
                cargo_test_args: vec![]
            })
        );
    }

    #[test]
    fn everything_after_the_separator_goes_to_cargo_test() {
        assert_eq!(
            parse(args("ci -- -p drover-e2e --test jobs -- --nocapture")),
            Ok(Command::Run {
                task: Task::Ci,
                cargo_test_args: args("-p drover-e2e --test jobs -- --nocapture"),
            })
        );
    }

    #[test]
    fn an_argument_before_the_separator_is_refused() {
        let err = parse(args("test -p drover-crds")).unwrap_err();
        assert!(err.0.contains("after `--`"), "{err}");
    }

    #[test]
    fn unknown_and_missing_tasks_are_refused_with_the_usage() {
        let unknown = parse(args("bench")).unwrap_err();
        assert!(unknown.0.contains("`bench`"));
        assert!(unknown.to_string().contains("usage: cargo xtask"));
        assert_eq!(parse(args("")).unwrap_err().0, "no task given");
    }

    #[test]
    fn help_is_asked_for_in_three_ways() {
        for line in ["help", "--help", "test --help"] {
            assert_eq!(parse(args(line)), Ok(Command::Help), "{line}");
        }
    }

    #[test]
    fn without_package_arguments_the_whole_workspace_is_tested() {
        assert_eq!(
            cargo_test_args(&args("--test jobs")),
            args("test --workspace --test jobs")
        );
        assert_eq!(cargo_test_args(&[]), args("test --workspace"));
    }

    #[test]
    fn a_chosen_package_replaces_the_workspace() {
        for extra in [
            "-p drover-crds",
            "-pdrover-crds",
            "--package drover-crds",
            "--package=drover-crds",
        ] {
            assert_eq!(
                cargo_test_args(&args(extra)),
                [&["test".to_owned()][..], &args(extra)].concat(),
                "{extra}"
            );
        }
    }

    #[test]
    fn a_test_binary_argument_that_looks_like_a_package_does_not_count() {
        assert_eq!(
            cargo_test_args(&args("-- -pfoo")),
            args("test --workspace -- -pfoo")
        );
    }
}
