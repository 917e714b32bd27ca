//! A throwaway PostgreSQL server for the Job archive, in the sandbox and the
//! tests: Debian's server binaries (`/usr/lib/postgresql/<version>/bin`),
//! `initdb` into a fresh temp dir, `postgres` on a loopback port, trust
//! authentication. The server refuses to run as root, so under root it runs
//! as the `postgres` user the package creates (or `nobody`).

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::process::{ManagedProcess, ProcessError};

/// What installs the server binaries on Debian.
pub const INSTALL_HINT: &str = "apt-get install postgresql";
/// Where Debian puts each major version's server binaries.
const DEBIAN_SERVER_DIRS: &str = "/usr/lib/postgresql";
/// The database role the archive connects as.
pub const USER: &str = "drover";
/// The line `postgres` logs once it takes connections.
const READY_LINE: &str = "database system is ready to accept connections";
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error(
        "PostgreSQL's server binaries are not installed (no {DEBIAN_SERVER_DIRS}/*/bin/postgres); \
         install them with `{INSTALL_HINT}`"
    )]
    NotInstalled,
    #[error("cannot prepare {}: {source}", path.display())]
    Files {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot pick a port: {0}")]
    Port(std::io::Error),
    #[error("initdb failed ({status}): {output}")]
    Initdb { status: String, output: String },
    #[error("cannot run initdb: {0}")]
    RunInitdb(std::io::Error),
    #[error("cannot start postgres: {0}")]
    Start(#[from] ProcessError),
}

/// A running (or stopped) throwaway server; dropped, it stops and its data
/// directory is removed.
pub struct Postgres {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    port: u16,
    /// The uid and gid the server runs as, when this process is root.
    run_as: Option<(u32, u32)>,
    process: Option<ManagedProcess>,
}

/// The newest installed major version's `bin` directory.
pub fn server_binaries() -> Result<PathBuf, PostgresError> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(DEBIAN_SERVER_DIRS)
        .map_err(|_| PostgresError::NotInstalled)?
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or(PostgresError::NotInstalled)
}

impl Postgres {
    /// Initializes a new cluster and starts it, logging to
    /// `<log_dir>/postgres.log`.
    pub async fn start(log_dir: &Path) -> Result<Self, PostgresError> {
        let bin_dir = server_binaries()?;
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let data_dir = std::env::temp_dir().join(format!(
            "drover-postgres-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let files = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PostgresError::Files { path, source }
        };
        if data_dir.exists() {
            std::fs::remove_dir_all(&data_dir).map_err(files(&data_dir))?;
        }
        std::fs::create_dir_all(&data_dir).map_err(files(&data_dir))?;
        std::fs::create_dir_all(log_dir).map_err(files(log_dir))?;
        let run_as = server_user();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&data_dir, Some(uid), Some(gid)).map_err(files(&data_dir))?;
        }
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(files(&data_dir))?;
        let port = crate::ports::free_loopback_ports(1)
            .map_err(PostgresError::Port)?
            .first()
            .copied()
            .unwrap_or_default();
        let mut server = Self {
            bin_dir,
            log: log_dir.join("postgres.log"),
            data_dir,
            port,
            run_as,
            process: None,
        };
        server.initdb()?;
        server.run().await?;
        Ok(server)
    }

    /// `postgres://drover@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Stops the server (a fast shutdown: open connections are closed) and
    /// waits for it to exit; its data is kept for [`Postgres::restart`].
    pub fn stop(&mut self) {
        let Some(process) = self.process.take() else {
            return;
        };
        process.signal(libc::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(20);
        while process.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        process.stop(Duration::from_secs(5));
    }

    /// Starts the stopped server again on the same port with the same data.
    pub async fn restart(&mut self) -> Result<(), PostgresError> {
        self.stop();
        self.run().await
    }

    fn initdb(&self) -> Result<(), PostgresError> {
        let mut command = Command::new(self.bin_dir.join("initdb"));
        command
            .arg("-D")
            .arg(&self.data_dir)
            .args(["--username", USER, "--auth", "trust", "--encoding", "UTF8"])
            .args(["--locale", "C", "--no-sync"])
            .env_remove("PGDATA")
            // The server user may not be able to enter the caller's directory.
            .current_dir("/");
        self.as_server_user(&mut command);
        let output = command.output().map_err(PostgresError::RunInitdb)?;
        if output.status.success() {
            Ok(())
        } else {
            Err(PostgresError::Initdb {
                status: output.status.to_string(),
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            })
        }
    }

    async fn run(&mut self) -> Result<(), PostgresError> {
        let mut command = Command::new(self.bin_dir.join("postgres"));
        command
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-p", &self.port.to_string()])
            // The socket in the data dir, TCP only on loopback.
            .arg("-k")
            .arg(&self.data_dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Throwaway data: durability buys nothing here.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .current_dir("/");
        self.as_server_user(&mut command);
        let process = ManagedProcess::spawn("postgres", command, &self.log)?;
        process.wait_for_line(READY_LINE, START_TIMEOUT).await?;
        self.process = Some(process);
        Ok(())
    }

    fn as_server_user(&self, command: &mut Command) {
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        // Best effort: a directory left behind only costs disk space.
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The uid and gid of `postgres` (else `nobody`) when this process is root,
/// which the server refuses to run as.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    ["postgres", "nobody"].into_iter().find_map(|name| {
        let name = CString::new(name).ok()?;
        // SAFETY: getpwnam gets a NUL-terminated name and returns a pointer to
        // static storage or null; the fields are read before any other call.
        let entry = unsafe { libc::getpwnam(name.as_ptr()) };
        if entry.is_null() {
            return None;
        }
        // SAFETY: non-null, so it points to a valid passwd record.
        let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
        Some((uid, gid))
    })
}
