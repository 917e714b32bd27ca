//! The PipelineWorker controller: keeps each fleet's Deployment,
//! ServiceAccount, RBAC and Service in place, its queue present, its size
//! matched to its backlog, and its status truthful.
//!
//! Each reconcile runs in three parts: `observe` reads the caches (Jobs,
//! pods, Deployments), the queue and Secret checks and what this process
//! remembers; `fleet_plan::plan` decides, without I/O; `apply_plan` writes.
//! Level-triggered: every reconcile computes the whole desired state from
//! what it observes now, so a missed event or an operator restart changes
//! nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_crds::fleet_conditions::{DegradedReason, FleetCondition};
use drover_crds::pipeline_worker::PipelineWorkerStatus;
use drover_crds::{Job, PipelineWorker};
use drover_queue::ownership::Owner;
use drover_queue::{QueueAdmin, QueueError};
use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::admission_state::AdmissionState;
use crate::archive::condition::ArchiveView;
use crate::archive::{Archive, ArchiveHealth};
use crate::config::OperatorConfig;
use crate::deployment::{pipeline_secrets, worker_deployment};
use crate::fleet_plan::{
    self, FleetEvent, FleetMemory, FleetObservation, FleetPlan, POD_DELETION_COST, PodCost,
};
use crate::health::Problem;
use crate::job_policy::{NextStep, next_step};
use crate::labels::{self, FIELD_MANAGER, WORKER_LABEL};
use crate::leader::LeaderGate;
use crate::metrics::{BacklogLabels, ErrorLabels, FleetLabels, Metrics, ScaleLabels};
use crate::rbac;
use crate::service::metrics_service;
use crate::watches::FleetWatches;

/// Job events arrive in bursts; one reconcile answers a burst.
const DEBOUNCE: Duration = Duration::from_millis(10);

/// Fleet reconciles in flight at once: each makes several apiserver and
/// Pub/Sub calls, and each concurrent request holds a connection.
const CONCURRENT_RECONCILES: u16 = 8;

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
    #[error("this replica cannot prove it still leads; it writes nothing")]
    NotLeading,
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
            Error::NotLeading => "not_leading",
        }
    }
}

/// What the controller remembers per fleet between reconciles, keyed by the
/// PipelineWorker's uid: one deleted and created again under the same name
/// is a new fleet that gets all its children applied again.
#[derive(Debug, Default)]
struct FleetState {
    /// What the plan reads back.
    plan: FleetMemory,
    /// When the Deployment, pod costs and status were last written.
    last_sync: Option<Instant>,
    /// When the ServiceAccount, RBAC and Service were last applied.
    children_applied: Option<Instant>,
    /// Last check of the queue and Secrets, the generation it checked, and
    /// what it found.
    checked: Option<(Instant, Option<i64>)>,
    queue_problem: Option<Problem>,
    missing_secrets: Vec<String>,
}

impl FleetState {
    fn broken(&self) -> bool {
        self.queue_problem.is_some() || !self.missing_secrets.is_empty()
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub queue: QueueAdmin,
    pub jobs: Store<Job>,
    /// Each fleet's Job counts, kept from the Job watch.
    pub admission: Arc<AdmissionState>,
    pub pods: Store<Pod>,
    pub deployments: Store<Deployment>,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// The shared PipelineWorker cache (to find fleets on one subscription).
    pub fleets: Store<PipelineWorker>,
    /// Asks for a reconcile of another fleet (one that shares a subscription).
    wake: mpsc::UnboundedSender<ObjectRef<PipelineWorker>>,
    /// Closed once this replica cannot prove it still leads: nothing is written then.
    pub gate: LeaderGate,
    memory: Mutex<HashMap<String, FleetState>>,
}

impl Context {
    /// Refuses to go on once this replica cannot prove it leads.
    fn leading(&self) -> Result<(), Error> {
        if self.gate.leads() {
            Ok(())
        } else {
            Err(Error::NotLeading)
        }
    }

