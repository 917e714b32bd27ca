//! Child processes of the harness (etcd, kube-apiserver, the emulator, workers…)
//! that can never outlive the test process.
//!
//! Two mechanisms work together:
//! * `Drop` stops the child's whole process group politely (SIGTERM, a grace
//!   period, then SIGKILL) and reaps it.
//! * For the cases where `Drop` never runs — a `static` environment shared by a
//!   test binary, `panic = "abort"`, the test binary being SIGKILLed — every child
//!   asks the kernel for `PR_SET_PDEATHSIG(SIGKILL)`. That signal fires when the
//!   *thread* that forked the child exits, not the process, so all children are
//!   forked by one dedicated spawner thread that lives as long as the process.
//!   Forking from a tokio worker or a libtest test thread would kill the child as
//!   soon as that thread finished, i.e. at the end of the first test.
//!
//! Output (stdout and stderr) is appended to a log file, which is also how
//! readiness lines are detected and how failures are explained.

#[cfg(not(target_os = "linux"))]
compile_error!("drover-e2e's process management relies on Linux's PR_SET_PDEATHSIG");

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// How long `Drop` waits after SIGTERM before it sends SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// How many bytes at the end of a log file `log_tail` looks at.
const TAIL_WINDOW: u64 = 64 * 1024;
const POLL_INTERVAL: Duration = Duration::from_millis(25);

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot open log file {path}")]
    LogFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the harness's spawner thread is not available: {0}")]
    Spawner(String),
    #[error("cannot start {name} ({program})")]
    Spawn {
        name: String,
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("{name} exited ({status}) before it printed {needle:?}\n{log}")]
    ExitedEarly {
        name: String,
        needle: String,
        status: String,
        log: LogTail,
    },
    #[error("{name} did not print {needle:?} within {timeout:?}\n{log}")]
    Timeout {
        name: String,
        needle: String,
        timeout: Duration,
        log: LogTail,
    },
}

/// The last lines of a process's log, for error messages.
#[derive(Debug, Clone)]
pub struct LogTail {
    pub path: PathBuf,
    pub text: String,
}

impl fmt::Display for LogTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "--- last lines of {} ---", self.path.display())?;
        write!(f, "{}", self.text.trim_end())?;
        write!(f, "\n--- end of {} ---", self.path.display())
    }
}

/// A running child process with its own process group and log file.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    pid: u32,
    log_path: PathBuf,
    /// Length of the log when this process was started: the log is appended to
    /// across restarts, and readiness lines must come from this run.
    log_start: u64,
    child: Mutex<Child>,
}

struct SpawnRequest {
    command: Command,
    reply: mpsc::SyncSender<io::Result<Child>>,
}

/// The never-exiting thread that forks every child (see the module docs for why).
fn spawner() -> Result<&'static mpsc::Sender<SpawnRequest>, ProcessError> {
    static SPAWNER: OnceLock<Result<mpsc::Sender<SpawnRequest>, String>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            thread::Builder::new()
                .name("drover-e2e-spawner".into())
                .spawn(move || {
                    // The sender lives in a static and is never dropped, so this loop
                    // (and the thread the children's PDEATHSIG is tied to) never ends.
                    for mut request in rx {
                        // The requester may have given up; nothing to do then.
                        let _ = request.reply.send(request.command.spawn());
                    }
                })
                .map(|_| tx)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| ProcessError::Spawner(e.clone()))
}

