//! Drover's test harness: a real local control plane and Pub/Sub emulator.
//!
//! * [`testenv`] finds or builds the Go binaries (etcd, kube-apiserver,
//!   kube-controller-manager, kubectl, the Pub/Sub emulator).
//! * [`control_plane`] runs etcd, kube-apiserver and kube-controller-manager.
//! * [`pubsub_emulator`] runs the Pub/Sub emulator.
//! * [`node`] runs a real node (containerd, kubelet, kube-proxy) with the
//!   control plane, in namespaces of its own.
//! * [`local_model`] installs and serves a real small LLM (llama.cpp's server).
//! * [`media_server`] serves a directory over HTTP, for media pods must fetch.
//! * [`postgres`] runs a throwaway PostgreSQL server for the Job archive.
//! * [`wav`] writes test audio (16-bit PCM WAV of a signal).
//! * [`process`] is the child-process management they share: logs to files, and
//!   no process ever outlives the test binary.
//!
//! Test binaries normally call [`shared`] to get one environment per binary.
//! Linux only (the process management uses `PR_SET_PDEATHSIG`).

pub mod admission;
pub mod apiserver_metrics;
pub mod certs;
pub mod contenders;
pub mod control_plane;
pub mod drover;
pub mod identity;
pub mod kubelet;
pub mod latency;
pub mod local_model;
pub mod manifests;
pub mod media_server;
pub mod node;
pub mod node_drover;
pub mod observe;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod pubsub_emulator;
pub mod refusals;
pub mod sandbox_archive;
pub mod testenv;
pub mod wait;
pub mod wav;

use std::error::Error;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use control_plane::{ControlPlane, ControlPlaneError};
pub use process::{LogTail, ManagedProcess, ProcessError};
pub use pubsub_emulator::{PubSubEmulator, PubSubEmulatorError};
pub use testenv::{TestEnvBinaries, TestEnvError, ensure_built};

/// Prefix of the per-process state directories [`shared`] creates in the system temp dir.
const SHARED_STATE_PREFIX: &str = "drover-e2e-";

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.join(".."), Path::to_path_buf)
}

/// The directory of Drover's CustomResourceDefinition manifests.
pub fn crds_dir() -> PathBuf {
    workspace_root().join("crds")
}

#[derive(Debug, thiserror::Error)]
pub enum TestEnvStartError {
    #[error("cannot get the test environment binaries")]
    Binaries(#[from] TestEnvError),
    #[error("cannot start the control plane")]
    ControlPlane(#[source] ControlPlaneError),
    #[error("cannot install Drover's CRDs from {}", dir.display())]
    Crds {
        dir: PathBuf,
        #[source]
        source: ControlPlaneError,
    },
    #[error("cannot start the Pub/Sub emulator")]
    PubSub(#[from] PubSubEmulatorError),
}

/// A control plane with Drover's CRDs installed, and a Pub/Sub emulator.
#[derive(Debug)]
pub struct TestEnv {
    pub control_plane: ControlPlane,
    pub pubsub: PubSubEmulator,
    pub binaries: TestEnvBinaries,
}

impl TestEnv {
    /// Builds or finds the binaries, starts the control plane and the emulator
    /// with their state in `state_dir`, and installs the CRDs from [`crds_dir`].
    ///
    /// The binary lookup is blocking (and a cold build takes many minutes); it
    /// runs on the calling task, which is what a test wants anyway.
    pub async fn start(
        state_dir: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Self, TestEnvStartError> {
        let started = Instant::now();
        let binaries = ensure_built(progress)?;
        let binaries_ready = started.elapsed();

        let control_plane = ControlPlane::start(&binaries, state_dir)
            .await
            .map_err(TestEnvStartError::ControlPlane)?;
        progress(&format!(
            "control plane ready in {:.1} s at {}",
            control_plane.startup_duration().as_secs_f64(),
            control_plane.server_url()
        ));
        let crds_dir = crds_dir();
        let crds = control_plane
            .install_crds(&crds_dir)
            .await
            .map_err(|source| TestEnvStartError::Crds {
                dir: crds_dir.clone(),
                source,
            })?;
        if crds.is_empty() {
            progress(&format!(
                "no CRD manifests in {} yet; installed none",
                crds_dir.display()
            ));
        } else {
            progress(&format!("installed CRDs: {}", crds.join(", ")));
        }
        let pubsub = PubSubEmulator::start(&binaries.pubsub_emulator, state_dir, None).await?;
        progress(&format!(
            "test environment ready in {:.1} s ({:.1} s for the binaries); state and logs in {}",
            started.elapsed().as_secs_f64(),
            binaries_ready.as_secs_f64(),
            state_dir.display()
        ));
        Ok(Self {
            control_plane,
            pubsub,
            binaries,
        })
    }
}

/// The test binary's environment, started on first use and shared by all its
/// tests (each test isolates itself with [`ControlPlane::create_namespace`]).
///
/// Panics with the full error if the environment cannot be started — a missing
/// Go toolchain included: these tests must fail loudly, never skip.
///
/// The environment is never dropped; its processes die with the test binary
/// (see [`process`]). Its state directory, `<tmp>/drover-e2e-<pid>`, is kept for
/// post-mortems and removed by a later run once the pid is dead.
pub async fn shared() -> &'static TestEnv {
    // The error is stored (as text) so that every test fails with it, rather than
    // each one retrying a build or start-up that just failed.
    static SHARED: tokio::sync::OnceCell<Result<TestEnv, String>> =
        tokio::sync::OnceCell::const_new();
    let env = SHARED
        .get_or_init(|| async {
            let state_dir =
                std::env::temp_dir().join(format!("{SHARED_STATE_PREFIX}{}", std::process::id()));
            remove_stale_state_dirs(SHARED_STATE_PREFIX);
            let mut progress = |line: &str| report(line);
            TestEnv::start(&state_dir, &mut progress)
                .await
                .map_err(|e| error_chain(&e))
        })
        .await;
    match env {
        Ok(env) => env,
        Err(message) => panic!("drover-e2e: the test environment could not be started: {message}"),
    }
}

/// Writes a harness status line to stderr. Not `eprintln!`: libtest captures
/// that per test, and a multi-minute build must be visible while it runs.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "drover-e2e: {line}");
}

/// Removes the `<prefix><pid>` state directories in the temp dir of
/// earlier test processes that are gone.
pub(crate) fn remove_stale_state_dirs(prefix: &str) {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|pid| pid.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        if pid != 0 && !process_exists(pid) {
            // Best effort: a directory we cannot remove only costs disk space.
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn process_exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    // EPERM: it exists but belongs to someone else.
    alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// `error: cause: cause…`, one per line, with every source in the chain.
pub fn error_chain(error: &dyn Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str("\n  caused by: ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
