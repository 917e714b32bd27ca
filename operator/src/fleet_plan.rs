//! What one fleet reconcile should do, as a pure function of what it
//! observed: the replica count, whether to write at all, the status, the
//! Events, the pod deletion costs and when to look again. `fleet` gathers the
//! observation from its caches and the cluster, and carries out the plan.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_crds::PipelineWorker;
use drover_crds::fleet_conditions::DegradedReason;
use drover_crds::pipeline_worker::{PipelineWorkerStatus, ScalingMode};
use drover_queue::QueueNames;
use k8s_openapi::api::apps::v1::DeploymentStatus;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::archive::condition::{ArchiveView, archived_condition};
use crate::archive::gate::ARCHIVE_RETRY;
use crate::backlog::BacklogCount;
use crate::health::{self, Problem};
use crate::labels;
use crate::scaler::{self, RecommendationHistory, ScalingPolicy};

/// Pod annotation the ReplicaSet controller reads to pick pods to remove:
/// lower cost goes first, so idle workers are stopped before busy ones.
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// How often a healthy queue and the Secrets are checked again.
pub const SLOW_CHECK_HEALTHY: Duration = Duration::from_secs(60);
/// How soon a missing topic, subscription or Secret is looked for again.
pub const SLOW_CHECK_BROKEN: Duration = Duration::from_secs(2);
/// Under a stream of Job events a fleet is reconciled many times a second.
/// A reconcile that changes no replica count writes nothing (no Deployment
/// apply, pod costs or status) if the last full sync is younger than this;
/// it schedules one for when the interval is up instead, so a hand edit is
/// still reverted and the status still catches up within it.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How soon a pending scale-down is looked at again: older recommendations
/// leave the stabilization window one by one.
const SCALE_DOWN_RECHECK: Duration = Duration::from_secs(1);
/// How often the ServiceAccount, RBAC and Service are applied again although
/// the spec did not change, so one deleted by hand comes back.
pub const CHILDREN_RESYNC: Duration = SLOW_CHECK_HEALTHY;

/// What the controller remembers about a fleet between reconciles, as far as
/// the plan reads it.
#[derive(Clone, Debug, Default)]
pub struct FleetMemory {
    /// Generation whose ServiceAccount, RBAC and Service were applied.
    pub applied_generation: Option<i64>,
    /// The scaler's recent recommendations, for scale-down stabilization.
    pub history: RecommendationHistory,
    /// Replicas this process last set; the status may lag behind it.
    pub last_desired: Option<i32>,
    /// Degraded reason last announced with an Event.
    pub announced_problem: Option<DegradedReason>,
}

/// Everything one reconcile of a fleet looks at.
#[derive(Clone, Debug)]
pub struct FleetObservation<'a> {
    /// The PipelineWorker: its spec, generation and the status it shows.
    pub fleet: &'a PipelineWorker,
    /// The fleet's unfinished Jobs, from the Job cache.
    pub backlog: BacklogCount,
    /// The earliest future retry of the fleet's Backoff Jobs.
    pub next_retry: Option<Timestamp>,
    /// Running Jobs per pod name in the fleet's namespace.
    pub running_by_pod: BTreeMap<String, u32>,
    /// The fleet's pods, from the pod cache.
    pub pods: Vec<Pod>,
    /// The worker Deployment's status; `None` before it exists.
    pub deployment: Option<DeploymentStatus>,
    /// Result of the last queue check: `None` when topic and subscription are in place.
    pub queue_problem: Option<Problem>,
    /// `secret/key` references the last Secret check did not find.
    pub missing_secrets: Vec<String>,
    /// `namespace/name` of the other PipelineWorkers on the same subscription.
    pub shared_with: Vec<String>,
    /// Time since this process last applied the ServiceAccount, RBAC and
    /// Service; `None` before the first time.
    pub since_children: Option<Duration>,
    /// What this process remembers about the fleet.
    pub memory: FleetMemory,
    /// Time since the last full sync by this process; `None` before the first.
    pub since_sync: Option<Duration>,
    /// What the archive's health means for this fleet; `None` without an archive.
    pub archive: Option<ArchiveView>,
}

/// What one reconcile does.
#[derive(Clone, Debug)]
pub struct FleetPlan {
    /// Replicas the worker Deployment is set to.
    pub desired_replicas: i32,
    /// The scaler's history including this reconcile's recommendation; kept
    /// whether or not anything is written.
    pub history: RecommendationHistory,
    /// The writes; `None` when nothing changed and the last sync is recent.
    pub sync: Option<FleetSync>,
    /// When to reconcile again without any event.
    pub wake: Duration,
}

