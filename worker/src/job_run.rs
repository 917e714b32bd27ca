//! One message, start to finish: read the Job it names, decide with the
//! shared state machine, claim it with a resourceVersion-conditioned status
//! write, run the pipeline while renewing the claim, write the outcome, and
//! only then ack. Whatever happens, the message is answered (ack or nack) and
//! the worker lives on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_crds::FailureReason;
use drover_crds::claim_clock::{ClaimSeen, ClaimSightings};
use drover_crds::job::JobError;
use drover_crds::job_state::{ClaimDecision, ClaimView, SkipReason, TransitionError, decide_claim};
use drover_crds::job_transition::NewClaim;
use drover_crds::{Job, JobMessage, JobPhase, JobTransition, PipelineWorker, StepPhase};
use drover_runtime::{failpoint, job_status};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};

use crate::claims::{Claims, HeldClaim};
use crate::pipelines::{self, Attempt, Context, Done, External, Failure};
use crate::progress::Progress;
use crate::stats::Stats;

/// Seconds a claim lives without renewal; renewed every third of it.
pub const CLAIM_LEASE_SECONDS: i32 = 15;
/// How often a conflicting claim is re-read and decided again before the
/// message is handed back.
const CLAIM_TRIES: usize = 5;
/// The operator publishes before it writes Queued; a message can arrive in
/// between. Re-read for up to this long before handing the message back, so
/// the common few-millisecond gap never depends on a redelivery.
const DEFER_WAIT: Duration = Duration::from_secs(3);
const DEFER_POLL: Duration = Duration::from_millis(10);
/// Step transitions closer together than this share one status write.
const MIN_WRITE_GAP: Duration = Duration::from_millis(250);
/// First and longest wait between tries of a failed read or outcome write.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Past its timeout the operator fails a running attempt after this grace
/// (`DeadlineExceeded`); an outcome still unwritten by then is moot.
const DEADLINE_GRACE: Duration = Duration::from_secs(30);

/// What the pull loop does with the message afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ack,
    Nack,
}

/// What a handler needs from its worker.
pub struct Worker {
    pub client: Client,
    pub pod: String,
    pub stats: Arc<Stats>,
    /// The claims this process holds now.
    pub claims: Claims,
    /// When this worker first saw other workers' claims as they are, on its
    /// own clock, so a skewed clock never makes a live claim look expired.
    pub claims_seen: Mutex<ClaimSightings>,
    /// Events on the fleet, for what stops a message before it is a Job.
    pub recorder: Recorder,
}

/// Past this many sightings the worker starts afresh: every claim then looks
/// just renewed, which only delays a takeover the operator's watchdog makes anyway.
const MAX_SIGHTINGS: usize = 4096;

impl Worker {
    pub fn new(client: Client, pod: String, stats: Arc<Stats>) -> Self {
        let reporter = Reporter {
            controller: "drover-worker".into(),
            instance: Some(pod.clone()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            pod,
            stats,
            claims: Claims::default(),
            claims_seen: Mutex::default(),
        }
    }

    fn observe_claim(&self, job: &Job, now: Timestamp) -> Option<ClaimSeen> {
        let uid = job.metadata.uid.as_deref().unwrap_or_default();
        let mut seen = self
            .claims_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let running = job
            .status
            .as_ref()
            .filter(|s| s.phase == JobPhase::Running)
            .and_then(|s| s.claim.as_ref());
        let Some(claim) = running else {
            seen.forget(uid);
            return None;
        };
        if seen.len() >= MAX_SIGHTINGS {
            *seen = ClaimSightings::default();
        }
        Some(seen.observe(uid, claim, now))
    }
}

/// What a message's attributes add to the Job it names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    /// Where the Job's provider calls back, when the operator serves callbacks.
    pub callback_url: Option<String>,
    /// The wait this message resumes (`job_state::wait_key`).
    pub resumes: Option<String>,
}

