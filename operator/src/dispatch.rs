//! The Job controller: carries out what `job_policy` decides. It publishes a
//! Job's message before it marks the Job Queued (a crash in between only
//! publishes again, and duplicates are harmless), owns retries and
//! dead-lettering, requeues Jobs whose worker vanished, and deletes finished
//! Jobs after their TTL.
//!
//! Every status write carries the Job's resourceVersion: when a worker wrote
//! in between, the write fails, and the next reconcile decides again from
//! what the worker wrote.
//!
//! A first publish or a retry waits for admission (`admission_state`): a
//! waiting Pending Job shows `Admitted=False` with the reason, written only
//! when it changes, and a watch event that frees a slot wakes the Jobs that
//! are admitted next. A Queued Job is published again only when its message
//! is lost: its fleet had a ready worker with a free slot for the bound and
//! nobody claimed it, or this operator brought the fleet's queue back.
//!
//! A Job whose reconcile fails is tried again with its own exponential
//! backoff (`job_retries`); one that cannot be published says so on the Job
//! (`PublishFailed`) and in an Event at the first failure, and a dead-letter
//! publish that fails is noted on the Failed Job, never a reason not to fail it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_crds::bounds;
use drover_crds::claim_clock::{ClaimSeen, ClaimSightings};
use drover_crds::job_state::{Transition, TransitionError};
use drover_crds::job_transition::JobStatusPatch;
use drover_crds::job_transition::{
    CONDITION_DEAD_LETTER_FAILED, CONDITION_PUBLISH_FAILED, CONDITION_UNCLAIMED,
    JobConditionUpdate, JobNote, REASON_CANCELLED, REASON_DEAD_LETTER_PUBLISH_FAILED,
    REASON_NOT_CLAIMED, WAITING_CONDITIONS,
};
use drover_crds::{FailureReason, Job, JobMessage, JobPhase, JobTransition, PipelineWorker};
use drover_queue::{JobQueue, OutgoingMessage, PubSubQueue, PublishError, QueueNames};
use drover_runtime::{failpoint, job_status};
use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};

use crate::admission::{CONDITION_ADMITTED, Limits, WaitReason};
use crate::admission_state::{Admission, AdmissionState, FleetKey, fleet_of};
use crate::archive::{self, gate::BeforeDelete};
use crate::config::OperatorConfig;
use crate::health;
use crate::job_policy::{JobSettings, NextStep, QUEUE_READY_POLL, next_step};
use crate::job_reach;
use crate::job_retries::{JobRetries, Published};
use crate::leader::LeaderGate;
use crate::metrics::{ErrorLabels, Metrics, OutcomeLabels, PublishLabels};
use crate::watches::JobWatches;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Job has no namespace")]
    MissingNamespace,
    #[error("cannot publish Job {job}: {source}")]
    Publish { job: String, source: PublishError },
    #[error("cannot write the status of Job {job}: {source}")]
    Status { job: String, source: kube::Error },
    #[error("refused to write Job {job}: {source}")]
    Transition {
        job: String,
        source: TransitionError,
    },
    #[error("cannot delete Job {job}: {source}")]
    Delete { job: String, source: kube::Error },
    #[error("cannot read Job {job} to archive it: {source}")]
    Archive { job: String, source: kube::Error },
    #[error("this replica cannot prove it still leads; it publishes and writes nothing")]
    NotLeading,
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::MissingNamespace => "missing_namespace",
            Error::Publish {
                source: PublishError::Client { .. },
                ..
            } => "publisher",
            Error::Publish { .. } => "publish",
            Error::Status { .. } => "status",
            Error::Transition { .. } => "transition",
            Error::Delete { .. } => "delete",
            Error::Archive { .. } => "archive",
            Error::NotLeading => "not_leading",
        }
    }

    /// A write that lost a race with a worker: decide again at once.
    fn is_conflict(&self) -> bool {
        matches!(self, Error::Status { source, .. } if job_status::is_conflict(source))
    }
}

pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub fleets: Store<PipelineWorker>,
    /// Publishes Jobs, and recreates a queue that vanished under a publish.
    pub queue: PubSubQueue,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// Per-Job backoff and publishes whose write failed.
    pub retries: JobRetries,
    /// When this operator first saw each running Job's claim as it is now,
    /// on its own clock: claim expiry and attempt deadlines are judged from
    /// it, so a worker's skewed clock never decides them.
    claims_seen: Mutex<ClaimSightings>,
    /// The shared Job cache, to drop the sightings of Jobs that are gone.
    jobs: Store<Job>,
    /// Closed once this replica cannot prove it still leads: nothing is
    /// published or written then.
    gate: LeaderGate,
    /// Which waiting Jobs each fleet publishes now.
    admission: Arc<AdmissionState>,
    /// Asks for a reconcile of a Job whose answer changed.
    wake: mpsc::UnboundedSender<ObjectRef<Job>>,
}

impl Context {
    /// Refuses to go on once this replica cannot prove it leads; asked
    /// right before every publish, status write and delete.
    fn leading(&self) -> Result<(), Error> {
        if self.gate.leads() {
            Ok(())
        } else {
            Err(Error::NotLeading)
        }
    }

    /// Notes the Job's claim as seen now and says when it was first seen
    /// as it is; forgets Jobs that no longer run.
    fn observe_claim(&self, job: &Job, now: Timestamp) -> Option<ClaimSeen> {
        let uid = job.uid().unwrap_or_default();
        let status = job.status.as_ref();
        let mut seen = self
            .claims_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let running = status
            .filter(|s| s.phase == JobPhase::Running)
            .and_then(|s| s.claim.as_ref());
        let Some(claim) = running else {
            seen.forget(&uid);
            return None;
        };
        let sighting = seen.observe(&uid, claim, now);
        // Jobs deleted while running leave their sighting behind; sweep
        // them once they outnumber the Jobs there are.
        if seen.len() > SIGHTINGS_SWEEP_FLOOR && seen.len() > self.jobs.len() {
            let live: HashSet<String> = self.jobs.state().iter().filter_map(|j| j.uid()).collect();
            seen.retain(|uid| live.contains(uid));
        }
        Some(sighting)
    }
}

/// Below this many sightings nobody sweeps: the memory is a few KiB.
const SIGHTINGS_SWEEP_FLOOR: usize = 1024;

/// A Job waiting for capacity or a key is woken when a slot frees; as a
/// fallback every fleet is passed over this often (no timer per waiting Job,
/// and no write unless an answer changed).
const ADMISSION_SWEEP: Duration = Duration::from_secs(30);

/// Job reconciles in flight at once. Each makes an apiserver request or a
/// publish, and every concurrent request holds an HTTP connection with its
/// buffers: unbounded, 10,000 Jobs created at once opened about 400.
const CONCURRENT_RECONCILES: u16 = 32;

/// What a publish clears from the Job: whatever kept it waiting.
const CLEARED_ON_PUBLISH: [&str; 3] = [
    WAITING_CONDITIONS[0],
    WAITING_CONDITIONS[1],
    CONDITION_ADMITTED,
];

/// Runs the Job controller until shutdown, on the shared Job and
/// PipelineWorker caches the fleet controller drives.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    queue: PubSubQueue,
    recorder: Recorder,
    metrics: Metrics,
    watches: JobWatches,
    gate: LeaderGate,
) {
    let fleets = watches.fleets;
    // A Job whose fleet is merely not cached yet must not fail as WorkerNotFound.
    if fleets.wait_until_ready().await.is_err() {
        tracing::error!("the PipelineWorker cache never became ready");
        return;
    }

    let (wake, woken) = mpsc::unbounded();
    if let Some(archive) = &config.archive {
        tokio::spawn(wake_when_archive_returns(archive.clone(), wake.clone()));
    }
    tokio::spawn(wake_freed(
        watches.freed,
        watches.admission.clone(),
        fleets.clone(),
        wake.clone(),
    ));
    let context = Arc::new(Context {
        client: client.clone(),
        config,
        fleets,
        queue,
        recorder,
        metrics,
        retries: JobRetries::default(),
        claims_seen: Mutex::default(),
        jobs: watches.jobs.reader(),
        gate,
        admission: watches.admission,
        wake,
    });
    let jobs = watches.jobs.reader();
    Controller::for_shared_stream(watches.jobs, jobs)
        .reconcile_on(woken)
        .with_config(Config::default().concurrency(CONCURRENT_RECONCILES))
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "job reconcile did not complete");
            }
        })
        .await;
}

