//! The sandbox's Job archive: a throwaway PostgreSQL server ([`crate::postgres`])
//! when Debian's `postgresql` is installed, the operator flags that use it,
//! and the line of the env file that points `kubectl drover history` at the
//! operator's history endpoint. Without the package the sandbox runs without
//! an archive and says how to get one.

use std::io::Write as _;
use std::path::Path;

use crate::drover::archive_args;
use crate::postgres::{INSTALL_HINT, Postgres, PostgresError};

/// A running archive for the sandbox's operator.
pub struct SandboxArchive {
    /// Held until teardown; dropped, the server stops and its data goes.
    pub postgres: Postgres,
    /// The operator's flags that archive into it.
    pub operator_args: Vec<String>,
    /// The operator's history endpoint.
    pub history_url: String,
}

/// Starts PostgreSQL for the archive, or says why there is none (`say` gets
/// each line to print). Logs go to `<state_dir>/archive`.
pub async fn start(state_dir: &Path, say: &mut dyn FnMut(&str)) -> Option<SandboxArchive> {
    let postgres = match Postgres::start(&state_dir.join("archive")).await {
        Ok(postgres) => postgres,
        Err(PostgresError::NotInstalled) => {
            say(&format!(
                "no archive: PostgreSQL is not installed (`{INSTALL_HINT}` gives finished Jobs a history that outlives their TTL, `kubectl drover history`)"
            ));
            return None;
        }
        Err(error) => {
            say(&format!(
                "no archive: PostgreSQL does not start: {}",
                crate::error_chain(&error)
            ));
            return None;
        }
    };
    let port = match crate::ports::free_loopback_ports(1) {
        Ok(ports) => ports.first().copied().unwrap_or_default(),
        Err(error) => {
            say(&format!(
                "no archive: no free port for its endpoint: {error}"
            ));
            return None;
        }
    };
    say(&format!(
        "archive: PostgreSQL at {} (log {})",
        postgres.url(),
        postgres.log_path().display()
    ));
    Some(SandboxArchive {
        operator_args: archive_args(&postgres.url(), port),
        history_url: format!("http://127.0.0.1:{port}"),
        postgres,
    })
}

impl SandboxArchive {
    /// Adds `DROVER_ARCHIVE_URL` to the env file: the operator runs as a
    /// local process here, so the CLI reaches it directly, not through the
    /// apiserver's service proxy.
    pub fn append_env(&self, env_file: &Path) -> Result<(), String> {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(env_file)
            .map_err(|e| format!("cannot open {}: {e}", env_file.display()))?;
        writeln!(
            file,
            "# `kubectl drover history` reads the operator's archive here.\n\
             export DROVER_ARCHIVE_URL={}\n\
             export DROVER_ARCHIVE_DATABASE_URL={}",
            self.history_url,
            self.postgres.url()
        )
        .map_err(|e| format!("cannot write {}: {e}", env_file.display()))
    }
}