/// Handles one Job message to the end.
pub async fn handle(
    worker: &Worker,
    fleet: &PipelineWorker,
    message: JobMessage,
    hints: Hints,
) -> Answer {
    let Hints {
        callback_url,
        resumes,
    } = hints;
    let fleet_name = fleet.metadata.name.as_deref().unwrap_or_default();
    if fleet.metadata.namespace.as_deref() != Some(message.namespace.as_str()) {
        // Another namespace's Job: never read, never run here.
        let reason = SkipReason::WrongFleet.as_str();
        tracing::warn!(event = "idempotent_skip", reason, job = %message.name, namespace = %message.namespace, "a message for a Job outside this fleet's namespace");
        worker.stats.skipped(reason);
        return Answer::Ack;
    }
    let jobs: Api<Job> = Api::namespaced(worker.client.clone(), &message.namespace);
    let deferred_since = std::time::Instant::now();
    let mut conflicts = 0;
    while conflicts < CLAIM_TRIES {
        let job = match jobs.get_opt(&message.name).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                tracing::warn!(event = "idempotent_skip", reason = "job_not_found", job = %message.name, namespace = %message.namespace, "the Job is gone");
                worker.stats.skipped("job_not_found");
                return Answer::Ack;
            }
            Err(error) => {
                tracing::warn!(job = %message.name, %error, "cannot read the Job; handing the message back");
                return Answer::Nack;
            }
        };
        let status = job.status.clone().unwrap_or_default();
        let claim_held_here = status
            .claim
            .as_ref()
            .is_some_and(|c| worker.claims.holds(&c.id));
        let now = Timestamp::now();
        let view = ClaimView {
            uid: job.metadata.uid.as_deref().unwrap_or_default(),
            worker: &job.spec.worker,
            cancel_requested: job.spec.cancel,
            status: &status,
            claim_seen: worker.observe_claim(&job, now),
            claim_held_here,
            resumes: resumes.as_deref(),
        };
        match decide_claim(view, &message, &worker.pod, fleet_name, now) {
            ClaimDecision::Skip(reason) => {
                tracing::info!(event = "idempotent_skip", reason = reason.as_str(), job = %message.name, namespace = %message.namespace, attempt = message.attempt, "skipped");
                worker.stats.skipped(reason.as_str());
                return Answer::Ack;
            }
            ClaimDecision::Defer(reason) => {
                if deferred_since.elapsed() >= DEFER_WAIT {
                    tracing::info!(?reason, job = %message.name, attempt = message.attempt, "status still behind the message; handing it back");
                    return Answer::Nack;
                }
                tokio::time::sleep(DEFER_POLL).await;
            }
            ClaimDecision::Claim => {
                let step_timeout =
                    Duration::from_secs(fleet.spec.timeouts.step_seconds.max(1).unsigned_abs());
                let progress = match resumed_wait(&job) {
                    // The attempt waited for a provider: its finished steps stay.
                    Some(wait) if !status.steps.is_empty() => Progress::resumed(
                        fleet.spec.pipeline,
                        &status.steps,
                        &wait.step,
                        step_timeout,
                        worker.stats.clone(),
                    ),
                    _ => Progress::new(
                        fleet.spec.pipeline,
                        pipelines::steps(&fleet.spec),
                        step_timeout,
                        worker.stats.clone(),
                    ),
                };
                let held = HeldClaim {
                    id: Claims::new_id(),
                    namespace: message.namespace.clone(),
                    name: message.name.clone(),
                    uid: message.uid.clone(),
                    attempt: message.attempt,
                };
                match claim(&jobs, &job, &progress, &worker.pod, &held).await {
                    Ok(claimed) => {
                        let _held_while_running = worker.claims.hold(held.clone());
                        let external = External {
                            callback_url,
                            resume: resumed_wait(&claimed),
                        };
                        return run_claimed(
                            worker, fleet, &jobs, claimed, held, progress, external,
                        )
                        .await;
                    }
                    Err(error) if error.is_conflict() => conflicts += 1,
                    Err(error) => {
                        tracing::warn!(job = %message.name, %error, "cannot claim the Job; handing the message back");
                        return Answer::Nack;
                    }
                }
            }
        }
    }
    Answer::Nack
}

/// The provider request of the Job's current attempt, when that attempt
/// waited already and is picked up again.
fn resumed_wait(job: &Job) -> Option<drover_crds::ExternalWait> {
    let status = job.status.as_ref()?;
    status
        .external
        .clone()
        .filter(|wait| wait.attempt == status.attempt)
}

async fn claim(
    jobs: &Api<Job>,
    job: &Job,
    progress: &Progress,
    pod: &str,
    held: &HeldClaim,
) -> Result<Job, WriteError> {
    let claim = NewClaim {
        id: held.id.clone(),
        attempt: held.attempt,
        pod: pod.to_owned(),
        lease_seconds: CLAIM_LEASE_SECONDS,
        steps: progress.snapshot(),
    };
    let change = JobTransition::claim(job.phase(), claim, Timestamp::now());
    write_checked(jobs, job, change).await
}

