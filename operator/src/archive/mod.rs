//! The Job archive: finished Jobs kept in PostgreSQL after their TTL deletes
//! them from the cluster, so their history outlives etcd.
//!
//! While the archive is enabled, the Job controller writes each finished Job
//! here right before its TTL would delete it, and deletes it only after the
//! write succeeded (`gate`). When the database cannot be reached, the Jobs
//! stay in the cluster, each fleet says so in its `Archived` condition
//! (`condition`), and the backlog drains once the database answers again.
//! `kubectl drover history` reads the archive through a read-only HTTP
//! endpoint (`http`), so users need no database credentials.

pub mod condition;
pub mod database;
pub mod gate;
pub mod http;
pub mod record;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_crds::Job;
use drover_crds::history::{HistoryPage, HistoryQuery};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;

use database::Database;
pub use database::DatabaseError;

/// How often the database is looked at while it is unreachable.
pub const PROBE_UNAVAILABLE: Duration = Duration::from_secs(2);
/// How often the database is looked at while it answers.
pub const PROBE_AVAILABLE: Duration = Duration::from_secs(30);

/// Whether the archive can take Jobs, as its last operation found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ArchiveHealth {
    /// Nothing was tried yet.
    #[default]
    Unknown,
    /// The last operation succeeded.
    Available,
    /// Operations fail since `since` (on this operator's clock).
    Unavailable { since: Timestamp, error: String },
}

impl ArchiveHealth {
    pub fn is_available(&self) -> bool {
        matches!(self, ArchiveHealth::Available)
    }
}

/// A `namespace`/`name` of a Job that waits for the archive.
pub type JobKey = (String, String);

/// The archive as the controllers and the HTTP endpoint share it.
#[derive(Clone)]
pub struct Archive {
    inner: Arc<Inner>,
}

struct Inner {
    database: Database,
    health: watch::Sender<ArchiveHealth>,
    /// Jobs whose deletion waits for a write that failed.
    waiting: Mutex<HashSet<JobKey>>,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("database", &self.inner.database)
            .field("health", &*self.inner.health.borrow())
            .finish_non_exhaustive()
    }
}

/// Two handles are equal when they share one archive.
impl PartialEq for Archive {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Archive {
    /// The archive at `url`; it connects on first use, and a task looks at
    /// the database now and then so its health is known before a Job is due.
    pub fn start(url: &str) -> Result<Self, DatabaseError> {
        let archive = Self {
            inner: Arc::new(Inner {
                database: Database::new(url)?,
                health: watch::Sender::new(ArchiveHealth::Unknown),
                waiting: Mutex::default(),
            }),
        };
        tokio::spawn(probe(archive.clone()));
        Ok(archive)
    }

    /// Writes a finished Job (again, if it was written before).
    pub async fn store(&self, job: &Job) -> Result<(), DatabaseError> {
        let stored = self.inner.database.upsert(job).await;
        self.note(&stored);
        stored
    }

    /// The archived Jobs `query` asks for.
    pub async fn history(&self, query: &HistoryQuery) -> Result<HistoryPage, DatabaseError> {
        let page = self.inner.database.history(query).await;
        self.note(&page);
        page
    }

    /// What the last operation found.
    pub fn health(&self) -> ArchiveHealth {
        self.inner.health.borrow().clone()
    }

    /// Changes of [`Archive::health`].
    pub fn subscribe(&self) -> watch::Receiver<ArchiveHealth> {
        self.inner.health.subscribe()
    }

    /// Remembers a Job whose deletion waits for the archive.
    pub fn note_waiting(&self, key: JobKey) {
        self.lock_waiting().insert(key);
    }

    /// Forgets a Job that was archived (or is gone).
    pub fn note_archived(&self, key: &JobKey) {
        self.lock_waiting().remove(key);
    }