/// Wakes the Jobs a freed slot admits (and those whose waiting reason
/// changed), batching the fleets freed since the last look; every
/// `ADMISSION_SWEEP` it looks at every fleet, so a lost wake costs a delay,
/// never a Job.
async fn wake_freed(
    mut freed: mpsc::UnboundedReceiver<FleetKey>,
    admission: Arc<AdmissionState>,
    fleets: Store<PipelineWorker>,
    wake: mpsc::UnboundedSender<ObjectRef<Job>>,
) {
    let mut sweep = tokio::time::interval(ADMISSION_SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut keys = HashSet::new();
        tokio::select! {
            first = freed.next() => match first {
                Some(key) => { keys.insert(key); }
                None => return,
            },
            _ = sweep.tick() => {
                keys.extend(fleets.state().iter().map(|f| (f.namespace().unwrap_or_default(), f.name_any())));
            }
        }
        while let Ok(key) = freed.try_recv() {
            keys.insert(key);
        }
        let now = Timestamp::now();
        for key in keys {
            let Some(fleet) = fleets.get(&ObjectRef::new(&key.1).within(&key.0)) else {
                continue;
            };
            for name in admission.pass(&key, &fleet, now).wake {
                // The receiver lives as long as the controller.
                let _ = wake.unbounded_send(ObjectRef::new(&name).within(&key.0));
            }
        }
    }
}

/// Wakes the Jobs whose deletion waits for the archive as soon as it
/// answers again, so the backlog drains at once rather than at each Job's
/// next look.
async fn wake_when_archive_returns(
    archive: archive::Archive,
    wake: mpsc::UnboundedSender<ObjectRef<Job>>,
) {
    let mut health = archive.subscribe();
    while health.changed().await.is_ok() {
        if !health.borrow_and_update().is_available() {
            continue;
        }
        // Twice: a Job that saw the archive down just before it came back
        // notes itself after the first pass.
        for pass in 0..2 {
            if pass > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            for (namespace, name) in archive.take_waiting() {
                // The receiver lives as long as the controller.
                let _ = wake.unbounded_send(ObjectRef::new(&name).within(&namespace));
            }
        }
    }
}

fn error_policy(job: Arc<Job>, error: &Error, ctx: Arc<Context>) -> Action {
    // Each Job backs off on its own: one that cannot be published or written
    // must not retry (and republish) every second, nor hold up the others.
    // A replica that is not leading is no fault of the Job's: it looks again
    // soon, so it acts at once when it leads again.
    let wait = match error {
        Error::NotLeading => Duration::from_secs(1),
        _ => ctx
            .retries
            .failed(&job.uid().unwrap_or_default(), Instant::now()),
    };
    if error.is_conflict() {
        // The watch brings the newer version; this is only the fallback.
        return Action::requeue(wait);
    }
    tracing::warn!(job = %job.name_any(), namespace = ?job.namespace(), %error, "job reconcile failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            controller: "job",
            error: error.metric_label(),
        })
        .inc();
    Action::requeue(wait)
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_job(&job, &ctx).await;
    if result.is_ok() {
        ctx.retries.succeeded(&job.uid().unwrap_or_default());
    }
    ctx.metrics.observe_reconcile("job", started.elapsed());
    result
}