/// Whether `held` is still this Job's running claim: the same Job (uid,
/// not just the name), the same attempt and the same claim id. Every write
/// after the claim is fenced on it.
pub(crate) fn still_held(job: &Job, held: &HeldClaim) -> bool {
    job.metadata.uid.as_deref() == Some(held.uid.as_str())
        && job.status.as_ref().is_some_and(|s| {
            s.phase == JobPhase::Running
                && s.attempt == held.attempt
                && s.claim.as_ref().is_some_and(|c| c.id == held.id)
        })
}

/// Why a status write did not land.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// Never sent: the Job is in a phase this worker may not move it from.
    #[error("the state machine refuses it: {0}")]
    Refused(#[from] TransitionError),
    #[error(transparent)]
    Api(#[from] kube::Error),
}

impl WriteError {
    /// The Job changed under us (409) or moved where we may not follow:
    /// read it again and decide from what is there.
    fn is_conflict(&self) -> bool {
        match self {
            WriteError::Refused(_) => true,
            WriteError::Api(error) => job_status::is_conflict(error),
        }
    }
}

/// Sends a transition conditioned on the version of `job` it was decided
/// from: a write that raced the operator or another worker fails with 409
/// instead of overwriting it.
async fn write_checked(
    jobs: &Api<Job>,
    job: &Job,
    change: Result<JobTransition, TransitionError>,
) -> Result<Job, WriteError> {
    let version = job.resource_version().unwrap_or_default();
    write_at(jobs, &job.name_any(), &version, change).await
}

async fn write_at(
    jobs: &Api<Job>,
    name: &str,
    version: &str,
    change: Result<JobTransition, TransitionError>,
) -> Result<Job, WriteError> {
    Ok(job_status::write(jobs, name, version, &change?).await?)
}

async fn run_claimed(
    worker: &Worker,
    fleet: &PipelineWorker,
    jobs: &Api<Job>,
    job: Job,
    held: HeldClaim,
    progress: Progress,
    external: External,
) -> Answer {
    let attempt = Attempt {
        namespace: held.namespace.clone(),
        name: held.name.clone(),
        uid: held.uid.clone(),
        attempt: held.attempt,
    };
    let timeout = Duration::from_secs(
        job.spec
            .timeout_seconds
            .unwrap_or(fleet.spec.timeouts.job_seconds)
            .max(1)
            .unsigned_abs(),
    );
    let started = std::time::Instant::now();
    let claimed = Claimed {
        held,
        progress: progress.clone(),
        started,
        deadline: started + timeout + DEADLINE_GRACE,
        version: Mutex::new(job.resource_version().unwrap_or_default()),
    };
    tracing::info!(event = "job_started", job = %attempt.name, namespace = %attempt.namespace, attempt = attempt.attempt, pod = %worker.pod, claim = %claimed.held.id, "claimed");
    worker.stats.started();

    let span = tracing::info_span!("job", job = %attempt.name, namespace = %attempt.namespace, attempt = attempt.attempt);
    let ctx = Context {
        attempt: attempt.clone(),
        fleet: &fleet.spec,
        progress: progress.clone(),
        external,
    };
    let pipeline = tracing::Instrument::instrument(pipelines::run(&job.spec.input, &ctx), span);
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(timeout, pipeline) => match outcome {
            Ok(result) => Outcome::Finished(result),
            Err(_) => Outcome::Finished(Err(Failure {
                reason: FailureReason::JobTimeout,
                message: format!("attempt {} ran longer than {} s", attempt.attempt, timeout.as_secs()),
                retryable: true,
            })),
        },
        stop = keep_claim(jobs, &claimed, KeepOn::Stop) => stop,
    };
    let answer = finish(worker, fleet, jobs, &claimed, outcome).await;
    worker.stats.finished();
    answer
}

/// One attempt this worker holds the claim of.
struct Claimed {
    held: HeldClaim,
    progress: Progress,
    started: std::time::Instant,
    /// When the operator stops waiting for this attempt.
    deadline: std::time::Instant,
    /// The Job's resourceVersion after this worker's last write to it.
    version: Mutex<String>,
}

impl Claimed {
    fn remember(&self, written: &Job) {
        if let (Ok(mut version), Some(new)) = (self.version.lock(), written.resource_version()) {
            *version = new;
        }
    }
}

