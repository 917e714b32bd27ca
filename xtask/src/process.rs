//! Running the commands a step needs, with errors that say which one failed.

use std::fmt;
use std::process::{Command, ExitStatus, Stdio};

/// Why a step failed.
#[derive(Debug)]
pub enum Error {
    /// A command could not be started at all.
    Spawn {
        what: String,
        source: std::io::Error,
    },
    /// A command ran and failed.
    Failed { what: String, status: ExitStatus },
    /// Something the step needs is not on the machine, with what to do about it.
    Missing(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Spawn { what, source } => write!(f, "cannot start {what}: {source}"),
            Error::Failed { what, status } => write!(f, "{what} failed ({status})"),
            Error::Missing(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Runs `command` with its output on the terminal; `what` names it in errors.
pub fn run(what: &str, command: &mut Command) -> Result<(), Error> {
    check(what, command.status())
}

/// Runs `command` with its standard output thrown away (apt-get's progress
/// lines); errors still reach the terminal.
pub fn run_quiet(what: &str, command: &mut Command) -> Result<(), Error> {
    check(what, command.stdout(Stdio::null()).status())
}

/// A command from an argv line, which must not be empty.
pub fn from_line(line: &[String]) -> Command {
    let (program, args) = line.split_first().expect("an argv line names a program");
    let mut command = Command::new(program);
    command.args(args);
    command
}

fn check(what: &str, status: std::io::Result<ExitStatus>) -> Result<(), Error> {
    match status {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(Error::Failed {
            what: what.to_owned(),
            status,
        }),
        Err(source) => Err(Error::Spawn {
            what: what.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_command_is_an_error_that_names_it() {
        let err = run("false", &mut Command::new("false")).unwrap_err();
        assert!(matches!(err, Error::Failed { .. }));
        assert!(err.to_string().starts_with("false failed"), "{err}");
    }

    #[test]
    fn a_command_that_does_not_exist_cannot_start() {
        let err = run("nothing", &mut Command::new("/nonexistent/xtask-test")).unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }), "{err}");
    }

    #[test]
    fn a_succeeding_command_is_ok() {
        let line = ["true".to_owned()];
        assert!(run_quiet("true", &mut from_line(&line)).is_ok());
    }
}
