//! The PipelineWorker controller: keeps each fleet's Deployment,
//! ServiceAccount, RBAC and Service in place, its queue present, its size
//! matched to its backlog, and its status truthful.
//!
//! Level-triggered: every reconcile computes the whole desired state from
//! what it observes now (caches of Jobs and pods, the queue), so a missed
//! event or an operator restart changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_crds::pipeline_worker::{PipelineWorkerStatus, ScalingMode};
use drover_crds::{Job, PipelineWorker};
use drover_queue::{QueueAdmin, QueueError};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::backlog;
use crate::config::OperatorConfig;
use crate::deployment::{secret_refs, worker_deployment};
use crate::health::{self, Observation, Problem};
use crate::labels::{self, FIELD_MANAGER, WORKER_LABEL};
use crate::metrics::{BacklogLabels, ErrorLabels, FleetLabels, Metrics, ScaleLabels};
use crate::rbac;
use crate::scaler::{self, RecommendationHistory, ScalingPolicy};
use crate::service::metrics_service;

/// Pod annotation the ReplicaSet controller reads to pick pods to remove:
/// lower cost goes first, so idle workers are stopped before busy ones.
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// How often a healthy queue and the Secrets are checked again.
const SLOW_CHECK_HEALTHY: Duration = Duration::from_secs(60);
/// How soon a missing topic, subscription or Secret is looked for again.
const SLOW_CHECK_BROKEN: Duration = Duration::from_secs(2);
/// Job events arrive in bursts; one reconcile answers a burst.
const DEBOUNCE: Duration = Duration::from_millis(10);
/// Under a stream of Job events a fleet is reconciled many times a second.
/// A reconcile that changes no replica count writes nothing (no Deployment
/// apply, pod costs or status) if the last full sync is younger than this;
/// it schedules one for when the interval is up instead, so a hand edit is
/// still reverted and the status still catches up within it.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("PipelineWorker has no namespace")]
    MissingNamespace,
    #[error("cannot apply {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        source: kube::Error,
    },
    #[error("cannot write the status of {name}: {source}")]
    Status { name: String, source: kube::Error },
    #[error("cannot read Secret {name}: {source}")]
    Secret { name: String, source: kube::Error },
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl Error {
    /// Short label for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::MissingNamespace => "missing_namespace",
            Error::Apply { .. } => "apply",
            Error::Status { .. } => "status",
            Error::Secret { .. } => "secret",
            Error::Queue(_) => "queue",
        }
    }
}

/// What the controller remembers per fleet between reconciles.
#[derive(Debug, Default)]
struct FleetMemory {
    /// Generation whose ServiceAccount, RBAC and Service were applied.
    applied_generation: Option<i64>,
    /// Last check of the queue and Secrets, and what it found.
    checked: Option<(Instant, Option<i64>)>,
    queue_problem: Option<Problem>,
    missing_secrets: Vec<String>,
    history: RecommendationHistory,
    /// Replicas this process last set; the status may lag behind it.
    last_desired: Option<i32>,
    /// Degraded reason last announced with an Event.
    announced_problem: Option<&'static str>,
    /// When the Deployment, pod costs and status were last written.
    last_sync: Option<Instant>,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub queue: QueueAdmin,
    pub jobs: Store<Job>,
    pub pods: Store<Pod>,
    pub recorder: Recorder,
    pub metrics: Metrics,
    memory: Mutex<HashMap<ObjectRef<PipelineWorker>, FleetMemory>>,
}

impl Context {
    fn memory<T>(
        &self,
        key: &ObjectRef<PipelineWorker>,
        f: impl FnOnce(&mut FleetMemory) -> T,
    ) -> T {
        let mut all = self
            .memory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(all.entry(key.clone()).or_default())
    }
}

