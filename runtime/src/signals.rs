//! The signals that stop a Drover process: SIGTERM (Kubernetes) and SIGINT (a person).

use tokio::signal::unix::{Signal, SignalKind, signal};

/// A handler for a stop signal could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("installing the {signal} handler")]
pub struct SignalError {
    signal: &'static str,
    source: std::io::Error,
}

/// SIGTERM and SIGINT, installed at start-up so neither kills the process
/// before it has drained.
#[derive(Debug)]
pub struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl StopSignals {
    /// Installs both handlers.
    pub fn install() -> Result<Self, SignalError> {
        let install = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| SignalError {
                signal: name,
                source,
            })
        };
        Ok(Self {
            terminate: install(SignalKind::terminate(), "SIGTERM")?,
            interrupt: install(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    /// Waits for the next stop signal and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sigterm_is_caught_and_named() {
        let mut signals = StopSignals::install().unwrap();
        // The shell's kill builtin, so the test needs no signal crate.
        let kill = format!("kill -TERM {}", std::process::id());
        let sent = std::process::Command::new("sh")
            .args(["-c", &kill])
            .status()
            .unwrap();
        assert!(sent.success());
        let name = tokio::time::timeout(std::time::Duration::from_secs(5), signals.recv())
            .await
            .unwrap();
        assert_eq!(name, "SIGTERM");
    }
}
