//! Leader election on a Lease: only the holder reconciles; other replicas
//! wait, ready to take over.
//!
//! A leader must stop acting as soon as it cannot prove it still leads, not
//! when it learns it lost: a paused or partitioned process learns nothing.
//! So leadership here is a local deadline on this process's monotonic clock,
//! the way client-go does it: every renewal that lands moves it to the start
//! of that renewal plus the renew deadline (two thirds of the lease). A
//! standby takes over only after it has seen the Lease unchanged for the
//! whole lease duration on its own clock, by which time the old leader's
//! deadline has passed, whatever the two clocks say. Every publish and
//! status write asks the [`LeaderGate`] first.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;

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

impl LeaseSettings {
    fn duration(&self) -> Duration {
        Duration::from_secs(self.seconds.max(1))
    }

    /// How long a renewal keeps this replica leading: two thirds of the
    /// lease, so it stops well before a standby may take over.
    pub fn renew_deadline(&self) -> Duration {
        self.duration() * 2 / 3
    }

    /// How often the Lease is tried: five times a lease.
    fn retry_period(&self) -> Duration {
        self.duration() / 5
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("cannot reach the leader Lease: {0}")]
    Api(#[source] kube::Error),
    #[error("could not renew the leader Lease within its renew deadline")]
    Lost,
}

/// Whether this replica may act now: true until its renew deadline passes.
#[derive(Clone, Debug, Default)]
pub struct LeaderGate {
    until: Arc<Mutex<Option<Instant>>>,
}

impl LeaderGate {
    /// Whether this replica may publish and write at this moment.
    pub fn leads(&self) -> bool {
        self.deadline().is_some()
    }

    /// When this replica stops leading unless it renews first; `None` while
    /// it does not lead.
    pub fn deadline(&self) -> Option<Instant> {
        self.until().filter(|until| Instant::now() < *until)
    }

    fn until(&self) -> Option<Instant> {
        *self
            .until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, until: Option<Instant>) {
        *self
            .until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = until;
    }
}

/// What to do with the Lease as last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseStep {
    /// It is ours: renew it.
    Renew,
    /// Released, or unchanged for a whole lease on our clock: take it.
    TakeOver,
    /// Another replica holds it and renews it.
    Wait,
}

/// Decides from the Lease's holder and how long this replica has seen it
/// unchanged (its own clock; the holder's `renewTime` is never compared).
pub fn lease_step(
    holder: Option<&str>,
    me: &str,
    unchanged_for: Duration,
    lease: Duration,
) -> LeaseStep {
    match holder {
        None => LeaseStep::TakeOver,
        Some(holder) if holder == me => LeaseStep::Renew,
        Some("") => LeaseStep::TakeOver,
        Some(_) if unchanged_for >= lease => LeaseStep::TakeOver,
        Some(_) => LeaseStep::Wait,
    }
}

/// This replica's place in the election.
pub struct Leadership {
    gate: LeaderGate,
    task: JoinHandle<()>,
    api: Api<Lease>,
    settings: LeaseSettings,
}

impl Leadership {
    /// Joins the election: tries the Lease at once and then every retry period.
    pub async fn join(client: Client, settings: &LeaseSettings) -> Result<Self, LeaderError> {
        let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
        let gate = LeaderGate::default();
        let mut elector = Elector {
            api: api.clone(),
            settings: settings.clone(),
            seen: None,
        };
        // The first try answers configuration mistakes (RBAC, namespace) at start.
        elector.try_once(&gate).await?;
        let task = tokio::spawn({
            let gate = gate.clone();
            async move {
                loop {
                    tokio::time::sleep(elector.settings.retry_period()).await;
                    if let Err(error) = elector.try_once(&gate).await {
                        tracing::warn!(%error, "cannot renew or acquire the leader Lease this time");
                    }
                }
            }
        });
        Ok(Self {
            gate,
            task,
            api,
            settings: settings.clone(),
        })
    }

    /// The gate every write asks.
    pub fn gate(&self) -> LeaderGate {
        self.gate.clone()
    }

    /// Returns once this replica leads.
    pub async fn acquired(&self) {
        while !self.gate.leads() {
            tokio::time::sleep(self.settings.retry_period().min(Duration::from_millis(200))).await;
        }
    }

    /// Returns once this replica can no longer prove it leads: it must stop
    /// at once, and a restart makes it a clean standby.
    pub async fn lost(&self) -> LeaderError {
        loop {
            match self.gate.until() {
                Some(until) if Instant::now() < until => tokio::time::sleep_until(until).await,
                _ => return LeaderError::Lost,
            }
        }
    }