/// Runs the controller until the stream ends (shutdown).
pub async fn run(
    client: Client,
    config: OperatorConfig,
    queue: QueueAdmin,
    recorder: Recorder,
    metrics: Metrics,
) {
    let fleets = Api::<PipelineWorker>::all(client.clone());
    let (fleet_reader, fleet_writer) = reflector::store();
    // Status writes bump no generation; filtering on it keeps our own status
    // patches from waking us in a loop.
    let fleet_stream = watcher(fleets, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(fleet_writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());

    let (jobs, job_writer) = reflector::store();
    let job_stream = watcher(
        Api::<Job>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(job_writer)
    .touched_objects();

    let (pods, pod_writer) = reflector::store();
    let pod_config = watcher::Config::default().labels("app.kubernetes.io/name=drover-worker");
    let pod_stream = watcher(Api::<Pod>::all(client.clone()), pod_config)
        .default_backoff()
        .reflect(pod_writer)
        .touched_objects();

    let context = Arc::new(Context {
        client: client.clone(),
        config,
        queue,
        jobs,
        pods,
        recorder,
        metrics,
        memory: Mutex::default(),
    });

    Controller::for_stream(fleet_stream, fleet_reader)
        .owns(Api::<Deployment>::all(client), watcher::Config::default())
        .watches_stream(job_stream, |job: Job| {
            let namespace = job.namespace()?;
            Some(ObjectRef::new(&job.spec.worker).within(&namespace))
        })
        .watches_stream(pod_stream, |pod: Pod| {
            let namespace = pod.namespace()?;
            let fleet = pod.labels().get(WORKER_LABEL)?.clone();
            Some(ObjectRef::new(&fleet).within(&namespace))
        })
        .with_config(kube::runtime::controller::Config::default().debounce(DEBOUNCE))
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "fleet reconcile did not complete");
            }
        })
        .await;
}

fn error_policy(pw: Arc<PipelineWorker>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(worker = %pw.name_any(), namespace = ?pw.namespace(), %error, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            controller: "fleet",
            error: error.metric_label(),
        })
        .inc();
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile(pw: Arc<PipelineWorker>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_fleet(&pw, &ctx).await;
    ctx.metrics.observe_reconcile("fleet", started.elapsed());
    result
}