/// The writes of a full sync, in the order they are made.
#[derive(Clone, Debug)]
pub struct FleetSync {
    /// Apply the ServiceAccount, RBAC and Service: the spec changed, or this
    /// process has not applied them yet.
    pub apply_children: bool,
    /// The replica change this sync makes, if any.
    pub scale: Option<Scale>,
    /// Events for `kubectl describe`.
    pub events: Vec<FleetEvent>,
    /// The Degraded reason to remember as announced.
    pub announced_problem: Option<DegradedReason>,
    /// Pod deletion costs that differ from what the pods carry.
    pub pod_costs: Vec<PodCost>,
    /// The status the fleet should show (also what the metrics report).
    pub status: PipelineWorkerStatus,
    /// False when `status` equals what the fleet already shows.
    pub write_status: bool,
}

/// A change of the fleet's replica count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scale {
    /// Replicas before.
    pub from: i32,
    /// Replicas after.
    pub to: i32,
    /// The backlog that asked for it.
    pub demand: u32,
}

impl Scale {
    /// `up` or `down`, for the scale decisions metric.
    pub fn direction(&self) -> &'static str {
        if self.to > self.from { "up" } else { "down" }
    }
}

/// A Kubernetes Event on the PipelineWorker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FleetEvent {
    /// Normal: the Deployment was resized.
    Scaled(Scale),
    /// Warning: a new Degraded reason appeared.
    Degraded(Problem),
}

impl FleetEvent {
    /// The Event's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            FleetEvent::Scaled(_) => "Scaled",
            FleetEvent::Degraded(problem) => problem.reason.as_str(),
        }
    }

    /// The Event's note.
    pub fn note(&self) -> String {
        match self {
            FleetEvent::Scaled(Scale { from, to, demand }) => {
                format!("scaled worker Deployment from {from} to {to} replicas (backlog {demand})")
            }
            FleetEvent::Degraded(problem) => problem.message.clone(),
        }
    }

    /// Whether a person should look: a Warning rather than a Normal Event.
    pub fn is_warning(&self) -> bool {
        matches!(self, FleetEvent::Degraded(_))
    }
}

/// A pod deletion cost to set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCost {
    /// The pod's name, in the fleet's namespace.
    pub pod: String,
    /// The annotation's value: the number of Jobs the pod runs.
    pub cost: String,
}

/// The scaling limits a PipelineWorker sets.
pub fn scaling_policy(pw: &PipelineWorker) -> ScalingPolicy {
    let scaling = &pw.spec.scaling;
    ScalingPolicy {
        min_replicas: scaling.min_replicas,
        max_replicas: scaling.max_replicas,
        jobs_per_replica: scaling
            .jobs_per_replica
            .unwrap_or(pw.spec.concurrency)
            .max(1),
        scale_down_stabilization: Duration::from_secs(
            u64::try_from(scaling.scale_down_stabilization_seconds).unwrap_or(0),
        ),
    }
}

/// `namespace/name` of every other PipelineWorker in `fleets` that pulls
/// from the same subscription as `pw` (sorted): two fleets on one
/// subscription would each receive the other's Jobs.
pub fn subscription_sharers<'a>(
    pw: &PipelineWorker,
    fleets: impl IntoIterator<Item = &'a PipelineWorker>,
    default_project: &str,
) -> Vec<String> {
    let subscription = QueueNames::of(pw, default_project).subscription;
    let key = |f: &PipelineWorker| (f.metadata.namespace.clone(), f.metadata.name.clone());
    let mut sharers: Vec<String> = fleets
        .into_iter()
        .filter(|other| key(other) != key(pw) && other.metadata.deletion_timestamp.is_none())
        .filter(|other| !refused_its_queue(other))
        .filter(|other| QueueNames::of(other, default_project).subscription == subscription)
        .map(|other| {
            format!(
                "{}/{}",
                other.metadata.namespace.as_deref().unwrap_or_default(),
                other.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    sharers.sort();
    sharers
}

/// Pub/Sub and Secret lookups cost API calls, so they run when the spec
/// changed, soon after a problem was found, or once a minute. `last` is the
/// time since the last check and the generation it checked.
pub fn slow_check_due(
    last: Option<(Duration, Option<i64>)>,
    broken: bool,
    generation: Option<i64>,
) -> bool {
    match last {
        None => true,
        Some((since, checked_generation)) => {
            let interval = if broken {
                SLOW_CHECK_BROKEN
            } else {
                SLOW_CHECK_HEALTHY
            };
            checked_generation != generation || since >= interval
        }
    }
}

fn owned_elsewhere(problem: Option<&Problem>) -> bool {
    problem.is_some_and(|p| p.reason == DegradedReason::QueueOwnedElsewhere)
}

/// Whether `fleet` was refused its queue (its status says so): it shares
/// nothing with the owner, it only named the owner's queue.
fn refused_its_queue(fleet: &PipelineWorker) -> bool {
    fleet.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == "QueueReady" && c.reason == DegradedReason::QueueOwnedElsewhere.as_str()
        })
    })
}

