//! The archive's PostgreSQL connection: one multiplexed client, connected on
//! first use and again after it breaks, with the schema migrations in
//! `operator/migrations` applied on every connect; the upsert of a finished
//! Job and the history query.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_crds::Job;
use drover_crds::history::{HistoryPage, HistoryQuery, phase_name};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

use super::record::{ArchivedJob, RecordError};

/// The migrations in the order they apply: (version, file name, SQL).
/// A test checks that every file in `operator/migrations` is listed.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "0001_archived_jobs.sql",
    include_str!("../../migrations/0001_archived_jobs.sql"),
)];

/// How long a connect, a write or a query may take before the database
/// counts as unreachable (a partition hangs rather than fails).
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed connect, operations fail at once for this long instead of
/// each trying again (a backlog of Jobs must not storm a dead server).
pub const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// Any 64-bit key; only replicas of this operator take it.
const MIGRATION_LOCK: i64 = 0x6472_6f76_6572; // "drover"

/// What went wrong with the archive database.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("the archive database URL is not valid: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error("cannot connect to the archive database: {}", with_causes(.0))]
    Connect(#[source] tokio_postgres::Error),
    #[error("the archive database did not answer within {} s", OPERATION_TIMEOUT.as_secs())]
    Timeout,
    #[error("not connected to the archive database (the last try failed: {0})")]
    Paused(String),
    #[error("cannot apply archive migration {name}: {}", with_causes(source))]
    Migration {
        name: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("the archive database refused the operation: {}", with_causes(.0))]
    Query(#[source] tokio_postgres::Error),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("an archived Job does not decode: {0}")]
    Decode(#[source] serde_json::Error),
}

/// `error: cause: cause`: the client's errors say "error connecting to
/// server" and keep the why (connection refused, a bad password) in their source.
fn with_causes(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The connection to one archive database.
pub struct Database {
    config: tokio_postgres::Config,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    /// Until when a failed connect is not tried again, and its error.
    paused: Mutex<Option<(Instant, String)>>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: show only where it points.
        f.debug_struct("Database")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish_non_exhaustive()
    }
}

impl Database {
    /// A database at `url` (`postgres://user:password@host:port/db`, or the
    /// `host=... user=...` form); nothing is connected yet.
    pub fn new(url: &str) -> Result<Self, DatabaseError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(DatabaseError::Url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(OPERATION_TIMEOUT);
        }
        config.application_name("drover-operator");
        Ok(Self {
            config,
            client: tokio::sync::Mutex::new(None),
            paused: Mutex::new(None),
        })
    }

    /// Writes a finished Job; writing the same Job again replaces its row.
    pub async fn upsert(&self, job: &Job) -> Result<(), DatabaseError> {
        let row = ArchivedJob::of(job)?;
        let client = self.client().await?;
        let params: [&(dyn ToSql + Sync); 12] = [
            &row.uid,
            &row.namespace,
            &row.name,
            &row.worker,
            &row.phase,
            &row.attempt,
            &row.created_at,
            &row.queued_at,
            &row.started_at,
            &row.finished_at,
            &row.error_reason,
            &row.job,
        ];
        let write = client.execute(
            "INSERT INTO drover_archived_jobs
                 (uid, namespace, name, worker, phase, attempt, created_at, queued_at,
                  started_at, finished_at, error_reason, job, archived_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7::text::timestamptz, $8::text::timestamptz,
                     $9::text::timestamptz, $10::text::timestamptz, $11, $12, now())
             ON CONFLICT (uid) DO UPDATE SET
                 namespace = EXCLUDED.namespace, name = EXCLUDED.name,
                 worker = EXCLUDED.worker, phase = EXCLUDED.phase,
                 attempt = EXCLUDED.attempt, created_at = EXCLUDED.created_at,
                 queued_at = EXCLUDED.queued_at, started_at = EXCLUDED.started_at,
                 finished_at = EXCLUDED.finished_at, error_reason = EXCLUDED.error_reason,
                 job = EXCLUDED.job, archived_at = now()",
            &params,
        );
        timed(write).await?.map_err(DatabaseError::Query)?;
        Ok(())
    }

    /// The archived Jobs `query` asks for, newest first.
    pub async fn history(&self, query: &HistoryQuery) -> Result<HistoryPage, DatabaseError> {
        let client = self.client().await?;
        let limit = query.effective_limit();
        let phase = query.phase.map(phase_name);
        let since = query.since.map(|d| d.as_secs_f64());
        // One more than the page, to tell whether more match.
        let fetch = i64::from(limit) + 1;
        let params: [&(dyn ToSql + Sync); 5] =
            [&query.namespace, &query.worker, &phase, &since, &fetch];
        let rows = client.query(
            "SELECT job FROM drover_archived_jobs
             WHERE ($1::text IS NULL OR namespace = $1)
               AND ($2::text IS NULL OR worker = $2)
               AND ($3::text IS NULL OR phase = $3)
               AND ($4::float8 IS NULL OR finished_at >= now() - make_interval(secs => $4))
             ORDER BY finished_at DESC, uid
             LIMIT $5",
            &params,
        );
        let rows = timed(rows).await?.map_err(DatabaseError::Query)?;
        let truncated = rows.len() > limit as usize;
        let jobs = rows
            .iter()
            .take(limit as usize)
            .map(|row| {
                let value: serde_json::Value = row.try_get(0).map_err(DatabaseError::Query)?;
                serde_json::from_value(value).map_err(DatabaseError::Decode)
            })
            .collect::<Result<Vec<Job>, _>>()?;
        Ok(HistoryPage { jobs, truncated })
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), DatabaseError> {
        let client = self.client().await?;
        timed(client.simple_query("SELECT 1"))
            .await?
            .map_err(DatabaseError::Query)?;
        Ok(())
    }

    /// The connected client, connecting (and migrating) when there is none
    /// or it broke; fails at once during the pause after a failed connect.
    async fn client(&self) -> Result<Arc<Client>, DatabaseError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        *slot = None;
        if let Some((until, error)) = self.lock_paused().clone()
            && Instant::now() < until
        {
            return Err(DatabaseError::Paused(error));
        }
        match self.connect().await {
            Ok(client) => {
                *self.lock_paused() = None;
                let client = Arc::new(client);
                *slot = Some(client.clone());
                Ok(client)
            }
            Err(error) => {
                *self.lock_paused() = Some((Instant::now() + RECONNECT_PAUSE, error.to_string()));
                Err(error)
            }
        }
    }

    async fn connect(&self) -> Result<Client, DatabaseError> {
        let (client, connection) = timed(self.config.connect(NoTls))
            .await?
            .map_err(DatabaseError::Connect)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "the archive database connection closed");
            }
        });
        timed(migrate(&client)).await??;
        Ok(client)
    }

    fn lock_paused(&self) -> std::sync::MutexGuard<'_, Option<(Instant, String)>> {
        // A plain value: a panic elsewhere cannot leave it half-written.
        self.paused.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Applies the migrations this database has not seen, each in its own
