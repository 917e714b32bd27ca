//! A container run as a local process: how it is launched, how its exit is
//! noticed, and how an exit is described in the Pod's status.

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, ContainerStateTerminated};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::io::unix::AsyncFd;

use super::env::Env;
use super::expansion::expand;
use crate::process::{ManagedProcess, ProcessError};

/// The PATH a process gets when the kubelet itself has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How often the exit is polled where `pidfd_open` is unavailable.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// The arguments after the executable.
///
/// The image map stands for an image's entrypoint, so `command[0]` (a path
/// inside the image, which does not exist on this machine) is replaced by the
/// mapped executable and the rest of `command` and all of `args` follow. With no
/// `command` the image's entrypoint gets `args`. Both are `$(VAR)`-expanded
/// against the container's environment, as the kubelet does.
pub(crate) fn arguments(container: &Container, env: &Env) -> Vec<String> {
    let expand_all = |items: &[String]| -> Vec<String> {
        items
            .iter()
            .map(|item| expand(item, |name| env.get(name)))
            .collect()
    };
    let command = container.command.as_deref().unwrap_or_default();
    let args = container.args.as_deref().unwrap_or_default();
    let mut argv = expand_all(command.get(1..).unwrap_or_default());
    argv.extend(expand_all(args));
    argv
}

/// Everything a process needs to start.
pub(crate) struct Launch<'a> {
    /// For messages and the log header.
    pub name: String,
    pub program: &'a Path,
    pub args: Vec<String>,
    pub env: &'a Env,
    pub workdir: &'a Path,
    pub log: &'a Path,
}

/// A running container process. Dropping it kills the process group at once:
/// graceful stops are explicit ([`Self::signal`], then waiting for
/// [`Self::exited`]), so a drop only happens when the kubelet itself goes away.
pub(crate) struct ContainerProcess {
    process: Arc<ManagedProcess>,
    exit: ExitWatch,
    started_at: Timestamp,
    started: Instant,
}

impl ContainerProcess {
    /// Starts the process with a clean environment: PATH and HOME (the pod's
    /// directory) unless the container defines them, plus its own variables.
    pub(crate) fn launch(launch: Launch<'_>) -> Result<Self, ProcessError> {
        let mut command = Command::new(launch.program);
        command
            .args(&launch.args)
            .current_dir(launch.workdir)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| OsString::from(DEFAULT_PATH)),
            )
            .env("HOME", launch.workdir);
        for (name, value) in launch.env.iter() {
            command.env(name, value);
        }
        let process = ManagedProcess::spawn(&launch.name, command, launch.log)?;
        // Opened before anyone else can reap the child (the registry only sees it
        // afterwards), so the pid cannot have been reused by then.
        let exit = ExitWatch::open(process.pid());
        Ok(Self {
            process: Arc::new(process),
            exit,
            started_at: Timestamp::now(),
            started: Instant::now(),
        })
    }

    pub(crate) fn process(&self) -> &Arc<ManagedProcess> {
        &self.process
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub(crate) fn started_at(&self) -> Timestamp {
        self.started_at
    }

    /// How long the process has been (or was) running.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Sends `signal` to the process group without waiting.
    pub(crate) fn signal(&self, signal: libc::c_int) {
        self.process.signal(signal);
    }

    /// Resolves when the process has exited (it is reaped then). Cancel-safe, so
    /// it can sit in a `select!` loop.
    pub(crate) async fn exited(&self) -> ExitStatus {
        loop {
            if let Some(status) = self.process.exit_status() {
                return status;
            }
            match &self.exit {
                ExitWatch::PidFd(fd) => match fd.readable().await {
                    // Readable means the process has exited: the next check reaps it.
                    Ok(mut guard) => {
                        if self.process.exit_status().is_none() {
                            guard.clear_ready();
                        }
                    }
                    Err(_) => tokio::time::sleep(EXIT_POLL).await,
                },
                ExitWatch::Poll => tokio::time::sleep(EXIT_POLL).await,
            }
        }
    }
}

impl Drop for ContainerProcess {
    fn drop(&mut self) {
        self.process.kill_hard();
    }
}