impl ManagedProcess {
    /// Starts `command` as `name` (used in messages), with stdin closed and
    /// stdout/stderr appended to `log_path`.
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> Result<Self, ProcessError> {
        let log_err = |source| ProcessError::LogFile {
            path: log_path.to_path_buf(),
            source,
        };
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(log_err)?;
        let program = command.get_program().to_string_lossy().into_owned();
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        // A header separates runs when a process is restarted into the same log.
        writeln!(
            log,
            "==== drover-e2e: starting {name}: {program} {}",
            args.join(" ")
        )
        .map_err(log_err)?;
        let log_start = log.metadata().map_err(log_err)?.len();
        let stderr_log = log.try_clone().map_err(log_err)?;

        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr_log))
            // Own process group, so stopping it also reaches anything it forked.
            .process_group(0);
        kill_when_parent_thread_exits(&mut command);

        let (reply, response) = mpsc::sync_channel(1);
        spawner()?
            .send(SpawnRequest { command, reply })
            .map_err(|_| ProcessError::Spawner("its channel is closed".into()))?;
        let child = response
            .recv()
            .map_err(|_| ProcessError::Spawner("it dropped the request".into()))?
            .map_err(|source| ProcessError::Spawn {
                name: name.to_owned(),
                program: program.clone(),
                source,
            })?;
        tracing::debug!(name, pid = child.id(), log = %log_path.display(), "started process");
        Ok(Self {
            name: name.to_owned(),
            pid: child.id(),
            log_path: log_path.to_path_buf(),
            log_start,
            child: Mutex::new(child),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Whether the process is still alive (reaps it if it has exited).
    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// The exit status, if the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        // An error from waitpid means the child is gone (already reaped elsewhere),
        // which for every caller is the same as having exited.
        match self.lock_child().try_wait() {
            Ok(status) => status,
            Err(_) => Some(ExitStatus::from_raw(0)),
        }
    }

    /// Waits until the process prints a line containing `needle` and returns that
    /// line. Fails early, with the log's tail, if the process exits first.
    pub async fn wait_for_line(
        &self,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, ProcessError> {
        let deadline = Instant::now() + timeout;
        let mut offset = self.log_start;
        let mut pending = String::new();
        loop {
            // Check for exit before reading, so output written just before the
            // process exited is still searched once more.
            let exited = self.exit_status();
            if let Some(line) = self.scan_new_lines(&mut offset, &mut pending, needle) {
                return Ok(line);
            }
            if let Some(status) = exited {
                return Err(ProcessError::ExitedEarly {
                    name: self.name.clone(),
                    needle: needle.to_owned(),
                    status: describe_status(status),
                    log: self.log_tail(40),
                });
            }
            if Instant::now() >= deadline {
                return Err(ProcessError::Timeout {
                    name: self.name.clone(),
                    needle: needle.to_owned(),
                    timeout,
                    log: self.log_tail(40),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Reads what was appended to the log since `offset` and returns the first
    /// complete line containing `needle`. `pending` carries a partial last line
    /// over to the next call.
    fn scan_new_lines(
        &self,
        offset: &mut u64,
        pending: &mut String,
        needle: &str,
    ) -> Option<String> {
        let mut file = File::open(&self.log_path).ok()?;
        file.seek(SeekFrom::Start(*offset)).ok()?;
        let mut bytes = Vec::new();
        let read = file.read_to_end(&mut bytes).ok()?;
        *offset += read as u64;
        pending.push_str(&String::from_utf8_lossy(&bytes));
        let complete = pending.rfind('\n').map_or(0, |i| i + 1);
        let found = pending[..complete]
            .lines()
            .find(|line| line.contains(needle))
            .map(str::to_owned);
        pending.drain(..complete);
        found
    }

    /// The last `lines` lines of the log (of this run and earlier ones).
    pub fn log_tail(&self, lines: usize) -> LogTail {
        log_tail(&self.log_path, lines)
    }

    /// Stops the process group: SIGTERM, up to `grace` for it to exit, then
    /// SIGKILL; always reaps. Does nothing if the process has already exited.
    pub fn stop(&self, grace: Duration) {
        let mut child = self.lock_child();
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        self.signal_group(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(POLL_INTERVAL);
        }
        tracing::warn!(name = %self.name, pid = self.pid, ?grace, "process ignored SIGTERM; killing it");
        self.signal_group(libc::SIGKILL);
        let _ = child.wait();
    }

    /// Kills the process group with SIGKILL at once and reaps it: a crash, as
    /// far as everyone talking to the process can tell.
    pub fn kill_hard(&self) {
        let mut child = self.lock_child();
        if matches!(child.try_wait(), Ok(None)) {
            self.signal_group(libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Sends `signal` to the process group without waiting for anything (the
    /// process kubelet runs its own grace period while watching for the exit).
    /// Does nothing once the process has exited.
    pub fn signal(&self, signal: libc::c_int) {
        let mut child = self.lock_child();
        if matches!(child.try_wait(), Ok(None)) {
            self.signal_group(signal);
        }
    }

    /// Only called while the child is known to be unreaped, so the group id
    /// (= the child's pid) cannot have been reused by an unrelated process.
    fn signal_group(&self, signal: libc::c_int) {
        let Ok(pgid) = libc::pid_t::try_from(self.pid) else {
            return;
        };
        // SAFETY: killpg has no memory-safety preconditions. ESRCH (the group is
        // already gone) is fine to ignore.
        unsafe {
            libc::killpg(pgid, signal);
        }
    }

    fn lock_child(&self) -> MutexGuard<'_, Child> {
        // A panic while holding the lock cannot leave `Child` inconsistent.
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.stop(DEFAULT_GRACE);
    }
}

/// Makes the child of `command` receive SIGKILL when the thread that spawns it
/// exits (PR_SET_PDEATHSIG), which covers the whole process dying in any way.
/// Only sound for threads that outlive the child on purpose: the spawner thread,
/// or a thread that blocks until the child has exited.
pub(crate) fn kill_when_parent_thread_exits(command: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls (prctl, getppid); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) == -1
            {
                return Err(io::Error::last_os_error());
            }
            // If the parent died between fork and prctl, the death signal was
            // armed too late: bail out instead of running orphaned.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// The last `lines` lines of the file at `path` (only its final 64 KiB are read,
/// since apiserver logs grow large).
pub fn log_tail(path: &Path, lines: usize) -> LogTail {
    let text = match read_tail(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read the log: {e})"),
    };
    LogTail {
        path: path.to_path_buf(),
        text,
    }
}

fn read_tail(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL_WINDOW);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if start > 0 {
        // Drop the partial first line.
        if let Some(i) = text.find('\n') {
            text.drain(..=i);
        }
    }
    Ok(text)
}

pub(crate) fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "drover-e2e-process-test-{}-{name}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[tokio::test]
    async fn waits_for_a_line_and_stops_the_group() {
        let dir = scratch("line");
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo starting; sleep 0.2; echo ready now; exec sleep 600",
        ]);
        let process =
            ManagedProcess::spawn("sleeper", cmd, &dir.join("sleeper.log")).expect("spawn");
        let line = process
            .wait_for_line("ready", Duration::from_secs(10))
            .await
            .expect("ready line");
        assert_eq!(line, "ready now");
        assert!(process.is_running());
        process.stop(Duration::from_secs(2));
        assert!(!process.is_running());
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn reports_early_exit_with_the_log_tail() {
        let dir = scratch("exit");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo something went wrong >&2; exit 3"]);
        let process =
            ManagedProcess::spawn("failing", cmd, &dir.join("failing.log")).expect("spawn");
        let err = process
            .wait_for_line("never", Duration::from_secs(10))
            .await
            .expect_err("process exits");
        let message = err.to_string();
        assert!(message.contains("exit code 3"), "{message}");
        assert!(message.contains("something went wrong"), "{message}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn children_outlive_the_thread_that_asked_for_them() {
        // PDEATHSIG is tied to the forking thread: a child requested from a
        // short-lived thread must survive that thread's exit.
        let dir = scratch("thread");
        let log = dir.join("child.log");
        let process = thread::spawn(move || {
            let mut cmd = Command::new("sleep");
            cmd.arg("600");
            ManagedProcess::spawn("sleeper", cmd, &log).expect("spawn")
        })
        .join()
        .expect("thread");
        thread::sleep(Duration::from_millis(200));
        assert!(process.is_running());
        process.kill_hard();
        assert!(!process.is_running());
        let _ = fs::remove_dir_all(&dir);
    }
}