    /// Stops renewing and gives the Lease up if it is still ours, so a
    /// standby takes over at once instead of after the lease time.
    pub async fn release(self) {
        self.task.abort();
        let leading = self.gate.leads();
        self.gate.set(None);
        if !leading {
            return;
        }
        let Ok(mut lease) = self.api.get(&self.settings.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return;
        }
        spec.holder_identity = Some(String::new());
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        let name = self.settings.name.clone();
        if let Err(error) = self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(%error, "cannot release the leader Lease");
        }
    }
}

/// The Lease as this replica last saw it change.
struct Seen {
    resource_version: String,
    at: Instant,
}

struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    seen: Option<Seen>,
}

impl Elector {
    /// One round: read the Lease, then create, renew or take it over, each
    /// write conditioned on the version read. A renewal that lands extends
    /// the gate from the moment this round started.
    async fn try_once(&mut self, gate: &LeaderGate) -> Result<(), LeaderError> {
        let started = Instant::now();
        let me = self.settings.identity.clone();
        let current = self
            .api
            .get_opt(&self.settings.name)
            .await
            .map_err(LeaderError::Api)?;
        let Some(lease) = current else {
            return self.write(gate, started, None).await;
        };
        let version = lease.resource_version().unwrap_or_default();
        let unchanged_for = match &self.seen {
            Some(seen) if seen.resource_version == version => started - seen.at,
            _ => {
                self.seen = Some(Seen {
                    resource_version: version.clone(),
                    at: started,
                });
                Duration::ZERO
            }
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let held_for = spec
            .lease_duration_seconds
            .map_or(self.settings.duration(), |s| {
                Duration::from_secs(u64::try_from(s.max(1)).unwrap_or(1))
            });
        match lease_step(
            spec.holder_identity.as_deref(),
            &me,
            unchanged_for,
            held_for,
        ) {
            LeaseStep::Wait => {
                gate.set(None);
                Ok(())
            }
            LeaseStep::Renew | LeaseStep::TakeOver => self.write(gate, started, Some(lease)).await,
        }
    }

    async fn write(
        &mut self,
        gate: &LeaderGate,
        started: Instant,
        current: Option<Lease>,
    ) -> Result<(), LeaderError> {
        let now = MicroTime(Timestamp::now());
        let me = self.settings.identity.clone();
        let seconds = i32::try_from(self.settings.seconds).unwrap_or(i32::MAX);
        let written = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(me.clone()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if spec.holder_identity.as_deref() != Some(me.as_str()) {
                    spec.holder_identity = Some(me.clone());
                    spec.acquire_time = Some(now.clone());
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                    tracing::info!(lease = %self.settings.name, "taking over the leader Lease");
                }
                spec.lease_duration_seconds = Some(seconds);
                spec.renew_time = Some(now);
                // The object carries the resourceVersion read: a replace that
                // raced another replica fails with 409 and changes nothing.
                self.api
                    .replace(&self.settings.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(lease) => {
                self.seen = Some(Seen {
                    resource_version: lease.resource_version().unwrap_or_default(),
                    at: started,
                });
                gate.set(Some(started + self.settings.renew_deadline()));
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(error) => Err(LeaderError::Api(error)),
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

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    #[test]
    fn a_missing_or_released_lease_is_taken() {
        assert_eq!(
            lease_step(None, "a", Duration::ZERO, LEASE),
            LeaseStep::TakeOver
        );
        assert_eq!(
            lease_step(Some(""), "a", Duration::ZERO, LEASE),
            LeaseStep::TakeOver
        );
    }

    #[test]
    fn our_own_lease_is_renewed() {
        assert_eq!(
            lease_step(Some("a"), "a", LEASE * 9, LEASE),
            LeaseStep::Renew
        );
    }

    #[test]
    fn another_holder_is_waited_for_until_a_whole_lease_passed_unchanged_on_our_clock() {
        let just_under = LEASE - Duration::from_millis(1);
        assert_eq!(
            lease_step(Some("b"), "a", just_under, LEASE),
            LeaseStep::Wait
        );
        assert_eq!(
            lease_step(Some("b"), "a", LEASE, LEASE),
            LeaseStep::TakeOver
        );
    }

    #[test]
    fn the_renew_deadline_ends_before_a_standby_may_take_over() {
        let settings = LeaseSettings {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "a".into(),
            seconds: 15,
        };
        assert_eq!(settings.renew_deadline(), Duration::from_secs(10));
        assert!(settings.renew_deadline() < settings.duration());
        assert_eq!(settings.retry_period(), Duration::from_secs(3));
    }

    #[tokio::test]
    async fn the_gate_closes_by_itself_when_the_deadline_passes() {
        let gate = LeaderGate::default();
        assert!(!gate.leads());
        gate.set(Some(Instant::now() + Duration::from_millis(50)));
        assert!(gate.leads());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!gate.leads(), "no renewal landed: the replica stops");
    }
}