    /// Runs `f` on the memory of the fleet with uid `key`.
    fn memory<T>(&self, key: &str, f: impl FnOnce(&mut FleetState) -> T) -> T {
        f(self.lock_memory().entry(key.to_owned()).or_default())
    }

    /// Forgets every fleet that is no longer in the PipelineWorker cache.
    fn forget_deleted(&self) {
        let live: HashSet<String> = self.fleets.state().iter().filter_map(|f| f.uid()).collect();
        self.lock_memory().retain(|uid, _| live.contains(uid));
    }

    fn lock_memory(&self) -> std::sync::MutexGuard<'_, HashMap<String, FleetState>> {
        // A panic elsewhere cannot leave the memory half-written.
        self.memory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs the controller until the stream ends (shutdown). It drives the
/// shared Job and PipelineWorker watches in `watches`.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    queue: QueueAdmin,
    recorder: Recorder,
    metrics: Metrics,
    watches: FleetWatches,
    gate: LeaderGate,
) {
    // Status writes bump no generation; filtering on it keeps our own status
    // patches from waking us in a loop.
    let fleet_stream = watches
        .fleet_events
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    // Deletions count too: a deleted Job shrinks the backlog.
    let job_stream = watches.job_events.touched_objects();

    let (pods, pod_writer) = reflector::store();
    let pod_config = watcher::Config::default().labels("app.kubernetes.io/name=drover-worker");
    let pod_stream = watcher(Api::<Pod>::all(client.clone()), pod_config)
        .default_backoff()
        .modify(drop_managed_fields)
        .reflect(pod_writer)
        .touched_objects();

    // Only the operator's own Deployments are cached; one whose label was
    // edited away leaves the cache, which wakes its fleet to put it back.
    let (deployments, deployment_writer) = reflector::store();
    let deployment_config =
        watcher::Config::default().labels("app.kubernetes.io/managed-by=drover-operator");
    let deployment_stream = watcher(Api::<Deployment>::all(client.clone()), deployment_config)
        .default_backoff()
        .modify(drop_managed_fields)
        .reflect(deployment_writer)
        .touched_objects();

    let (wake, woken) = mpsc::unbounded();
    if let Some(archive) = &config.archive {
        tokio::spawn(wake_on_archive_change(
            archive.clone(),
            watches.fleets.clone(),
            wake.clone(),
        ));
    }
    let context = Arc::new(Context {
        client,
        config,
        queue,
        jobs: watches.jobs,
        admission: watches.admission,
        pods,
        deployments,
        recorder,
        metrics,
        fleets: watches.fleets.clone(),
        wake,
        gate,
        memory: Mutex::default(),
    });

    Controller::for_stream(fleet_stream, watches.fleets)
        .reconcile_on(woken)
        .owns_stream(deployment_stream)
        .watches_stream(job_stream, |job: Job| {
            let namespace = job.namespace()?;
            Some(ObjectRef::new(&job.spec.worker).within(&namespace))
        })
        .watches_stream(pod_stream, |pod: Pod| {
            let namespace = pod.namespace()?;
            let fleet = pod.labels().get(WORKER_LABEL)?.clone();
            Some(ObjectRef::new(&fleet).within(&namespace))
        })
        .with_config(
            kube::runtime::controller::Config::default()
                .debounce(DEBOUNCE)
                .concurrency(CONCURRENT_RECONCILES),
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "fleet reconcile did not complete");
            }
        })
        .await;
}

/// Managed fields are most of a cached Deployment's or Pod's bytes (about
/// 30 KB a Deployment), and the controller reads none of them.
fn drop_managed_fields<K: ResourceExt>(object: &mut K) {
    object.managed_fields_mut().clear();
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
    let result = observe_plan_apply(&pw, &ctx).await;
    ctx.metrics.observe_reconcile("fleet", started.elapsed());
    result
}