async fn reconcile_job(job: &Job, ctx: &Context) -> Result<Action, Error> {
    let namespace = job.namespace().ok_or(Error::MissingNamespace)?;
    if job.meta().deletion_timestamp.is_some() || ctx.admission.superseded(job) {
        return Ok(Action::await_change());
    }
    let fleet = ctx
        .fleets
        .get(&ObjectRef::new(&job.spec.worker).within(&namespace));
    let now = Timestamp::now();
    // Every transition is checked against the phase of the very version the
    // write is conditioned on.
    let from = job.phase();
    let claim_seen = ctx.observe_claim(job, now);
    if from == JobPhase::Running {
        // A worker claimed it: what kept it waiting is over.
        let cleared = JobConditionUpdate::clear(from, conditions(job), &WAITING_CONDITIONS);
        if let Ok(Some(update)) = cleared {
            write_conditions(job, ctx, &update).await?;
            return Ok(Action::await_change());
        }
    }
    let step = job_reach::refusal(job, fleet.as_deref(), &ctx.config.cluster_cidrs)
        .unwrap_or_else(|| next_step(job, fleet.as_deref(), claim_seen, now));
    if matches!(step, NextStep::Wait(_))
        && from == JobPhase::Queued
        && !job.spec.cancel
        && let Some(fleet) = &fleet
        && ctx.admission.lost_with_queue(job, queued_at(job, now))
    {
        let attempt = job.status.as_ref().map_or(1, |s| s.attempt.max(1));
        return publish(job, fleet, ctx, &namespace, attempt, now).await;
    }
    match step {
        NextStep::Wait(None) => Ok(Action::await_change()),
        NextStep::Wait(Some(wait)) => Ok(Action::requeue(wait)),
        NextStep::AwaitQueue { reason, message } => {
            let note = JobNote {
                type_: CONDITION_PUBLISH_FAILED,
                reason,
                message: format!("not published while the fleet's queue is not ready: {message}"),
            };
            note_unpublished(job, ctx, &note, now).await;
            Ok(Action::requeue(QUEUE_READY_POLL))
        }
        // The phase says whether this is a first publish, a retry or a
        // republish; the transition is chosen from it.
        NextStep::Publish { attempt, republish } => {
            let Some(fleet) = fleet else {
                return Ok(Action::await_change());
            };
            if republish {
                let bound = JobSettings::of(job, &fleet).unclaimed_republish_after;
                let queued_at = queued_at(job, now);
                if let Err(wait) = ctx.admission.may_republish(job, queued_at, bound, now) {
                    // Waiting in line behind busy workers: the message is not lost.
                    return Ok(Action::requeue(wait));
                }
            } else if let Admission::Wait { reason, limits } =
                ctx.admission.try_admit(job, &fleet, now)
            {
                return wait_for_admission(job, ctx, reason, &limits, now).await;
            }
            publish(job, &fleet, ctx, &namespace, attempt, now).await
        }
        NextStep::ScheduleRetry { retry_at } => {
            write(job, ctx, JobTransition::schedule_retry(from, retry_at)).await?;
            Ok(Action::await_change())
        }
        NextStep::WorkerLost { give_up } => {
            let lost = lost_message(job, ctx).await;
            if give_up {
                let settings = fleet.as_deref().map(|f| JobSettings::of(job, f));
                let attempts = settings.map_or(1, |s| s.max_attempts);
                let message = format!("all {attempts} attempts failed: {lost} (WorkerLost)");
                let reason = FailureReason::MaxAttemptsExceeded;
                return fail(
                    job,
                    fleet.as_deref(),
                    ctx,
                    &namespace,
                    reason,
                    message,
                    true,
                    now,
                )
                .await;
            }
            write(job, ctx, JobTransition::worker_lost(from, lost)).await?;
            ctx.metrics
                .job_outcomes
                .get_or_create(&OutcomeLabels {
                    outcome: "retry",
                    reason: FailureReason::WorkerLost.as_str(),
                })
                .inc();
            tracing::info!(event = "worker_lost", job = %job.name_any(), namespace = %namespace, "claim expired; the attempt counts as failed");
            Ok(Action::await_change())
        }
        NextStep::Fail {
            reason,
            message,
            dead_letter,
        } => {
            fail(
                job,
                fleet.as_deref(),
                ctx,
                &namespace,
                reason,
                message,
                dead_letter,
                now,
            )
            .await
        }
        NextStep::Cancel => {
            write(job, ctx, JobTransition::cancel_idle(from, now)).await?;
            ctx.metrics
                .job_outcomes
                .get_or_create(&OutcomeLabels {
                    outcome: "cancelled",
                    reason: REASON_CANCELLED,
                })
                .inc();
            tracing::info!(event = "job_cancelled", job = %job.name_any(), namespace = %namespace, "cancelled");
            Ok(Action::await_change())
        }
        NextStep::Retry => retry(job, ctx, &namespace, now).await,
        NextStep::Resume { attempt } => {
            let Some(fleet) = fleet else {
                return Ok(Action::await_change());
            };
            publish(job, &fleet, ctx, &namespace, attempt, now).await
        }
        NextStep::Delete => {
            let jobs = Api::<Job>::namespaced(ctx.client.clone(), &namespace);
            // While the archive is enabled, only what it holds is deleted.
            ctx.leading()?;
            let resource_version =
                match archive::gate::before_delete(ctx.config.archive.as_ref(), &jobs, job)
                    .await
                    .map_err(|source| Error::Archive {
                        job: job.name_any(),
                        source,
                    })? {
                    BeforeDelete::Delete { resource_version } => resource_version,
                    BeforeDelete::Keep(wait) => return Ok(Action::requeue(wait)),
                    BeforeDelete::Gone => return Ok(Action::await_change()),
                };
            let archived = resource_version.is_some();
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: job.uid(),
                    resource_version,
                }),
                ..DeleteParams::background()
            };
            ctx.leading()?;
            match jobs.delete(&job.name_any(), &params).await {
                Ok(_) => Ok(Action::await_change()),
                // Changed since it was archived: decide again on what it is now.
                Err(kube::Error::Api(status)) if status.code == 409 && archived => {
                    Ok(Action::requeue(Duration::from_secs(1)))
                }
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {
                    Ok(Action::await_change())
                }
                Err(source) => Err(Error::Delete {
                    job: job.name_any(),
                    source,
                }),
            }
        }
    }
}