/// How an attempt ended.
#[derive(Debug)]
enum Outcome {
    Finished(Result<Done, Failure>),
    /// `spec.cancel` was set while it ran.
    Cancelled,
    /// The Job moved on without us (deleted, or requeued as WorkerLost).
    Lost(&'static str),
}

/// Renews the claim every third of its lease, writes step transitions as
/// they come (coalesced), and watches for cancel or for the Job slipping
/// away; returns only when the attempt must stop.
async fn keep_claim(jobs: &Api<Job>, claimed: &Claimed, keep_on: KeepOn) -> Outcome {
    let (held, progress) = (&claimed.held, &claimed.progress);
    let period = Duration::from_secs(u64::from(CLAIM_LEASE_SECONDS.unsigned_abs()) / 3);
    let mut next_renewal = tokio::time::Instant::now() + period;
    let mut last_write = tokio::time::Instant::now();
    let mut read_retry = Backoff::default();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next_renewal) => {}
            // A finished attempt's outcome write carries its steps: a progress
            // write beside it would only race it (a 409 for one or the other).
            () = progress.changed(), if keep_on == KeepOn::Stop => {
                tokio::time::sleep_until(last_write + MIN_WRITE_GAP).await;
            }
        }
        let job = match jobs.get_opt(&held.name).await {
            Ok(Some(job)) => job,
            Ok(None) => return Outcome::Lost("deleted"),
            Err(error) => {
                // A blip: the claim has two more renewals before it expires;
                // try again soon, but never in a tight loop.
                tracing::warn!(job = %held.name, %error, "cannot renew the claim this time");
                next_renewal = tokio::time::Instant::now() + read_retry.next();
                continue;
            }
        };
        read_retry = Backoff::default();
        if !still_held(&job, held) {
            return Outcome::Lost("claim_taken");
        }
        if job.spec.cancel && keep_on == KeepOn::Stop {
            return Outcome::Cancelled;
        }
        let renewal = JobTransition::progress(
            job.phase(),
            progress.snapshot(),
            progress.overall(),
            Timestamp::now(),
        );
        last_write = tokio::time::Instant::now();
        next_renewal = last_write + period;
        match write_checked(jobs, &job, renewal).await {
            Ok(written) => claimed.remember(&written),
            Err(error) if error.is_conflict() => {
                // Someone wrote in between: read again now, not a period later.
                tracing::debug!(job = %held.name, %error, "claim renewal lost a race; checking again");
                next_renewal = tokio::time::Instant::now();
            }
            Err(error) => {
                tracing::warn!(job = %held.name, %error, "cannot renew the claim this time");
                next_renewal = tokio::time::Instant::now() + read_retry.next();
            }
        }
    }
}

/// What the claim keeper does when `spec.cancel` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeepOn {
    /// Stop the attempt: it is still running.
    Stop,
    /// Keep renewing: the attempt is finished and its outcome is being written.
    Cancel,
}

/// Doubling waits from [`RETRY_FIRST`] up to [`RETRY_MAX`].
#[derive(Debug, Default)]
struct Backoff {
    last: Option<Duration>,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let wait = self
            .last
            .map_or(RETRY_FIRST, |last| (last * 2).min(RETRY_MAX));
        self.last = Some(wait);
        wait
    }
}