/// transaction, under an advisory lock so two replicas never race.
async fn migrate(client: &Client) -> Result<(), DatabaseError> {
    let failed = |name| move |source| DatabaseError::Migration { name, source };
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS drover_schema_migrations (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(failed("drover_schema_migrations"))?;
    for &(version, name, sql) in MIGRATIONS {
        // A transaction of its own: a migration applies whole or not at all.
        client.batch_execute("BEGIN").await.map_err(failed(name))?;
        let applied = async {
            client
                .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            let seen = client
                .query_opt(
                    "SELECT 1 FROM drover_schema_migrations WHERE version = $1",
                    &[&version],
                )
                .await?;
            if seen.is_none() {
                client.batch_execute(sql).await?;
                client
                    .execute(
                        "INSERT INTO drover_schema_migrations (version, name) VALUES ($1, $2)",
                        &[&version, &name],
                    )
                    .await?;
                tracing::info!(
                    event = "archive_migrated",
                    version,
                    name,
                    "applied an archive migration"
                );
            }
            client.batch_execute("COMMIT").await
        }
        .await;
        if let Err(source) = applied {
            // The connection may be gone; a rollback that fails changes nothing.
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(DatabaseError::Migration { name, source });
        }
    }
    Ok(())
}

/// `operation`, or `Timeout` once it took `OPERATION_TIMEOUT`.
async fn timed<T>(operation: impl std::future::Future<Output = T>) -> Result<T, DatabaseError> {
    tokio::time::timeout(OPERATION_TIMEOUT, operation)
        .await
        .map_err(|_| DatabaseError::Timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_applied_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|(_, name, _)| *name).collect();
        assert_eq!(files, listed);
        for (index, (version, name, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version, i32::try_from(index).unwrap() + 1, "{name}");
            assert!(name.starts_with(&format!("{version:04}_")), "{name}");
        }
    }

    #[test]
    fn the_debug_form_shows_no_password() {
        let db = Database::new("postgres://drover:s3cret@db.example:5432/archive").unwrap();
        let shown = format!("{db:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("archive"), "{shown}");
    }

    #[test]
    fn a_url_that_does_not_parse_is_refused() {
        assert!(matches!(
            Database::new("postgres://[::1"),
            Err(DatabaseError::Url(_))
        ));
    }
}