async fn publish(
    job: &Job,
    fleet: &PipelineWorker,
    ctx: &Context,
    namespace: &str,
    attempt: i32,
    now: Timestamp,
) -> Result<Action, Error> {
    let from = job.phase();
    let transition = match from {
        JobPhase::Pending => Transition::Publish,
        JobPhase::Backoff => Transition::Requeue,
        JobPhase::Waiting => Transition::Resume,
        _ => Transition::Republish,
    };
    // Refuse before publishing: a message whose Queued write is refused
    // would only be skipped by every worker.
    transition
        .check_from(from)
        .map_err(|source| Error::Transition {
            job: job.name_any(),
            source,
        })?;
    let uid = job.uid().unwrap_or_default();
    let version = job.resource_version().unwrap_or_default();
    // A message already out for this very version only needs its write.
    if let Some(message_id) = ctx.retries.published(&uid, &version, attempt) {
        return write_queued(job, ctx, transition, attempt, message_id, now).await;
    }
    let names = QueueNames::of(fleet, &ctx.config.pubsub_project);
    let message = JobMessage {
        namespace: namespace.to_owned(),
        name: job.name_any(),
        uid: uid.clone(),
        attempt,
    };
    let mut message = OutgoingMessage::new(message.encode())
        .attribute("namespace", namespace)
        .attribute("job", job.name_any())
        .attribute("attempt", attempt.to_string())
        .attribute("publisher", &ctx.config.identity);
    if let Some(url) = crate::callback::url_for(&ctx.config, fleet, job) {
        message = message.attribute(drover_crds::message::ATTRIBUTE_CALLBACK_URL, url);
    }
    if transition == Transition::Resume
        && let Some(wait) = job.status.as_ref().and_then(|s| s.external.as_ref())
    {
        let key = drover_crds::job_state::wait_key(wait);
        message = message.attribute(drover_crds::message::ATTRIBUTE_RESUMES, key);
    }
    let leads_until = ctx.gate.deadline().ok_or(Error::NotLeading)?;
    // Decided while leading. The publisher sends at once and retries only
    // while the gate is open; a publish still unanswered at the renew
    // deadline is abandoned here (its Queued write would be refused anyway).
    // What cannot be taken back is a request already on the wire when the
    // leader froze: a duplicate of an attempt the new leader publishes too,
    // which the workers skip.
    tracing::debug!(event = "publishing", job = %job.name_any(), namespace, attempt, "publishing as leader");
    let publishing = publish_noting_recreation(ctx, job, fleet, &names.topic, message);
    let Ok(published) = tokio::time::timeout_at(leads_until, publishing).await else {
        tracing::warn!(event = "publish_abandoned", job = %job.name_any(), namespace, attempt, "no answer to the publish before this replica's renew deadline");
        return Err(Error::NotLeading);
    };
    let message_id = match published {
        Ok(id) => id,
        Err(_) if !ctx.gate.leads() => return Err(Error::NotLeading),
        Err(source) => {
            note_publish_failed(job, ctx, &source, now).await;
            return Err(Error::Publish {
                job: job.name_any(),
                source,
            });
        }
    };

    let kind = match transition {
        Transition::Publish => "first",
        Transition::Requeue => "retry",
        Transition::Resume => "resume",
        _ => "republish",
    };
    ctx.metrics
        .jobs_published
        .get_or_create(&PublishLabels { kind })
        .inc();
    if kind == "first"
        && let Some(created) = job.meta().creation_timestamp.as_ref()
    {
        let waited = now.duration_since(created.0).as_secs_f64().max(0.0);
        ctx.metrics.dispatch_latency.observe(waited);
    }
    tracing::info!(event = "enqueued", job = %job.name_any(), namespace, attempt, %message_id, kind, "published");
    failpoint::pause(
        failpoint::AFTER_PUBLISH,
        &failpoint::attempt_key(&job.name_any(), attempt),
    )
    .await;

    let written = write_queued(job, ctx, transition, attempt, message_id.clone(), now).await;
    if let Err(error) = &written
        && !error.is_conflict()
    {
        let published = Published {
            resource_version: version,
            attempt,
            message_id,
        };
        ctx.retries
            .remember_publish(&uid, published, Instant::now());
    }
    written
}