async fn observe_plan_apply(pw: &PipelineWorker, ctx: &Context) -> Result<Action, Error> {
    let namespace = pw.namespace().ok_or(Error::MissingNamespace)?;
    ctx.forget_deleted();
    if pw.meta().deletion_timestamp.is_some() {
        // The garbage collector removes what the fleet owns.
        ctx.lock_memory().remove(&pw.uid().unwrap_or_default());
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    ctx.leading()?;
    let observed = observe(pw, ctx, &namespace, now).await?;
    // Zero without an archive too: the alert's recording rule always has a series.
    let held_back = observed.archive.as_ref().map_or(0, |view| view.overdue);
    ctx.metrics
        .archive_held_back
        .get_or_create(&FleetLabels {
            namespace: namespace.clone(),
            worker: pw.name_any(),
        })
        .set(i64::try_from(held_back).unwrap_or(i64::MAX));
    let plan = fleet_plan::plan(&observed, now);
    ctx.leading()?;
    apply_plan(pw, ctx, &namespace, plan).await
}

/// What the caches say about the fleet now, what the queue and Secret checks
/// found (re-running them when due), and what this process remembers.
async fn observe<'a>(
    pw: &'a PipelineWorker,
    ctx: &Context,
    namespace: &str,
    now: Timestamp,
) -> Result<FleetObservation<'a>, Error> {
    let key = pw.uid().unwrap_or_default();
    check_queue_and_secrets(pw, ctx, &key, namespace).await?;
    let fleets = ctx.fleets.state();
    let shared_with = fleet_plan::subscription_sharers(
        pw,
        fleets.iter().map(|f| f.as_ref()),
        &ctx.config.pubsub_project,
    );
    wake_sharers(ctx, &fleets, &shared_with);
    let name = pw.name_any();
    let jobs = ctx
        .admission
        .backlog(&(namespace.to_owned(), name.clone()), now);
    let deployment = ctx
        .deployments
        .get(&ObjectRef::new(&labels::child_name(pw)).within(namespace))
        .and_then(|d| d.status.clone());
    let (memory, since_sync, since_children, queue_problem, missing_secrets) =
        ctx.memory(&key, |m| {
            (
                m.plan.clone(),
                m.last_sync.map(|at| at.elapsed()),
                m.children_applied.map(|at| at.elapsed()),
                m.queue_problem.clone(),
                m.missing_secrets.clone(),
            )
        });
    Ok(FleetObservation {
        fleet: pw,
        backlog: jobs.count,
        next_retry: jobs.next_retry,
        running_by_pod: jobs.running_by_pod,
        pods: fleet_pods(ctx, namespace, &name),
        deployment,
        queue_problem,
        missing_secrets,
        shared_with,
        since_children,
        memory,
        since_sync,
        archive: archive_view(ctx, pw, namespace, now),
    })
}

/// The archive's health for the fleet's `Archived` condition, with the
/// fleet's Jobs held back past their TTL (counted only while it is down).
fn archive_view(
    ctx: &Context,
    pw: &PipelineWorker,
    namespace: &str,
    now: Timestamp,
) -> Option<ArchiveView> {
    let health = ctx.config.archive.as_ref()?.health();
    let overdue = match health {
        ArchiveHealth::Unavailable { .. } => ctx
            .jobs
            .state()
            .iter()
            .filter(|job| {
                job.spec.worker == pw.name_any()
                    && job.namespace().as_deref() == Some(namespace)
                    && job.meta().deletion_timestamp.is_none()
                    && next_step(job, Some(pw), None, now) == NextStep::Delete
            })
            .count(),
        _ => 0,
    };
    Some(ArchiveView { health, overdue })
}

/// Reconciles every fleet when the archive comes or goes, so their
/// `Archived` conditions follow within a reconcile.
async fn wake_on_archive_change(
    archive: Archive,
    fleets: Store<PipelineWorker>,
    wake: mpsc::UnboundedSender<ObjectRef<PipelineWorker>>,
) {
    let mut health = archive.subscribe();
    while health.changed().await.is_ok() {
        for fleet in fleets.state() {
            // The receiver lives as long as the controller.
            let _ = wake.unbounded_send(ObjectRef::from_obj(fleet.as_ref()));
        }
    }
}

