//! The Pub/Sub emulator (Google's pstest fake behind a real gRPC listener), which
//! Drover's worker and operator reach exactly as they would reach Google's
//! emulator: through `PUBSUB_EMULATOR_HOST`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::ports;
use crate::process::{DEFAULT_GRACE, ManagedProcess, ProcessError};

/// The line the emulator prints once it is serving (see e2e/testenv/cmd/pubsub-emulator).
/// What the emulator prints once it serves.
pub(crate) const READY_LINE: &str = "pubsub-emulator listening on";
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum PubSubEmulatorError {
    #[error("cannot create the emulator's state directory {}", path.display())]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find a free loopback port for the Pub/Sub emulator")]
    Port(#[source] std::io::Error),
    #[error("cannot start the Pub/Sub emulator")]
    Process(#[from] ProcessError),
}

/// A running emulator on a fixed loopback port. Its state lives only in memory:
/// stopping it loses every topic, subscription and message. Dropping it stops it.
#[derive(Debug)]
pub struct PubSubEmulator {
    bin: PathBuf,
    log_path: PathBuf,
    port: u16,
    // Behind a mutex so that `restart` works through a shared reference (the
    // per-binary environment is a `&'static`); `Arc` so that callers can hold the
    // process without holding the lock.
    process: Mutex<Arc<ManagedProcess>>,
}

impl PubSubEmulator {
    /// Starts the emulator on `127.0.0.1:port` (a free port if `None`) with its
    /// log in `state_dir`, and returns once it is serving.
    pub async fn start(
        bin: &Path,
        state_dir: &Path,
        port: Option<u16>,
    ) -> Result<Self, PubSubEmulatorError> {
        fs::create_dir_all(state_dir).map_err(|source| PubSubEmulatorError::StateDir {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let port = match port {
            Some(port) => port,
            None => ports::free_loopback_ports(1)
                .map_err(PubSubEmulatorError::Port)?
                .first()
                .copied()
                .ok_or_else(|| {
                    PubSubEmulatorError::Port(std::io::Error::other("no port returned"))
                })?,
        };
        let log_path = state_dir.join("pubsub-emulator.log");
        let process = launch(bin, &log_path, port).await?;
        Ok(Self {
            bin: bin.to_path_buf(),
            log_path,
            port,
            process: Mutex::new(process),
        })
    }

    /// The value for `PUBSUB_EMULATOR_HOST`: `127.0.0.1:<port>`.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The current emulator process (e.g. for [`ManagedProcess::kill_hard`]).
    pub fn process(&self) -> Arc<ManagedProcess> {
        Arc::clone(&self.lock())
    }

    /// Stops the emulator and starts a new one on the same port: clients see
    /// the connection drop and, on reconnecting, an emulator that has lost every
    /// topic, subscription and message.
    ///
    /// The emulator of the shared per-binary environment is used by every test
    /// of that binary; a test that restarts it should start its own instead.
    pub async fn restart(&self) -> Result<(), PubSubEmulatorError> {
        // Stop first: the new process needs the port. The lock is not held across
        // the await below.
        self.lock().stop(DEFAULT_GRACE);
        let process = launch(&self.bin, &self.log_path, self.port).await?;
        *self.lock() = process;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Arc<ManagedProcess>> {
        // Replacing the Arc is the only mutation; a poisoned lock still holds a valid one.
        self.process
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

async fn launch(
    bin: &Path,
    log_path: &Path,
    port: u16,
) -> Result<Arc<ManagedProcess>, ProcessError> {
    let mut cmd = Command::new(bin);
    cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
    let process = ManagedProcess::spawn("pubsub-emulator", cmd, log_path)?;
    process.wait_for_line(READY_LINE, START_TIMEOUT).await?;
    Ok(Arc::new(process))
}