/// Publishes to the fleet's topic; when the topic has vanished it brings
/// the fleet's queue back once and publishes again, and wakes the fleet's
/// Queued Jobs, whose messages went with the old queue.
async fn publish_noting_recreation(
    ctx: &Context,
    job: &Job,
    fleet: &PipelineWorker,
    topic: &str,
    message: OutgoingMessage,
) -> Result<String, PublishError> {
    let project = &ctx.config.pubsub_project;
    let fleet_key = fleet_of(job);
    let wake_waiting = || {
        for name in ctx.admission.queue_recreated(&fleet_key, Timestamp::now()) {
            // The receiver lives as long as the controller.
            let _ = ctx
                .wake
                .unbounded_send(ObjectRef::new(&name).within(&fleet_key.0));
        }
    };
    ctx.queue
        .publish_recreating(fleet, project, topic, message, wake_waiting)
        .await
}

/// When the Job's current attempt was published (now, if it does not say).
fn queued_at(job: &Job, now: Timestamp) -> Timestamp {
    job.status
        .as_ref()
        .and_then(|s| s.queued_at.as_ref())
        .map_or(now, |t| t.0)
}

/// A Job admission holds back: a Pending one shows why (once per reason),
/// and each looks again when a slot frees or a token comes (or when the
/// sweep of its fleet finds its answer changed).
async fn wait_for_admission(
    job: &Job,
    ctx: &Context,
    reason: WaitReason,
    limits: &Limits,
    now: Timestamp,
) -> Result<Action, Error> {
    if job.phase() == JobPhase::Pending
        && let Some(update) = waiting_condition(job, reason, limits, now)
    {
        write_conditions(job, ctx, &update).await?;
        tracing::trace!(event = "admission_waiting", job = %job.name_any(), namespace = ?job.namespace(), reason = reason.as_str(), "not admitted yet");
    }
    Ok(match reason {
        WaitReason::RateLimited { retry_in } => {
            Action::requeue(retry_in.max(Duration::from_millis(10)))
        }
        WaitReason::FleetAtCapacity | WaitReason::KeyConcurrencyLimit => Action::await_change(),
    })
}

/// `Admitted=False` with `reason` on the Job, or `None` when it shows it already.
fn waiting_condition(
    job: &Job,
    reason: WaitReason,
    limits: &Limits,
    now: Timestamp,
) -> Option<JobConditionUpdate> {
    let current = conditions(job);
    let shown = current
        .iter()
        .find(|c| c.type_ == CONDITION_ADMITTED && c.status == "False");
    if shown.is_some_and(|c| c.reason == reason.as_str()) {
        return None;
    }
    let mut updated: Vec<Condition> = current
        .iter()
        .filter(|c| c.type_ != CONDITION_ADMITTED)
        .cloned()
        .collect();
    updated.push(Condition {
        type_: CONDITION_ADMITTED.to_owned(),
        status: "False".to_owned(),
        reason: reason.as_str().to_owned(),
        message: bounds::message(&reason.message(limits)),
        // Not admitted since it first waited, whatever the reason now.
        last_transition_time: shown.map_or(Time(now), |c| c.last_transition_time.clone()),
        observed_generation: job.meta().generation,
    });
    Some(JobConditionUpdate {
        status: JobStatusPatch {
            conditions: Some(updated),
            ..JobStatusPatch::default()
        },
    })
}