/// How the exit of a process is noticed: a pidfd becomes readable when the
/// process exits (Linux 5.3+), which costs nothing while it runs; polling is the
/// fallback where the syscall is missing or filtered.
enum ExitWatch {
    PidFd(AsyncFd<OwnedFd>),
    Poll,
}

impl ExitWatch {
    /// Must be called within a tokio runtime (the pidfd is registered with it).
    fn open(pid: u32) -> Self {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return Self::Poll;
        };
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let Ok(fd) = i32::try_from(fd) else {
            return Self::Poll;
        };
        if fd < 0 {
            return Self::Poll;
        }
        // SAFETY: the syscall just returned this fd, and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open (and is the same
        // descriptor) until the AsyncFd drops it.
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_or(Self::Poll, Self::PidFd)
    }
}

/// The `terminated` state for an exit, as a container runtime reports it: a
/// death by signal N is exit code 128 + N.
pub(crate) fn terminated(
    status: ExitStatus,
    pid: u32,
    started_at: Timestamp,
    finished_at: Timestamp,
) -> ContainerStateTerminated {
    let (exit_code, signal) = match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(signal)) => (128 + signal, Some(signal)),
        (None, None) => (128, None),
    };
    ContainerStateTerminated {
        container_id: Some(container_id(pid)),
        exit_code,
        signal,
        reason: Some(if exit_code == 0 { "Completed" } else { "Error" }.to_owned()),
        started_at: Some(Time(started_at)),
        finished_at: Some(Time(finished_at)),
        message: None,
    }
}

/// The container ID shown in the status: there is no runtime, so the pid.
pub(crate) fn container_id(pid: u32) -> String {
    format!("process://{pid}")
}

/// The image ID shown in the status: the executable the image maps to.
pub(crate) fn image_id(program: &Path) -> String {
    format!("process://{}", program.display())
}

/// The per-pod directory layout under the kubelet's state directory.
pub(crate) struct PodDirs {
    /// The process's working directory and HOME.
    pub workdir: PathBuf,
    /// stdout and stderr of every run, appended.
    pub log: PathBuf,
}

impl PodDirs {
    pub(crate) fn new(
        state_dir: &Path,
        namespace: &str,
        name: &str,
        uid: &str,
        container: &str,
    ) -> Self {
        // The uid keeps a recreated pod of the same name (StatefulSets) apart.
        let workdir = state_dir
            .join("pods")
            .join(format!("{namespace}_{name}_{uid}"));
        let log = workdir.join(format!("{container}.log"));
        Self { workdir, log }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(spec: serde_json::Value) -> Container {
        serde_json::from_value(spec).expect("container")
    }

    fn env() -> Env {
        let mut env = Env::default();
        env.set("PORT", "8080".into());
        env
    }

    #[test]
    fn command_zero_is_the_image_entrypoint() {
        let c = container(json!({
            "name": "w", "image": "w",
            "command": ["/usr/bin/worker", "serve", "--port=$(PORT)"],
            "args": ["--verbose", "$(MISSING)"],
        }));
        assert_eq!(
            arguments(&c, &env()),
            ["serve", "--port=8080", "--verbose", "$(MISSING)"]
        );
    }

    #[test]
    fn args_alone_go_to_the_entrypoint() {
        let c = container(json!({"name": "w", "image": "w", "args": ["--port", "$(PORT)"]}));
        assert_eq!(arguments(&c, &env()), ["--port", "8080"]);
        let bare = container(json!({"name": "w", "image": "w"}));
        assert!(arguments(&bare, &env()).is_empty());
    }

    #[test]
    fn a_signal_death_is_128_plus_the_signal() {
        let now = Timestamp::now();
        let killed = terminated(ExitStatus::from_raw(libc::SIGKILL), 42, now, now);
        assert_eq!((killed.exit_code, killed.signal), (137, Some(9)));
        assert_eq!(killed.reason.as_deref(), Some("Error"));
        assert_eq!(killed.container_id.as_deref(), Some("process://42"));
        let ok = terminated(ExitStatus::from_raw(0), 42, now, now);
        assert_eq!((ok.exit_code, ok.reason.as_deref()), (0, Some("Completed")));
        let failed = terminated(ExitStatus::from_raw(3 << 8), 42, now, now);
        assert_eq!((failed.exit_code, failed.signal), (3, None));
    }
}