    /// The Jobs that wait, forgotten here: a caller wakes them.
    pub fn take_waiting(&self) -> Vec<JobKey> {
        self.lock_waiting().drain().collect()
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, HashSet<JobKey>> {
        // A set of names: a panic elsewhere cannot leave it inconsistent.
        self.inner.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records what an operation found; logs only a change.
    fn note<T>(&self, outcome: &Result<T, DatabaseError>) {
        self.inner.health.send_if_modified(|health| {
            let next = match (outcome, &*health) {
                (Ok(_), _) => ArchiveHealth::Available,
                // A bad row is that Job's problem, not the database's.
                (Err(DatabaseError::Record(_) | DatabaseError::Decode(_)), current) => {
                    current.clone()
                }
                // The first error says why; later ones only repeat it (and a
                // message that changed every retry would rewrite every fleet).
                (Err(_), current @ ArchiveHealth::Unavailable { .. }) => current.clone(),
                (Err(error), _) => ArchiveHealth::Unavailable {
                    since: Timestamp::now(),
                    error: error.to_string(),
                },
            };
            let flipped = health.is_available() != next.is_available()
                || matches!(*health, ArchiveHealth::Unknown);
            if flipped {
                match &next {
                    ArchiveHealth::Available => {
                        tracing::info!(event = "archive_available", "the archive database answers")
                    }
                    ArchiveHealth::Unavailable { error, .. } => {
                        tracing::warn!(event = "archive_unavailable", %error, "the archive database cannot be reached; finished Jobs are kept until it can")
                    }
                    ArchiveHealth::Unknown => {}
                }
            }
            *health = next;
            flipped
        });
    }
}

/// Looks at the database every `PROBE_*`, so a database that comes back is
/// noticed (and the waiting Jobs woken) without a Job having to try first.
async fn probe(archive: Archive) {
    loop {
        let pinged = archive.inner.database.ping().await;
        archive.note(&pinged);
        let wait = if pinged.is_ok() {
            PROBE_AVAILABLE
        } else {
            PROBE_UNAVAILABLE
        };
        tokio::time::sleep(wait).await;
        // The last handle besides this task's is gone: nobody asks any more.
        if Arc::strong_count(&archive.inner) == 1 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use drover_crds::{JobPhase, JobStatus};
    use drover_testkit::JobBuilder;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn finished_job() -> Job {
        let mut job = JobBuilder::new("j1", "sleeper").namespace("team-a").build();
        job.metadata.uid = Some("uid-1".into());
        job.status = Some(JobStatus {
            phase: JobPhase::Succeeded,
            attempt: 1,
            finished_at: Some(Time("2027-01-15T08:00:00Z".parse().unwrap())),
            ..JobStatus::default()
        });
        job
    }

    #[tokio::test]
    async fn an_unreachable_database_refuses_the_write_and_says_so_once() {
        // Port 1 on loopback: nothing listens, the connect is refused at once.
        let archive = Archive::start("postgres://drover@127.0.0.1:1/drover").unwrap();
        assert!(archive.store(&finished_job()).await.is_err());
        let ArchiveHealth::Unavailable { since, error } = archive.health() else {
            panic!("{:?}", archive.health())
        };
        assert!(error.contains("cannot connect"), "{error}");
        // Later failures (the reconnect pause among them) keep the first cause.
        assert!(archive.store(&finished_job()).await.is_err());
        assert_eq!(
            archive.health(),
            ArchiveHealth::Unavailable { since, error }
        );
    }

    #[tokio::test]
    async fn waiting_jobs_are_handed_out_once() {
        let archive = Archive::start("postgres://drover@127.0.0.1:1/drover").unwrap();
        archive.note_waiting(("a".into(), "j1".into()));
        archive.note_waiting(("a".into(), "j2".into()));
        archive.note_archived(&("a".into(), "j1".into()));
        assert_eq!(archive.take_waiting(), [("a".to_owned(), "j2".to_owned())]);
        assert!(archive.take_waiting().is_empty());
    }
}