/// The Queued write after a publish: a first publish or a retry clears what
/// kept the Job waiting; a republish says nobody claimed the attempt.
async fn write_queued(
    job: &Job,
    ctx: &Context,
    transition: Transition,
    attempt: i32,
    message_id: String,
    now: Timestamp,
) -> Result<Action, Error> {
    let from = job.phase();
    let generation = job.meta().generation;
    let current = conditions(job);
    let queued = JobTransition::queued(transition, from, attempt, message_id, generation, now)
        .map(|t| t.clearing(current, &CLEARED_ON_PUBLISH));
    let queued = match transition {
        Transition::Republish => {
            let waited = job
                .status
                .as_ref()
                .and_then(|s| s.queued_at.as_ref())
                .map_or(0, |t| now.duration_since(t.0).as_secs());
            let note = JobNote {
                type_: CONDITION_UNCLAIMED,
                reason: REASON_NOT_CLAIMED.to_owned(),
                message: format!(
                    "no worker claimed attempt {attempt} within {waited} s of its publish; published it again"
                ),
            };
            queued.map(|t| t.noting(current, &note, now))
        }
        _ => queued,
    };
    write(job, ctx, queued).await?;
    Ok(Action::await_change())
}

/// Shows a failed publish on the Job (condition `PublishFailed`) and in an
/// Event, once per distinct error: the retries back off and write nothing.
async fn note_publish_failed(job: &Job, ctx: &Context, error: &PublishError, now: Timestamp) {
    let note = JobNote {
        type_: CONDITION_PUBLISH_FAILED,
        reason: error.reason().to_owned(),
        message: error.to_string(),
    };
    note_unpublished(job, ctx, &note, now).await;
}

/// Writes `note` (a `PublishFailed`) on the Job with an Event, unless the
/// Job already shows it.
async fn note_unpublished(job: &Job, ctx: &Context, note: &JobNote, now: Timestamp) {
    let update = match JobConditionUpdate::note(job.phase(), conditions(job), note, now) {
        Ok(Some(update)) => update,
        Ok(None) | Err(_) => return,
    };
    if let Err(error) = write_conditions(job, ctx, &update).await {
        tracing::debug!(job = %job.name_any(), %error, "cannot note the failed publish on the Job");
        return;
    }
    tracing::warn!(event = "publish_failed", job = %job.name_any(), namespace = ?job.namespace(), reason = note.reason, message = %note.message, "cannot publish the Job");
    record_event(ctx, job, CONDITION_PUBLISH_FAILED, &note.message).await;
}

#[allow(clippy::too_many_arguments)]
async fn fail(
    job: &Job,
    fleet: Option<&PipelineWorker>,
    ctx: &Context,
    namespace: &str,
    reason: FailureReason,
    message: String,
    dead_letter: bool,
    now: Timestamp,
) -> Result<Action, Error> {
    let mut dead_letter_failed = None;
    if dead_letter
        && let Some(fleet) = fleet
        && let Some(topic) = QueueNames::of(fleet, &ctx.config.pubsub_project).dead_letter_topic
    {
        let status = job.status.clone().unwrap_or_default();
        let body = JobMessage {
            namespace: namespace.to_owned(),
            name: job.name_any(),
            uid: job.uid().unwrap_or_default(),
            attempt: status.attempt,
        };
        let dead = OutgoingMessage::new(body.encode())
            .attribute("reason", reason.as_str())
            .attribute("message", message.clone());
        ctx.leading()?;
        // A dead letter that cannot go out is noted on the Failed Job; it
        // must never keep the Job from failing.
        if let Err(error) = ctx.queue.publish(&topic, dead).await {
            tracing::warn!(event = "dead_letter_failed", job = %job.name_any(), namespace, %error, "cannot publish the dead letter");
            dead_letter_failed = Some(JobNote {
                type_: CONDITION_DEAD_LETTER_FAILED,
                reason: REASON_DEAD_LETTER_PUBLISH_FAILED.to_owned(),
                message: format!("the dead letter to {topic} was not published: {error}"),
            });
        }
    }
    let from = job.phase();
    let failed = if dead_letter {
        JobTransition::give_up(from, reason, message.clone(), now)
    } else {
        JobTransition::reject(from, reason, message.clone(), now)
    };
    let failed = match &dead_letter_failed {
        Some(note) => failed.map(|t| t.noting(&[], note, now)),
        None => failed,
    };
    write(job, ctx, failed).await?;
    ctx.metrics
        .job_outcomes
        .get_or_create(&OutcomeLabels {
            outcome: "failed",
            reason: reason.as_str(),
        })
        .inc();
    tracing::warn!(event = "job_failed", job = %job.name_any(), namespace, reason = reason.as_str(), %message, "job failed");
    record_event(ctx, job, reason.as_str(), &message).await;
    if let Some(note) = dead_letter_failed {
        record_event(ctx, job, CONDITION_DEAD_LETTER_FAILED, &note.message).await;
    }
    Ok(Action::await_change())
}