/// Reconciles the other fleets on this fleet's subscription that do not
/// show it yet, so both are Degraded at once rather than at their next sync.
fn wake_sharers(ctx: &Context, fleets: &[Arc<PipelineWorker>], shared_with: &[String]) {
    for other in fleets {
        let name = format!(
            "{}/{}",
            other.namespace().unwrap_or_default(),
            other.name_any()
        );
        if !shared_with.contains(&name) {
            continue;
        }
        let shows_it = other.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == FleetCondition::Degraded.as_str()
                    && c.reason == DegradedReason::SubscriptionShared.as_str()
            })
        });
        if !shows_it {
            // The receiver lives as long as the controller; a send after it is gone changes nothing.
            let _ = ctx.wake.unbounded_send(ObjectRef::from_obj(other.as_ref()));
        }
    }
}

/// Makes the plan's writes, remembering each as it succeeds.
async fn apply_plan(
    pw: &PipelineWorker,
    ctx: &Context,
    namespace: &str,
    plan: FleetPlan,
) -> Result<Action, Error> {
    let key = pw.uid().unwrap_or_default();
    ctx.memory(&key, |m| m.plan.history = plan.history);
    let Some(sync) = plan.sync else {
        return Ok(Action::requeue(plan.wake));
    };
    ctx.memory(&key, |m| m.last_sync = Some(Instant::now()));

    if sync.apply_children {
        apply_supporting_objects(pw, &ctx.client, namespace, ctx.config.secret_check.as_ref())
            .await?;
        ctx.memory(&key, |m| {
            m.plan.applied_generation = pw.meta().generation;
            m.children_applied = Some(Instant::now());
        });
    }
    let deployment = worker_deployment(pw, &ctx.config, plan.desired_replicas);
    let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), namespace);
    apply(&deployments, "Deployment", &deployment).await?;
    ctx.memory(&key, |m| m.plan.last_desired = Some(plan.desired_replicas));
    if let Some(scale) = sync.scale {
        ctx.metrics
            .scale_decisions
            .get_or_create(&ScaleLabels {
                namespace: namespace.to_owned(),
                worker: pw.name_any(),
                direction: scale.direction(),
            })
            .inc();
        tracing::info!(worker = %pw.name_any(), namespace, from = scale.from, to = scale.to, demand = scale.demand, "scaled");
    }
    ctx.memory(&key, |m| m.plan.announced_problem = sync.announced_problem);
    for event in &sync.events {
        record_event(ctx, pw, event).await;
    }
    set_pod_costs(ctx, namespace, &sync.pod_costs).await;
    if sync.write_status {
        write_status(pw, ctx, namespace, &sync.status).await?;
    }
    record_metrics(ctx, namespace, &pw.name_any(), &sync.status);
    Ok(Action::requeue(plan.wake))
}

async fn write_status(
    pw: &PipelineWorker,
    ctx: &Context,
    namespace: &str,
    status: &PipelineWorkerStatus,
) -> Result<(), Error> {
    let name = pw.name_any();
    let fleets = Api::<PipelineWorker>::namespaced(ctx.client.clone(), namespace);
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
        .map_err(|source| Error::Status { name, source })?;
    Ok(())
}