async fn reconcile_fleet(pw: &PipelineWorker, ctx: &Context) -> Result<Action, Error> {
    let namespace = pw.namespace().ok_or(Error::MissingNamespace)?;
    let name = pw.name_any();
    if pw.meta().deletion_timestamp.is_some() {
        // The garbage collector removes what the fleet owns.
        return Ok(Action::await_change());
    }
    let key = ObjectRef::from_obj(pw);
    let now = Timestamp::now();
    let generation = pw.meta().generation;

    if ctx.memory(&key, |m| {
        m.applied_generation != generation || m.applied_generation.is_none()
    }) {
        apply_supporting_objects(pw, &ctx.client, &namespace).await?;
        ctx.memory(&key, |m| m.applied_generation = generation);
    }
    check_queue_and_secrets(pw, ctx, &key, &namespace).await?;

    // Size the fleet from the Job cache.
    let jobs = ctx.jobs.state();
    let count = backlog::count(jobs.iter().map(|j| j.as_ref()), &namespace, &name, now);
    let current = ctx
        .memory(&key, |m| m.last_desired)
        .unwrap_or_else(|| current_replicas(pw));
    let desired = match pw.spec.scaling.mode {
        ScalingMode::Manual => pw.spec.scaling.replicas.unwrap_or(current).max(0),
        ScalingMode::Auto => {
            let policy = scaling_policy(pw);
            ctx.memory(&key, |m| {
                scaler::desired_replicas(count.demand, current, &policy, &mut m.history, now)
            })
        }
    };

    let since_sync = ctx.memory(&key, |m| m.last_sync.map(|at| at.elapsed()));
    if desired == current
        && let Some(since) = since_sync
        && since < SYNC_INTERVAL
        && pw.status.as_ref().and_then(|s| s.observed_generation) == generation
    {
        return Ok(Action::requeue(SYNC_INTERVAL - since));
    }
    ctx.memory(&key, |m| m.last_sync = Some(Instant::now()));

    let deployment = worker_deployment(pw, &ctx.config, desired);
    let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), &namespace);
    let applied = apply(&deployments, "Deployment", &deployment).await?;
    ctx.memory(&key, |m| m.last_desired = Some(desired));
    let scaled = desired != current;
    if scaled {
        announce_scale(pw, ctx, &namespace, current, desired, count.demand).await;
    }

    let pods = fleet_pods(ctx, &namespace, &name);
    protect_busy_pods(ctx, &namespace, &pods, &jobs).await;

    let ready = applied
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let replicas = applied
        .status
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    let (queue_problem, missing_secrets) = ctx.memory(&key, |m| {
        (m.queue_problem.clone(), m.missing_secrets.clone())
    });
    let observation = Observation {
        queue_problem,
        missing_secrets,
        desired_replicas: desired,
        ready_replicas: ready,
        pods,
    };
    let previous = pw.status.clone().unwrap_or_default();
    let now_time = Time(now);
    let conditions = health::conditions(&observation, generation, &now_time, &previous.conditions);
    announce_problem(pw, ctx, &key, &conditions).await;

    let status = PipelineWorkerStatus {
        conditions,
        replicas,
        ready_replicas: ready,
        desired_replicas: desired,
        selector: Some(labels::selector_string(pw)),
        backlog: count.backlog,
        last_scale_time: if scaled {
            Some(now_time)
        } else {
            previous.last_scale_time.clone()
        },
        observed_generation: generation,
    };
    if status != previous {
        let fleets = Api::<PipelineWorker>::namespaced(ctx.client.clone(), &namespace);
        let patch = json!({
            "apiVersion": "drover.dev/v1alpha1",
            "kind": "PipelineWorker",
            "status": status,
        });
        fleets
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|source| Error::Status {
                name: name.clone(),
                source,
            })?;
    }
    record_metrics(ctx, &namespace, &name, &status);

    Ok(Action::requeue(next_wake(
        pw, ctx, &key, desired, current, now,
    )))
}

/// After a restart, the replica count last recorded in the status.
fn current_replicas(pw: &PipelineWorker) -> i32 {
    pw.status.as_ref().map(|s| s.desired_replicas).unwrap_or(0)
}

/// ServiceAccount, Role, RoleBinding and Service change only with the spec.
async fn apply_supporting_objects(
    pw: &PipelineWorker,
    client: &Client,
    namespace: &str,
) -> Result<(), Error> {
    if pw.spec.service_account_name.is_none() {
        let accounts = Api::namespaced(client.clone(), namespace);
        apply(&accounts, "ServiceAccount", &rbac::service_account(pw)).await?;
    }
    apply(
        &Api::namespaced(client.clone(), namespace),
        "Role",
        &rbac::role(pw),
    )
    .await?;
    apply(
        &Api::namespaced(client.clone(), namespace),
        "RoleBinding",
        &rbac::role_binding(pw),
    )
    .await?;
    apply(
        &Api::namespaced(client.clone(), namespace),
        "Service",
        &metrics_service(pw),
    )
    .await?;
    Ok(())
}

async fn apply<K>(api: &Api<K>, kind: &'static str, object: &K) -> Result<K, Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| Error::Apply { kind, name, source })
}