/// Decides one reconcile of a fleet from what it observed at `now`.
pub fn plan(observed: &FleetObservation<'_>, now: Timestamp) -> FleetPlan {
    let pw = observed.fleet;
    let generation = pw.metadata.generation;
    let previous = pw.status.clone().unwrap_or_default();
    let memory = &observed.memory;
    // After a restart, the replica count last recorded in the status.
    let current = memory.last_desired.unwrap_or(previous.desired_replicas);
    let policy = scaling_policy(pw);
    let mut history = memory.history.clone();
    let desired = match pw.spec.scaling.mode {
        // A fleet refused its queue gets no workers: they would pull another's Jobs.
        _ if owned_elsewhere(observed.queue_problem.as_ref()) => 0,
        ScalingMode::Manual => pw.spec.scaling.replicas.unwrap_or(current).max(0),
        ScalingMode::Auto => {
            if memory.last_desired.is_none() {
                // After a restart or a handover the recommendations are
                // gone: take the count the status records as recommended
                // now, so a scale-down still waits out a whole window.
                history.record(now, current, policy.scale_down_stabilization);
            }
            let wanted = scaler::desired_replicas(
                observed.backlog.demand,
                current,
                &policy,
                &mut history,
                now,
            );
            // A scale-down never goes below the pods running Jobs now:
            // their Jobs would only be handed back.
            if wanted < current {
                wanted.max(busy_pods(observed).min(current))
            } else {
                wanted
            }
        }
    };

    if desired == current
        && let Some(since) = observed.since_sync
        && since < SYNC_INTERVAL
        && previous.observed_generation == generation
    {
        return FleetPlan {
            desired_replicas: desired,
            history,
            sync: None,
            wake: SYNC_INTERVAL - since,
        };
    }

    let scale = (desired != current).then_some(Scale {
        from: current,
        to: desired,
        demand: observed.backlog.demand,
    });
    let deployment = observed.deployment.clone().unwrap_or_default();
    let health = health::Observation {
        queue_problem: observed.queue_problem.clone(),
        missing_secrets: observed.missing_secrets.clone(),
        shared_with: observed.shared_with.clone(),
        desired_replicas: desired,
        ready_replicas: deployment.ready_replicas.unwrap_or(0),
        pods: observed.pods.clone(),
    };
    let now_time = Time(now);
    let mut conditions = health::conditions(&health, generation, &now_time, &previous.conditions);
    if let Some(view) = &observed.archive {
        conditions.push(archived_condition(
            view,
            generation,
            &now_time,
            &previous.conditions,
        ));
    }
    let problem = health::degraded_problem(&health);
    let announced_problem = problem.as_ref().map(|p| p.reason);

    let mut events: Vec<FleetEvent> = scale.map(FleetEvent::Scaled).into_iter().collect();
    if announced_problem != memory.announced_problem
        && let Some(problem) = problem
    {
        events.push(FleetEvent::Degraded(problem));
    }

    let status = PipelineWorkerStatus {
        conditions,
        replicas: deployment.replicas.unwrap_or(0),
        ready_replicas: health.ready_replicas,
        desired_replicas: desired,
        selector: Some(labels::selector_string(pw)),
        backlog: observed.backlog.backlog,
        last_scale_time: if scale.is_some() {
            Some(now_time)
        } else {
            previous.last_scale_time.clone()
        },
        observed_generation: generation,
    };
    let write_status = status != previous;

    FleetPlan {
        desired_replicas: desired,
        history,
        sync: Some(FleetSync {
            apply_children: memory.applied_generation.is_none()
                || memory.applied_generation != generation
                || observed
                    .since_children
                    .is_none_or(|since| since >= CHILDREN_RESYNC),
            scale,
            events,
            announced_problem,
            pod_costs: pod_costs(&observed.pods, &observed.running_by_pod),
            status,
            write_status,
        }),
        wake: next_wake(observed, &policy, desired, current, now),
    }
}

