//! Leader election on a Lease: only the holder reconciles; other replicas
//! wait, ready to take over.

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Which Lease this replica competes for, and as whom.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity in the Lease (its pod name).
    pub identity: String,
    /// Seconds a leader holds the Lease without renewing it.
    pub seconds: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("cannot set up leader election")]
    Setup(#[source] LeaseManagerError),
    #[error("leader election stopped")]
    Stopped(#[source] watch::error::RecvError),
    #[error("lost the leader Lease")]
    Lost,
}

/// This replica's place in the election.
pub struct Leadership {
    leader: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

impl Leadership {
    /// Joins the election; a standby renews nothing until it leads.
    pub async fn join(client: Client, settings: &LeaseSettings) -> Result<Self, LeaderError> {
        let lease = LeaseManagerBuilder::new(client, &settings.name)
            .with_namespace(&settings.namespace)
            .with_identity(&settings.identity)
            .with_duration(settings.seconds)
            .with_grace(settings.seconds.div_ceil(3).max(1))
            .build()
            .await
            .map_err(LeaderError::Setup)?;
        let (leader, task) = lease.watch().await;
        Ok(Self { leader, task })
    }

    /// Returns once this replica leads.
    pub async fn acquired(&mut self) -> Result<(), LeaderError> {
        while !*self.leader.borrow_and_update() {
            self.leader.changed().await.map_err(LeaderError::Stopped)?;
        }
        Ok(())
    }

    /// Returns once this replica no longer leads: it must stop reconciling at
    /// once, and a restart makes it a clean standby.
    pub async fn lost(&mut self) -> LeaderError {
        loop {
            if let Err(stopped) = self.leader.changed().await {
                return LeaderError::Stopped(stopped);
            }
            if !*self.leader.borrow_and_update() {
                return LeaderError::Lost;
            }
        }
    }

    /// Gives the Lease up, so a standby takes over at once instead of after
    /// the lease time.
    pub async fn release(self) {
        // Dropping the receiver is what makes the lease task release the Lease.
        drop(self.leader);
        if let Ok(Err(error)) = self.task.await {
            tracing::warn!(%error, "cannot release the leader Lease");
        }
    }
}

/// `<hostname>-<pid>`, for a replica that was not given its pod name.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "drover-operator".into());
    format!("{host}-{}", std::process::id())
}