/// Runs a Failed or Cancelled Job again, as its `spec.retries` asks.
async fn retry(job: &Job, ctx: &Context, namespace: &str, now: Timestamp) -> Result<Action, Error> {
    let status = job.status.clone().unwrap_or_default();
    let change = JobTransition::retry(
        job.phase(),
        status.attempt,
        &status.conditions,
        job.spec.retries,
        now,
    );
    write(job, ctx, change).await?;
    tracing::info!(event = "job_retried", job = %job.name_any(), namespace, after_attempt = status.attempt, "retry asked for; attempts start afresh");
    let event = Event {
        type_: EventType::Normal,
        reason: "Retried".into(),
        note: Some(format!(
            "retry {} asked for after attempt {} ({:?}); the attempt budget starts afresh",
            job.spec.retries, status.attempt, status.phase
        )),
        action: "Dispatch".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &job.object_ref(&())).await {
        tracing::debug!(%error, "cannot record the event");
    }
    Ok(Action::await_change())
}

/// A Warning Event on the Job, its note bounded like a status message.
async fn record_event(ctx: &Context, job: &Job, reason: &str, note: &str) {
    let event = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(bounds::message(note)),
        action: "Dispatch".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &job.object_ref(&())).await {
        tracing::debug!(%error, "cannot record the event");
    }
}

/// The conditions of the Job version a decision is made from.
fn conditions(job: &Job) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
    job.status.as_ref().map_or(&[], |s| s.conditions.as_slice())
}

/// Why the attempt counts as lost, with what its pod's status says (a rare
/// event, so reading the pod costs nothing that matters).
async fn lost_message(job: &Job, ctx: &Context) -> String {
    let status = job.status.clone().unwrap_or_default();
    let Some(claim) = status.claim else {
        return format!("attempt {} was running without a claim", status.attempt);
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let oom = match pods.get_opt(&claim.pod).await {
        Ok(pod) => pod.as_ref().and_then(health::oom_killed),
        Err(error) => {
            tracing::debug!(pod = %claim.pod, %error, "cannot read the lost worker's pod");
            None
        }
    };
    let why = oom.map(|oom| format!(": {oom}")).unwrap_or_default();
    format!(
        "worker pod {} stopped renewing its claim on attempt {}{why}",
        claim.pod, status.attempt
    )
}

/// Sends one checked transition, conditioned on the resourceVersion the
/// decision was made from.
async fn write(
    job: &Job,
    ctx: &Context,
    change: Result<JobTransition, TransitionError>,
) -> Result<(), Error> {
    let name = job.name_any();
    let change = change.map_err(|source| Error::Transition {
        job: name.clone(),
        source,
    })?;
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let version = job.resource_version().unwrap_or_default();
    ctx.leading()?;
    job_status::write(&jobs, &name, &version, &change)
        .await
        .map_err(|source| Error::Status { job: name, source })?;
    ctx.admission.note_written(job);
    Ok(())
}

/// Sends a conditions-only update, conditioned like a transition.
async fn write_conditions(
    job: &Job,
    ctx: &Context,
    update: &JobConditionUpdate,
) -> Result<(), Error> {
    let name = job.name_any();
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let version = job.resource_version().unwrap_or_default();
    ctx.leading()?;
    job_status::write_conditions(&jobs, &name, &version, update)
        .await
        .map_err(|source| Error::Status { job: name, source })?;
    ctx.admission.note_written(job);
    Ok(())
}