/// Each pod's deletion cost is the number of Jobs it runs, so a scale down
/// removes idle pods first. Only costs that changed are listed.
/// The fleet's pods, not yet leaving, that run at least one Job.
fn busy_pods(observed: &FleetObservation<'_>) -> i32 {
    let busy = observed
        .pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| {
            pod.metadata
                .name
                .as_ref()
                .and_then(|name| observed.running_by_pod.get(name))
                .is_some_and(|&running| running > 0)
        })
        .count();
    i32::try_from(busy).unwrap_or(i32::MAX)
}

fn pod_costs(pods: &[Pod], running_by_pod: &BTreeMap<String, u32>) -> Vec<PodCost> {
    pods.iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| {
            let name = pod.metadata.name.clone()?;
            let cost = running_by_pod.get(&name).copied().unwrap_or(0).to_string();
            let current = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(POD_DELETION_COST));
            let unchanged = current == Some(&cost) || (current.is_none() && cost == "0");
            (!unchanged).then_some(PodCost { pod: name, cost })
        })
        .collect()
}

/// When to look again without any event: when a pending scale-down may
/// happen, when a Backoff Job becomes due, or when a broken queue or Secret
/// should be checked again.
fn next_wake(
    observed: &FleetObservation<'_>,
    policy: &ScalingPolicy,
    desired: i32,
    current: i32,
    now: Timestamp,
) -> Duration {
    let mut wake = SLOW_CHECK_HEALTHY;
    if let Some(at) = observed.next_retry {
        let until = at.duration_since(now);
        wake = wake.min(Duration::try_from(until).unwrap_or(Duration::ZERO));
    }
    if scaler::recommended_replicas(observed.backlog.demand, policy) < desired.max(current) {
        wake = wake.min(SCALE_DOWN_RECHECK);
    }
    if observed.queue_problem.is_some()
        || !observed.missing_secrets.is_empty()
        || !observed.shared_with.is_empty()
    {
        wake = wake.min(SLOW_CHECK_BROKEN);
    }
    // The count of Jobs held back grows without any Job event: recount it.
    if observed
        .archive
        .as_ref()
        .is_some_and(|view| !view.health.is_available())
    {
        wake = wake.min(ARCHIVE_RETRY);
    }
    wake
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_crds::PipelineWorkerSpec;
    use drover_crds::pipeline_worker::Backlog;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodStatus,
    };
    use k8s_openapi::jiff::SignedDuration;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    /// A fleet of generation 1 with 10 Jobs per replica, 0..=10 replicas and
    /// a 60 s scale-down window.
    fn fleet() -> PipelineWorker {
        let spec: PipelineWorkerSpec = serde_json::from_value(serde_json::json!({
            "pipeline": "sleep",
            "queue": {"topic": "jobs", "subscription": "jobs-sub"},
            "scaling": {"minReplicas": 0, "maxReplicas": 10, "jobsPerReplica": 10,
                        "scaleDownStabilizationSeconds": 60},
        }))
        .unwrap();
        let mut pw = PipelineWorker::new("sleeper", spec);
        pw.metadata.namespace = Some("team-a".into());
        pw.metadata.generation = Some(1);
        pw
    }

    /// `pw` with the status a previous sync at `at(0)` wrote for `replicas`.
    fn synced(mut pw: PipelineWorker, replicas: i32) -> PipelineWorker {
        let observed = observe(&pw, replicas as u32 * 10);
        let mut status = plan(&observed, at(0)).sync.unwrap().status;
        status.desired_replicas = replicas;
        pw.status = Some(status);
        pw
    }

    fn observe(pw: &PipelineWorker, demand: u32) -> FleetObservation<'_> {
        FleetObservation {
            fleet: pw,
            backlog: BacklogCount {
                backlog: Backlog {
                    queued: i32::try_from(demand).unwrap(),
                    running: 0,
                    backoff: 0,
                },
                demand,
            },
            next_retry: None,
            running_by_pod: BTreeMap::new(),
            pods: Vec::new(),
            deployment: None,
            queue_problem: None,
            missing_secrets: Vec::new(),
            shared_with: Vec::new(),
            since_children: None,
            memory: FleetMemory::default(),
            since_sync: None,
            archive: None,
        }
    }

    fn pod(name: &str, cost: Option<&str>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod.metadata.annotations =
            cost.map(|c| BTreeMap::from([(POD_DELETION_COST.to_owned(), c.to_owned())]));
        pod
    }

    fn crash_looping(name: &str) -> Pod {
        let mut pod = pod(name, None);
        pod.status = Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "worker".into(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("CrashLoopBackOff".into()),
                        message: None,
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        pod
    }

    #[test]
    fn backlog_of_25_with_10_per_replica_wants_3() {
        let pw = fleet();
        let plan = plan(&observe(&pw, 25), at(0));
        assert_eq!(plan.desired_replicas, 3);
        let sync = plan.sync.unwrap();
        assert_eq!(
            sync.scale,
            Some(Scale {
                from: 0,
                to: 3,
                demand: 25
            })
        );
        assert_eq!(sync.status.desired_replicas, 3);
        assert_eq!(sync.status.backlog.queued, 25);
        assert_eq!(sync.status.last_scale_time, Some(Time(at(0))));
        assert!(sync.write_status);
    }

    #[test]
    fn scaling_up_records_a_scaled_event() {
        let pw = fleet();
        let sync = plan(&observe(&pw, 25), at(0)).sync.unwrap();
        assert_eq!(sync.events.len(), 1);
        assert_eq!(sync.events[0].reason(), "Scaled");
        assert!(!sync.events[0].is_warning());
        assert_eq!(
            sync.events[0].note(),
            "scaled worker Deployment from 0 to 3 replicas (backlog 25)"
        );
    }

    #[test]
    fn unchanged_fleet_within_sync_interval_writes_nothing() {
        let pw = synced(fleet(), 3);
        let mut observed = observe(&pw, 30);
        observed.memory.last_desired = Some(3);
        observed.since_sync = Some(Duration::from_millis(300));
        let plan = plan(&observed, at(1));
        assert_eq!(plan.desired_replicas, 3);
        assert!(plan.sync.is_none());
        assert_eq!(plan.wake, Duration::from_millis(700));
    }

    #[test]
    fn a_skipped_sync_still_remembers_the_recommendation() {
        let pw = synced(fleet(), 3);
        let mut observed = observe(&pw, 30);
        observed.memory.last_desired = Some(3);
        observed.since_sync = Some(Duration::from_millis(300));
        let skipped = plan(&observed, at(1));
        assert!(skipped.sync.is_none());
        // The 3 recommended at 1 s holds a later scale-down inside the window.
        let mut history = skipped.history;
        let policy = scaling_policy(&pw);
        assert_eq!(
            scaler::desired_replicas(0, 3, &policy, &mut history, at(30)),
            3
        );
    }

    #[test]
    fn unchanged_fleet_past_sync_interval_syncs_again() {
        let pw = synced(fleet(), 3);
        let mut observed = observe(&pw, 30);
        observed.memory.last_desired = Some(3);
        observed.since_sync = Some(SYNC_INTERVAL);
        let sync = plan(&observed, at(1)).sync.expect("a full sync");
        assert!(sync.scale.is_none());
        assert!(sync.events.is_empty());
    }

    #[test]
    fn a_spec_edit_syncs_within_the_interval() {
        let mut pw = synced(fleet(), 3);
        pw.metadata.generation = Some(2);
        let mut observed = observe(&pw, 30);
        observed.memory.last_desired = Some(3);
        observed.memory.applied_generation = Some(1);
        observed.since_sync = Some(Duration::from_millis(10));
        let sync = plan(&observed, at(1)).sync.expect("a full sync");
        assert!(sync.apply_children);
        assert_eq!(sync.status.observed_generation, Some(2));
    }

    #[test]
    fn a_replica_change_syncs_within_the_interval() {
        let pw = synced(fleet(), 1);
        let mut observed = observe(&pw, 25);
        observed.memory.last_desired = Some(1);
        observed.since_sync = Some(Duration::from_millis(10));
        assert_eq!(plan(&observed, at(1)).sync.unwrap().scale.unwrap().to, 3);
    }

    #[test]
    fn children_are_applied_once_per_generation_and_again_each_resync_period() {
        let pw = fleet();
        let mut observed = observe(&pw, 0);
        assert!(plan(&observed, at(0)).sync.unwrap().apply_children);
        observed.memory.applied_generation = Some(1);
        observed.since_children = Some(Duration::from_secs(5));
        assert!(!plan(&observed, at(0)).sync.unwrap().apply_children);
        // A child deleted by hand comes back within the resync period.
        observed.since_children = Some(CHILDREN_RESYNC);
        assert!(plan(&observed, at(0)).sync.unwrap().apply_children);
    }

    fn on_subscription(namespace: &str, name: &str, subscription: &str) -> PipelineWorker {
        let mut pw = fleet();
        pw.metadata.namespace = Some(namespace.into());
        pw.metadata.name = Some(name.into());
        pw.spec.queue.subscription = subscription.into();
        pw
    }

    #[test]
    fn two_fleets_on_one_subscription_each_name_the_other() {
        let a = on_subscription("team-a", "a", "shared");
        let b = on_subscription("team-b", "b", "shared");
        let c = on_subscription("team-a", "c", "own");
        let all = [a.clone(), b.clone(), c.clone()];
        assert_eq!(subscription_sharers(&a, &all, "p"), ["team-b/b"]);
        assert_eq!(subscription_sharers(&b, &all, "p"), ["team-a/a"]);
        assert!(subscription_sharers(&c, &all, "p").is_empty());
    }

    #[test]
    fn the_same_subscription_name_in_another_project_is_not_shared() {
        let a = on_subscription("team-a", "a", "shared");
        let mut b = on_subscription("team-b", "b", "shared");
        b.spec.queue.project = Some("elsewhere".into());
        assert!(subscription_sharers(&a, &[a.clone(), b], "p").is_empty());
    }

    #[test]
    fn a_fleet_being_deleted_shares_nothing() {
        let a = on_subscription("team-a", "a", "shared");
        let mut b = on_subscription("team-b", "b", "shared");
        b.metadata.deletion_timestamp = Some(Time(at(0)));
        assert!(subscription_sharers(&a, &[a.clone(), b], "p").is_empty());
    }

    #[test]
    fn a_shared_subscription_degrades_the_fleet_and_is_announced() {
        let pw = fleet();
        let mut observed = observe(&pw, 0);
        observed.shared_with = vec!["team-b/b".into()];
        let sync = plan(&observed, at(0)).sync.unwrap();
        assert_eq!(
            sync.announced_problem,
            Some(DegradedReason::SubscriptionShared)
        );
        assert!(
            sync.events
                .iter()
                .any(|e| e.reason() == "SubscriptionShared")
        );
    }

    #[test]
    fn a_status_equal_to_the_shown_one_is_not_written() {
        let pw = synced(fleet(), 0);
        let observed = observe(&pw, 0);
        let sync = plan(&observed, at(5)).sync.unwrap();
        assert!(!sync.write_status);
    }

    #[test]
    fn empty_backlog_holds_replicas_for_the_window_then_scales_to_zero() {
        let pw = synced(fleet(), 3);
        let mut observed = observe(&pw, 25);
        let first = plan(&observed, at(0));
        observed.memory.history = first.history;
        observed.memory.last_desired = Some(3);
        observed.backlog = BacklogCount::default();

        let held = plan(&observed, at(30));
        assert_eq!(held.desired_replicas, 3);
        // A lower recommendation is pending: look again soon.
        assert_eq!(held.wake, Duration::from_secs(1));

        observed.memory.history = held.history;
        let dropped = plan(&observed, at(61));
        assert_eq!(dropped.desired_replicas, 0);
        let scale = dropped.sync.unwrap().scale.unwrap();
        assert_eq!((scale.direction(), scale.to), ("down", 0));
    }

    #[test]
    fn after_a_restart_the_status_replica_count_is_the_current_one() {
        let pw = synced(fleet(), 3);
        // Memory is empty, as after a restart; the backlog still wants 3.
        let plan = plan(&observe(&pw, 30), at(1));
        assert_eq!(plan.desired_replicas, 3);
        assert!(plan.sync.unwrap().scale.is_none());
    }

    #[test]
    fn after_a_restart_a_scale_down_still_waits_out_the_window() {
        let pw = synced(fleet(), 3);
        // Memory is empty, as after a restart; the backlog is gone.
        let plan = plan(&observe(&pw, 0), at(1));
        assert_eq!(plan.desired_replicas, 3, "the window starts again now");
    }

    #[test]
    fn a_scale_down_never_goes_below_the_busy_pods() {
        let pw = synced(fleet(), 3);
        let mut observed = observe(&pw, 0);
        observed.memory.last_desired = Some(3);
        observed.pods = vec![pod("a", None), pod("b", None), pod("c", None)];
        observed.running_by_pod = BTreeMap::from([("a".into(), 1), ("b".into(), 1)]);
        let mut quiet = pw.clone();
        quiet.spec.scaling.scale_down_stabilization_seconds = 0;
        observed.fleet = &quiet;
        assert_eq!(plan(&observed, at(100)).desired_replicas, 2);
    }

    #[test]
    fn manual_mode_follows_the_scale_subresource_not_the_backlog() {
        let mut pw = fleet();
        pw.spec.scaling.mode = ScalingMode::Manual;
        pw.spec.scaling.replicas = Some(2);
        let plan = plan(&observe(&pw, 100), at(0));
        assert_eq!(plan.desired_replicas, 2);
        // Manual mode never records recommendations.
        let mut history = plan.history;
        let policy = scaling_policy(&pw);
        assert_eq!(
            scaler::desired_replicas(0, 5, &policy, &mut history, at(1)),
            0
        );
    }

    #[test]
    fn manual_mode_without_replicas_keeps_the_current_count() {
        let mut pw = synced(fleet(), 4);
        pw.spec.scaling.mode = ScalingMode::Manual;
        assert_eq!(plan(&observe(&pw, 0), at(1)).desired_replicas, 4);
    }

    #[test]
    fn new_degraded_reason_is_announced_once() {
        let pw = fleet();
        let mut observed = observe(&pw, 0);
        observed.missing_secrets = vec!["llm/apiKey".into()];
        let first = plan(&observed, at(0)).sync.unwrap();
        assert_eq!(
            first.announced_problem,
            Some(DegradedReason::SecretNotFound)
        );
        let warning = first.events.iter().find(|e| e.is_warning()).unwrap();
        assert_eq!(warning.reason(), "SecretNotFound");
        assert!(warning.note().contains("llm/apiKey"));

        observed.memory.announced_problem = first.announced_problem;
        let again = plan(&observed, at(5)).sync.unwrap();
        assert!(again.events.is_empty());
    }

    #[test]
    fn a_different_degraded_reason_is_announced_again() {
        let pw = fleet();
        let mut observed = observe(&pw, 0);
        observed.memory.announced_problem = Some(DegradedReason::SecretNotFound);
        observed.pods = vec![crash_looping("p1")];
        let sync = plan(&observed, at(0)).sync.unwrap();
        assert_eq!(sync.events.len(), 1);
        assert_eq!(sync.events[0].reason(), "CrashLoopBackOff");
    }

    #[test]
    fn a_cleared_problem_is_forgotten_without_an_event() {
        let pw = fleet();
        let mut observed = observe(&pw, 0);
        observed.memory.announced_problem = Some(DegradedReason::TopicNotFound);
        let sync = plan(&observed, at(0)).sync.unwrap();
        assert_eq!(sync.announced_problem, None);
        assert!(sync.events.is_empty());
    }

    #[test]
    fn busy_pods_cost_their_running_jobs_and_unchanged_costs_are_skipped() {
        let pw = fleet();
        let mut observed = observe(&pw, 0);
        observed.pods = vec![
            pod("busy", None),
            pod("idle", None),
            pod("was-busy", Some("2")),
            pod("same", Some("1")),
        ];
        observed.running_by_pod = BTreeMap::from([("busy".into(), 2), ("same".into(), 1)]);
        let costs = plan(&observed, at(0)).sync.unwrap().pod_costs;
        assert_eq!(
            costs,
            [
                PodCost {
                    pod: "busy".into(),
                    cost: "2".into()
                },
                PodCost {
                    pod: "was-busy".into(),
                    cost: "0".into()
                },
            ]
        );
    }

    #[test]
    fn terminating_pods_get_no_cost() {
        let pw = fleet();
        let mut observed = observe(&pw, 0);
        let mut leaving = pod("leaving", None);
        leaving.metadata.deletion_timestamp = Some(Time(at(0)));
        observed.pods = vec![leaving];
        observed.running_by_pod = BTreeMap::from([("leaving".into(), 1)]);
        assert!(plan(&observed, at(0)).sync.unwrap().pod_costs.is_empty());
    }

    #[test]
    fn status_reports_the_deployments_replicas() {
        let pw = fleet();
        let mut observed = observe(&pw, 20);
        observed.deployment = Some(DeploymentStatus {
            replicas: Some(2),
            ready_replicas: Some(1),
            ..DeploymentStatus::default()
        });
        let status = plan(&observed, at(0)).sync.unwrap().status;
        assert_eq!((status.replicas, status.ready_replicas), (2, 1));
        assert_eq!(
            status.selector.as_deref(),
            Some(labels::selector_string(&pw).as_str())
        );
    }

    #[test]
    fn idle_healthy_fleet_wakes_once_a_minute() {
        let pw = fleet();
        assert_eq!(plan(&observe(&pw, 0), at(0)).wake, SLOW_CHECK_HEALTHY);
    }

    #[test]
    fn broken_queue_wakes_for_the_next_check() {
        let pw = fleet();
        let mut observed = observe(&pw, 0);
        observed.queue_problem = Some(Problem {
            reason: DegradedReason::SubscriptionNotFound,
            message: "subscription s does not exist".into(),
        });
        assert_eq!(plan(&observed, at(0)).wake, SLOW_CHECK_BROKEN);
    }

    #[test]
    fn a_fleet_refused_its_queue_gets_no_workers_whatever_its_backlog() {
        let mut pw = fleet();
        pw.spec.scaling.min_replicas = 2;
        pw.spec.scaling.max_replicas = 5;
        let mut observed = observe(&pw, 9);
        observed.queue_problem = Some(Problem {
            reason: DegradedReason::QueueOwnedElsewhere,
            message: "subscription s belongs to PipelineWorker team-a/a".into(),
        });
        let planned = plan(&observed, at(0));
        assert_eq!(planned.desired_replicas, 0);
        let status = planned.sync.expect("a status write").status;
        let queue = status
            .conditions
            .iter()
            .find(|c| c.type_ == "QueueReady")
            .unwrap();
        assert_eq!(
            (queue.status.as_str(), queue.reason.as_str()),
            ("False", "QueueOwnedElsewhere")
        );
    }

    #[test]
    fn a_fleet_refused_its_queue_shares_nothing_with_the_owner() {
        let owner = fleet();
        let mut intruder = fleet();
        intruder.metadata.namespace = Some("team-b".into());
        let sharers = |other: &PipelineWorker| subscription_sharers(&owner, [other], "p");
        assert_eq!(
            sharers(&intruder).len(),
            1,
            "sharing is reported until one is refused"
        );
        intruder.status = Some(PipelineWorkerStatus {
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "QueueReady".into(),
                status: "False".into(),
                reason: "QueueOwnedElsewhere".into(),
                message: String::new(),
                last_transition_time: Time(at(0)),
                observed_generation: None,
            }],
            ..PipelineWorkerStatus::default()
        });
        assert!(sharers(&intruder).is_empty());
    }

    #[test]
    fn backoff_job_wakes_the_fleet_when_its_retry_is_due() {
        let pw = fleet();
        let mut observed = observe(&pw, 0);
        observed.next_retry = Some(at(0).checked_add(SignedDuration::from_secs(7)).unwrap());
        assert_eq!(plan(&observed, at(0)).wake, Duration::from_secs(7));
    }

    #[test]
    fn slow_checks_run_first_on_spec_edits_and_on_their_interval() {
        assert!(slow_check_due(None, false, Some(1)));
        let recent = Some((Duration::from_secs(5), Some(1)));
        assert!(!slow_check_due(recent, false, Some(1)));
        assert!(slow_check_due(recent, false, Some(2)));
        assert!(slow_check_due(recent, true, Some(1)));
        assert!(slow_check_due(
            Some((SLOW_CHECK_HEALTHY, Some(1))),
            false,
            Some(1)
        ));
    }

    #[test]
    fn an_unreachable_archive_shows_on_the_fleet_and_leaves_it_ready() {
        let pw = fleet();
        let mut observed = observe(&pw, 0);
        observed.archive = Some(ArchiveView {
            health: crate::archive::ArchiveHealth::Unavailable {
                since: at(0),
                error: "connection refused".into(),
            },
            overdue: 3,
        });
        let status = plan(&observed, at(5)).sync.unwrap().status;
        let archived = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Archived")
            .expect("an Archived condition");
        assert_eq!(
            (archived.status.as_str(), archived.reason.as_str()),
            ("False", "ArchiveUnavailable")
        );
        assert!(
            archived.message.contains("3 finished Jobs"),
            "{}",
            archived.message
        );
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
    }

    #[test]
    fn without_an_archive_there_is_no_archived_condition() {
        let pw = fleet();
        let status = plan(&observe(&pw, 0), at(5)).sync.unwrap().status;
        assert!(status.conditions.iter().all(|c| c.type_ != "Archived"));
    }
}