/// Writes the outcome (conditioned on still holding the claim), then answers.
async fn finish(
    worker: &Worker,
    fleet: &PipelineWorker,
    jobs: &Api<Job>,
    claimed: &Claimed,
    outcome: Outcome,
) -> Answer {
    let (held, progress) = (&claimed.held, &claimed.progress);
    let now = Timestamp::now();
    let pipeline = fleet.spec.pipeline;
    let took = claimed.started.elapsed();
    let steps = |running: StepPhase| {
        progress.close(running);
        progress.snapshot()
    };
    // Only the holder of a live claim gets here, so the Job is Running.
    let from = JobPhase::Running;
    let change = match &outcome {
        Outcome::Lost(why) => {
            tracing::warn!(event = "idempotent_skip", reason = why, job = %held.name, "the Job moved on without this worker");
            worker.stats.skipped(why);
            return Answer::Ack;
        }
        Outcome::Finished(Ok(Done::Wait(wait))) => {
            tracing::info!(event = "step_waiting", job = %held.name, namespace = %held.namespace, attempt = held.attempt, step = %wait.step, request_id = %wait.request_id, provider_status = ?wait.provider_status, "waiting for the provider; letting go of the Job");
            worker.stats.outcome(pipeline, "waiting", took);
            JobTransition::wait(from, wait.clone(), progress.snapshot(), progress.overall())
        }
        Outcome::Finished(Ok(Done::Finished(result))) => {
            tracing::info!(event = "job_completed", job = %held.name, namespace = %held.namespace, attempt = held.attempt, took_ms = took.as_millis() as u64, "succeeded");
            worker.stats.outcome(pipeline, "succeeded", took);
            JobTransition::succeed(from, result.clone(), steps(StepPhase::Succeeded), now)
        }
        Outcome::Finished(Err(failure)) => {
            tracing::warn!(event = "job_failed", job = %held.name, namespace = %held.namespace, attempt = held.attempt, reason = failure.reason.as_str(), retryable = failure.retryable, message = %failure.message, "attempt failed");
            let outcome = if failure.retryable {
                "retryable"
            } else {
                "failed"
            };
            worker.stats.outcome(pipeline, outcome, took);
            let error = JobError::new(failure.reason, failure.message.clone(), failure.retryable);
            JobTransition::fail(from, error, steps(StepPhase::Failed), now)
        }
        Outcome::Cancelled => {
            tracing::info!(event = "job_cancelled", job = %held.name, attempt = held.attempt, "stopped on cancel");
            worker.stats.outcome(pipeline, "cancelled", took);
            JobTransition::cancel_running(from, steps(StepPhase::Skipped), now)
        }
    };
    let change = match change {
        Ok(change) => change,
        Err(refused) => {
            tracing::error!(job = %held.name, %refused, "the outcome is not a transition from Running; handing the message back");
            return Answer::Nack;
        }
    };
    // The outcome may take a while to land (an apiserver that refuses or
    // is away); meanwhile the claim stays renewed, so nobody runs the
    // attempt again while its result is waiting to be written.
    let key = failpoint::attempt_key(&held.name, held.attempt);
    tokio::select! {
        answer = async {
            failpoint::pause(failpoint::BEFORE_OUTCOME, &key).await;
            write_outcome(jobs, claimed, &change).await
        } => answer,
        stopped = keep_claim(jobs, claimed, KeepOn::Cancel) => {
            if let Outcome::Lost(why) = stopped {
                tracing::warn!(event = "idempotent_skip", reason = why, job = %held.name, "the Job moved on before its outcome was written");
                worker.stats.skipped(why);
            }
            Answer::Ack
        }
    }
}

/// Writes the outcome, conditioned on the claim still being ours, trying
/// again with backoff until it lands, the Job moves on without us, or the
/// operator's deadline for the attempt passes.
async fn write_outcome(jobs: &Api<Job>, claimed: &Claimed, change: &JobTransition) -> Answer {
    let held = &claimed.held;
    let mut retry = Backoff::default();
    // The version of our own last write: if the Job is still at it, nothing
    // has touched it since and the claim is ours, so the first try needs no
    // read. A conflict means something did; read and check then.
    let mut unchanged_since_our_write = claimed.version.lock().ok().map(|v| v.clone());
    loop {
        if std::time::Instant::now() >= claimed.deadline {
            tracing::error!(job = %held.name, attempt = held.attempt, "the outcome could not be written before the attempt's deadline; handing the message back");
            return Answer::Nack;
        }
        let version = match unchanged_since_our_write.take() {
            Some(version) => version,
            None => match jobs.get_opt(&held.name).await {
                // The operator requeued it meanwhile, or it was deleted or
                // recreated: its decision stands.
                Ok(Some(job)) if !still_held(&job, held) => return Answer::Ack,
                Ok(None) => return Answer::Ack,
                Ok(Some(job)) => job.resource_version().unwrap_or_default(),
                Err(error) => {
                    tracing::warn!(job = %held.name, %error, "cannot read the Job to write its outcome; trying again");
                    tokio::time::sleep(retry.next()).await;
                    continue;
                }
            },
        };
        match job_status::write(jobs, &held.name, &version, change).await {
            Ok(_) => return Answer::Ack,
            Err(error) if job_status::is_conflict(&error) => continue,
            Err(error) => {
                tracing::warn!(job = %held.name, %error, "cannot write the outcome; trying again");
                tokio::time::sleep(retry.next()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_200_ms_doubling_to_2_s_and_never_spin() {
        let mut backoff = Backoff::default();
        let waits: Vec<u64> = (0..6).map(|_| backoff.next().as_millis() as u64).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 2000, 2000]);
    }
}