/// Pub/Sub and Secret lookups cost API calls, so they run when the spec
/// changed, soon after a problem was found, or once a minute.
async fn check_queue_and_secrets(
    pw: &PipelineWorker,
    ctx: &Context,
    key: &ObjectRef<PipelineWorker>,
    namespace: &str,
) -> Result<(), Error> {
    let generation = pw.meta().generation;
    let due = ctx.memory(key, |m| match m.checked {
        None => true,
        Some((at, checked_generation)) => {
            let broken = m.queue_problem.is_some() || !m.missing_secrets.is_empty();
            let interval = if broken {
                SLOW_CHECK_BROKEN
            } else {
                SLOW_CHECK_HEALTHY
            };
            checked_generation != generation || at.elapsed() >= interval
        }
    });
    if !due {
        return Ok(());
    }
    let queue_problem = match ctx.queue.ensure(pw, &ctx.config.pubsub_project).await? {
        Ok(_) => None,
        Err(problem) => Some(Problem {
            reason: problem.reason(),
            message: problem.to_string(),
        }),
    };
    let missing_secrets = missing_secrets(pw, &ctx.client, namespace).await?;
    ctx.memory(key, |m| {
        m.checked = Some((Instant::now(), generation));
        m.queue_problem = queue_problem;
        m.missing_secrets = missing_secrets;
    });
    Ok(())
}

/// `name/key` of every referenced Secret key that does not exist.
async fn missing_secrets(
    pw: &PipelineWorker,
    client: &Client,
    namespace: &str,
) -> Result<Vec<String>, Error> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let mut missing = Vec::new();
    for reference in secret_refs(pw) {
        if reference.optional == Some(true) {
            continue;
        }
        let found = secrets
            .get_opt(&reference.name)
            .await
            .map_err(|source| Error::Secret {
                name: reference.name.clone(),
                source,
            })?;
        let has_key = found.is_some_and(|s| {
            s.data
                .as_ref()
                .is_some_and(|d| d.contains_key(&reference.key))
                || s.string_data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(&reference.key))
        });
        if !has_key {
            missing.push(format!("{}/{}", reference.name, reference.key));
        }
    }
    Ok(missing)
}

fn scaling_policy(pw: &PipelineWorker) -> ScalingPolicy {
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

fn fleet_pods(ctx: &Context, namespace: &str, name: &str) -> Vec<Pod> {
    ctx.pods
        .state()
        .iter()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(namespace)
                && p.labels().get(WORKER_LABEL).map(String::as_str) == Some(name)
        })
        .map(|p| p.as_ref().clone())
        .collect()
}

/// Sets each pod's deletion cost to the number of Jobs it runs, so a scale
/// down removes idle pods first. Writes only when the cost changed.
async fn protect_busy_pods(ctx: &Context, namespace: &str, pods: &[Pod], jobs: &[Arc<Job>]) {
    let mut running: BTreeMap<&str, i64> = BTreeMap::new();
    for job in jobs {
        if job.metadata.namespace.as_deref() != Some(namespace) {
            continue;
        }
        if let Some(claim) = job.status.as_ref().and_then(|s| s.claim.as_ref())
            && job.status.as_ref().map(|s| s.phase) == Some(drover_crds::JobPhase::Running)
        {
            *running.entry(claim.pod.as_str()).or_default() += 1;
        }
    }
    let api = Api::<Pod>::namespaced(ctx.client.clone(), namespace);
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pod.name_any();
        let cost = running.get(name.as_str()).copied().unwrap_or(0).to_string();
        let current = pod.annotations().get(POD_DELETION_COST);
        if current == Some(&cost) || (current.is_none() && cost == "0") {
            continue;
        }
        let patch = json!({"metadata": {"annotations": {POD_DELETION_COST: cost}}});
        if let Err(error) = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            // Best effort: a missed cost only means a busier pod may be picked.
            tracing::debug!(pod = %name, %error, "cannot set pod deletion cost");
        }
    }
}

async fn announce_scale(
    pw: &PipelineWorker,
    ctx: &Context,
    namespace: &str,
    from: i32,
    to: i32,
    demand: u32,
) {
    let direction = if to > from { "up" } else { "down" };
    ctx.metrics
        .scale_decisions
        .get_or_create(&ScaleLabels {
            namespace: namespace.to_owned(),
            worker: pw.name_any(),
            direction,
        })
        .inc();
    tracing::info!(worker = %pw.name_any(), namespace, from, to, demand, "scaled");
    publish(
        ctx,
        pw,
        EventType::Normal,
        "Scaled",
        format!("scaled worker Deployment from {from} to {to} replicas (backlog {demand})"),
    )
    .await;
}