/// ServiceAccount, Role, RoleBinding and Service change only with the spec.
async fn apply_supporting_objects(
    pw: &PipelineWorker,
    client: &Client,
    namespace: &str,
    secret_check: Option<&rbac::SecretCheck>,
) -> Result<(), Error> {
    // Only where a fleet references Secrets may the operator read them.
    if let Some(check) = secret_check
        && !pipeline_secrets(pw).is_empty()
    {
        apply(
            &Api::namespaced(client.clone(), namespace),
            "RoleBinding",
            &rbac::secret_check_binding(pw, check),
        )
        .await?;
    }
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

/// Checks (and, with `queue.create`, ensures) the topic and subscription
/// and looks up the Secrets, when `fleet_plan::slow_check_due` says so.
async fn check_queue_and_secrets(
    pw: &PipelineWorker,
    ctx: &Context,
    key: &str,
    namespace: &str,
) -> Result<(), Error> {
    let generation = pw.meta().generation;
    let due = ctx.memory(key, |m| {
        let last = m.checked.map(|(at, checked)| (at.elapsed(), checked));
        fleet_plan::slow_check_due(last, m.broken(), generation)
    });
    if !due {
        return Ok(());
    }
    // An owner is live while a PipelineWorker with its uid exists.
    let fleets = ctx.fleets.clone();
    let is_live = move |owner: &Owner| {
        fleets.state().iter().any(|f| {
            f.metadata.uid.as_deref() == Some(owner.uid.as_str())
                && f.metadata.namespace.as_deref() == Some(owner.namespace.as_str())
        })
    };
    let queue_problem = match ctx
        .queue
        .ensure_owned(pw, &ctx.config.pubsub_project, &is_live)
        .await?
    {
        Ok(ensured) => {
            if ensured.created_subscription {
                // Whatever was published before now is gone: the fleet's
                // Queued Jobs are republished, not left to the idle rule.
                tracing::info!(event = "subscription_created", worker = %pw.name_any(), %namespace, subscription = %ensured.names.subscription, "made the fleet's subscription; its Queued Jobs are published again");
                let fleet = (namespace.to_owned(), pw.name_any());
                ctx.admission.queue_recreated(&fleet, Timestamp::now());
            }
            None
        }
        Err(problem) => Some(Problem {
            reason: problem.reason(),
            message: problem.to_string(),
        }),
    };
    let missing_secrets = missing_secrets(pw, &ctx.client, namespace).await?;
    ctx.memory(key, |m| {
        // Secrets the operator may not read yet (its binding is applied in
        // this sync) are looked up again at the next reconcile.
        m.checked = missing_secrets
            .is_some()
            .then(|| (Instant::now(), generation));
        m.queue_problem = queue_problem;
        m.missing_secrets = missing_secrets.unwrap_or_default();
    });
    Ok(())
}

/// `name/key` of every referenced Secret key that does not exist; `None`
/// when the operator may not read Secrets here (no binding, or not yet).
async fn missing_secrets(
    pw: &PipelineWorker,
    client: &Client,
    namespace: &str,
) -> Result<Option<Vec<String>>, Error> {
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    let mut missing = Vec::new();
    for secret in pipeline_secrets(pw) {
        let reference = secret.selector;
        if reference.optional == Some(true) {
            continue;
        }
        let found = match secrets.get_opt(&reference.name).await {
            Ok(found) => found,
            Err(kube::Error::Api(status)) if status.code == 403 => return Ok(None),
            Err(source) => {
                return Err(Error::Secret {
                    name: reference.name.clone(),
                    source,
                });
            }
        };
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
    Ok(Some(missing))
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

/// Writes the deletion costs the plan changed. Best effort: a missed cost
/// only means a busier pod may be picked.
async fn set_pod_costs(ctx: &Context, namespace: &str, costs: &[PodCost]) {
    let api = Api::<Pod>::namespaced(ctx.client.clone(), namespace);
    for PodCost { pod, cost } in costs {
        let patch = json!({"metadata": {"annotations": {POD_DELETION_COST: cost}}});
        if let Err(error) = api
            .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::debug!(%pod, %error, "cannot set pod deletion cost");
        }
    }
}

/// Records a Kubernetes Event on the fleet, for `kubectl describe`.
async fn record_event(ctx: &Context, pw: &PipelineWorker, event: &FleetEvent) {
    let event = Event {
        type_: if event.is_warning() {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: event.reason().to_owned(),
        note: Some(event.note()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &pw.object_ref(&())).await {
        tracing::debug!(%error, "cannot record event");
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