/// One Warning Event per new Degraded reason, so `kubectl describe` shows it.
async fn announce_problem(
    pw: &PipelineWorker,
    ctx: &Context,
    key: &ObjectRef<PipelineWorker>,
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) {
    let Some(degraded) = conditions.iter().find(|c| c.type_ == "Degraded") else {
        return;
    };
    let problem = (degraded.status == "True").then(|| reason_static(&degraded.reason));
    let changed = ctx.memory(key, |m| {
        let changed = m.announced_problem != problem;
        m.announced_problem = problem;
        changed
    });
    if let (true, Some(reason)) = (changed, problem) {
        publish(
            ctx,
            pw,
            EventType::Warning,
            reason,
            degraded.message.clone(),
        )
        .await;
    }
}

/// Condition reasons are a closed set; this maps them back to `'static`.
fn reason_static(reason: &str) -> &'static str {
    [
        "SecretNotFound",
        "TopicNotFound",
        "SubscriptionNotFound",
        "DeadLetterTopicNotFound",
        "SubscriptionTopicMismatch",
        "ImagePullBackOff",
        "CrashLoopBackOff",
        "CreateContainerConfigError",
    ]
    .into_iter()
    .find(|known| *known == reason)
    .unwrap_or("Degraded")
}

async fn publish(ctx: &Context, pw: &PipelineWorker, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &pw.object_ref(&())).await {
        tracing::debug!(%error, "cannot publish event");
    }
}

fn record_metrics(ctx: &Context, namespace: &str, name: &str, status: &PipelineWorkerStatus) {
    let fleet = FleetLabels {
        namespace: namespace.to_owned(),
        worker: name.to_owned(),
    };
    ctx.metrics
        .desired_replicas
        .get_or_create(&fleet)
        .set(i64::from(status.desired_replicas));
    ctx.metrics
        .ready_replicas
        .get_or_create(&fleet)
        .set(i64::from(status.ready_replicas));
    for (state, value) in [
        ("queued", status.backlog.queued),
        ("running", status.backlog.running),
        ("backoff", status.backlog.backoff),
    ] {
        ctx.metrics
            .backlog
            .get_or_create(&BacklogLabels {
                namespace: namespace.to_owned(),
                worker: name.to_owned(),
                state,
            })
            .set(i64::from(value));
    }
}

/// When to look again without any event: when a pending scale-down may
/// happen, when a Backoff Job becomes due, or when a broken queue or Secret
/// should be checked again.
fn next_wake(
    pw: &PipelineWorker,
    ctx: &Context,
    key: &ObjectRef<PipelineWorker>,
    desired: i32,
    current: i32,
    now: Timestamp,
) -> Duration {
    let mut wake = SLOW_CHECK_HEALTHY;
    let recommended_lower = {
        let jobs = ctx.jobs.state();
        let namespace = pw.namespace().unwrap_or_default();
        let count = backlog::count(
            jobs.iter().map(|j| j.as_ref()),
            &namespace,
            &pw.name_any(),
            now,
        );
        if let Some(at) = backlog::next_retry(
            jobs.iter().map(|j| j.as_ref()),
            &namespace,
            &pw.name_any(),
            now,
        ) {
            let until = at.duration_since(now);
            wake = wake.min(Duration::try_from(until).unwrap_or(Duration::ZERO));
        }
        scaler::recommended_replicas(count.demand, &scaling_policy(pw)) < desired.max(current)
    };
    if recommended_lower {
        // Check again when older recommendations start leaving the window.
        wake = wake.min(Duration::from_secs(1));
    }
    if ctx.memory(key, |m| {
        m.queue_problem.is_some() || !m.missing_secrets.is_empty()
    }) {
        wake = wake.min(SLOW_CHECK_BROKEN);
    }
    wake
}
