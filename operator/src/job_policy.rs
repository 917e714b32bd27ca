//! What the operator does next with a Job, as a pure function of the Job, its
//! fleet and the time: publish, republish, retry, give up, cancel, delete, or
//! wait. The Job controller only carries the answer out.

use std::time::Duration;

use drover_crds::claim_clock::ClaimSeen;
use drover_crds::fleet_conditions::FleetCondition;
use drover_crds::job::{Job, JobPhase};
use drover_crds::{FailureReason, PipelineWorker, input};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Margin past a Job's own timeout before the operator stops waiting for
/// its worker: the worker enforces the timeout; this only catches a worker
/// that cannot.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(30);
/// Hand-backs by draining workers after which a Job fails instead of
/// starting over once more.
pub const MAX_RELEASES: i32 = 5;
/// How often a valid Job looks again whether its fleet's queue is ready.
pub const QUEUE_READY_POLL: Duration = Duration::from_secs(1);
/// Shortest wait before a Queued Job that nobody claimed is published again.
pub const MIN_UNCLAIMED_REPUBLISH: Duration = Duration::from_secs(30);

/// The operator's next move for one Job.
#[derive(Clone, Debug, PartialEq)]
pub enum NextStep {
    /// Nothing to do; look again after the given time if something is due then.
    Wait(Option<Duration>),
    /// A valid Job waits for its fleet's queue, which reports a problem
    /// (its `QueueReady` condition is False with `reason` and `message`):
    /// the Job must say so, and look again after `QUEUE_READY_POLL`.
    AwaitQueue { reason: String, message: String },
    /// Publish the message of `attempt` and mark the Job Queued. `republish`
    /// means the same attempt was already published once (its message may be lost).
    Publish { attempt: i32, republish: bool },
    /// An attempt failed and may be retried: wait in Backoff until `retry_at`.
    ScheduleRetry { retry_at: Timestamp },
    /// The worker holding the Job stopped renewing its claim.
    WorkerLost { give_up: bool },
    /// Finish the Job as Failed, for a reason a person reads.
    Fail {
        reason: FailureReason,
        message: String,
        /// The Job gave up after it was queued (retries exhausted, deadline),
        /// so it also goes to the fleet's dead-letter topic; otherwise it was
        /// rejected before it could run.
        dead_letter: bool,
    },
    /// `spec.cancel` is set and no worker is running the Job.
    Cancel,
    /// The Job finished longer than its TTL ago.
    Delete,
    /// `spec.retries` asks to run a Failed or Cancelled Job again.
    Retry,
    /// A Waiting Job's provider called back, or its poll is due: publish
    /// the same attempt again (no admission: it was admitted once).
    Resume { attempt: i32 },
}

/// The settings that decide a Job's retries and deadlines: the fleet's,
/// overridden by the Job's own.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSettings {
    pub max_attempts: i32,
    pub initial_backoff: Duration,
    pub backoff_multiplier: f64,
    pub max_backoff: Duration,
    pub timeout: Duration,
    pub ttl_after_finished: Option<Duration>,
    pub unclaimed_republish_after: Duration,
}

impl JobSettings {
    pub fn of(job: &Job, fleet: &PipelineWorker) -> Self {
        let retry = &fleet.spec.retry;
        let secs = |s: i64| Duration::from_secs(s.max(0).unsigned_abs());
        let ack_deadline = secs(i64::from(fleet.spec.queue.ack_deadline_seconds));
        Self {
            max_attempts: job.spec.max_attempts.unwrap_or(retry.max_attempts).max(1),
            initial_backoff: secs(retry.initial_backoff_seconds),
            backoff_multiplier: retry.backoff_multiplier.max(1.0),
            max_backoff: secs(retry.max_backoff_seconds),
            timeout: secs(
                job.spec
                    .timeout_seconds
                    .unwrap_or(fleet.spec.timeouts.job_seconds),
            ),
            ttl_after_finished: job
                .spec
                .ttl_seconds_after_finished
                .or(fleet.spec.ttl_seconds_after_finished)
                .map(secs),
            // Pub/Sub redelivers an unacked message after the ack deadline, so
            // only a message that is gone for good stays unclaimed much longer.
            unclaimed_republish_after: (ack_deadline * 3).max(MIN_UNCLAIMED_REPUBLISH),
        }
    }

    /// Wait before attempt `failed + 1`: `initial * multiplier^(failed - 1)`, at most `max`.
    pub fn backoff_after(&self, failed: i32) -> Duration {
        let exponent = f64::from(failed.max(1) - 1);
        let secs = self.initial_backoff.as_secs_f64() * self.backoff_multiplier.powf(exponent);
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// Decides the operator's next step. `fleet` is `None` when the Job's
/// PipelineWorker does not exist. `claim_seen` is when the operator first
/// saw the Job's current claim, on its own clock: expiry and deadline are
/// judged from it, never from the worker's `renewTime` and `startedAt`.
pub fn next_step(
    job: &Job,
    fleet: Option<&PipelineWorker>,
    claim_seen: Option<ClaimSeen>,
    now: Timestamp,
) -> NextStep {
    let status = job.status.clone().unwrap_or_default();
    let settings = fleet.map(|f| JobSettings::of(job, f));

    if retry_asked(job, &status) {
        return NextStep::Retry;
    }
    if status.phase.is_terminal() {
        let ttl = settings
            .as_ref()
            .and_then(|s| s.ttl_after_finished)
            .or_else(|| {
                job.spec
                    .ttl_seconds_after_finished
                    .map(|s| Duration::from_secs(s.max(0).unsigned_abs()))
            });
        return match (ttl, &status.finished_at) {
            (Some(ttl), Some(finished)) => match after(finished.0, ttl, now) {
                None => NextStep::Delete,
                Some(wait) => NextStep::Wait(Some(wait)),
            },
            _ => NextStep::Wait(None),
        };
    }

    if job.spec.cancel {
        return match (&status.phase, &status.claim) {
            // The worker stops it and writes Cancelled; step in only if it is gone.
            (JobPhase::Running, Some(claim))
                if claim_seen.is_some_and(|seen| seen.is_live(claim, now)) =>
            {
                let expiry = claim_seen.map_or(now, |seen| seen.expiry(claim));
                NextStep::Wait(Some(until(expiry, now)))
            }
            _ => NextStep::Cancel,
        };
    }

    let (Some(fleet), Some(settings)) = (fleet, settings) else {
        return NextStep::Fail {
            reason: FailureReason::WorkerNotFound,
            message: format!(
                "PipelineWorker {:?} does not exist in this namespace",
                job.spec.worker
            ),
            dead_letter: false,
        };
    };

    match status.phase {
        JobPhase::Pending => match input::validate(fleet.spec.pipeline, &job.spec.input) {
            Err(invalid) => NextStep::Fail {
                reason: FailureReason::InvalidInput,
                message: invalid.to_string(),
                dead_letter: false,
            },
            // Pub/Sub delivers only what is published after a subscription
            // exists: a first publish before the fleet's queue is in place
            // would be lost until the watchdog's republish minutes later.
            Ok(()) if !queue_ready(fleet) => match queue_problem(fleet) {
                Some((reason, message)) => NextStep::AwaitQueue { reason, message },
                // Not checked yet (a new fleet): a moment, nothing to report.
                None => NextStep::Wait(Some(QUEUE_READY_POLL)),
            },
            Ok(()) => NextStep::Publish {
                attempt: status.attempt.max(1),
                republish: false,
            },
        },
        JobPhase::Queued if status.releases > MAX_RELEASES => NextStep::Fail {
            reason: FailureReason::ReleasedTooOften,
            message: format!(
                "draining workers handed attempt {} back {} times without finishing it: \
                 it needs longer than the {} s its workers are given (timeouts.jobSeconds)",
                status.attempt,
                status.releases,
                settings.timeout.as_secs()
            ),
            dead_letter: true,
        },
        JobPhase::Queued => {
            let queued_at = status.queued_at.as_ref().map_or(now, |t| t.0);
            match after(queued_at, settings.unclaimed_republish_after, now) {
                None => NextStep::Publish {
                    attempt: status.attempt.max(1),
                    republish: true,
                },
                Some(wait) => NextStep::Wait(Some(wait)),
            }
        }
        JobPhase::Running => {
            let live = status
                .claim
                .as_ref()
                .zip(claim_seen)
                .filter(|(claim, seen)| seen.is_live(claim, now));
            let Some((claim, seen)) = live else {
                return NextStep::WorkerLost {
                    give_up: status.attempts_used() >= settings.max_attempts,
                };
            };
            match after(seen.claimed_at, settings.timeout + DEADLINE_GRACE, now) {
                None => NextStep::Fail {
                    reason: FailureReason::DeadlineExceeded,
                    message: format!(
                        "attempt {} ran longer than its {} s timeout and its worker did not stop it",
                        status.attempt,
                        settings.timeout.as_secs()
                    ),
                    dead_letter: true,
                },
                Some(wait) => NextStep::Wait(Some(wait.min(until(seen.expiry(claim), now)))),
            }
        }
        JobPhase::Backoff => {
            if status.attempts_used() >= settings.max_attempts {
                let last = status
                    .error
                    .as_ref()
                    .map(|e| format!(": {} ({})", e.message, e.reason))
                    .unwrap_or_default();
                return NextStep::Fail {
                    reason: FailureReason::MaxAttemptsExceeded,
                    message: format!("all {} attempts failed{last}", settings.max_attempts),
                    dead_letter: true,
                };
            }
            match &status.retry_at {
                None => NextStep::ScheduleRetry {
                    retry_at: add(now, settings.backoff_after(status.attempt)),
                },
                Some(at) if at.0 <= now => NextStep::Publish {
                    attempt: status.attempt + 1,
                    republish: false,
                },
                Some(at) => NextStep::Wait(Some(until(at.0, now))),
            }
        }
        JobPhase::Waiting => waiting_step(&status, fleet, now),
        // Handled above; kept so a new phase cannot slip through.
        JobPhase::Succeeded | JobPhase::Failed | JobPhase::Cancelled => NextStep::Wait(None),
    }
}

/// A Waiting Job: resumed when its callback came or a poll is due, failed
/// as ProviderTimeout once its request is older than `waitTimeoutSeconds`.
/// Both times come from status, so a restarted operator keeps them.
fn waiting_step(
    status: &drover_crds::JobStatus,
    fleet: &PipelineWorker,
    now: Timestamp,
) -> NextStep {
    let attempt = status.attempt.max(1);
    let (Some(external), Some(render)) = (&status.external, &fleet.spec.render) else {
        // Nothing to wait by: let a worker look at it.
        return NextStep::Resume { attempt };
    };
    let secs = |s: i64| Duration::from_secs(s.max(1).unsigned_abs());
    let submitted = external.submitted_at.as_ref().map_or(now, |t| t.0);
    let Some(timeout_in) = after(submitted, secs(render.wait_timeout_seconds), now) else {
        return NextStep::Fail {
            reason: FailureReason::ProviderTimeout,
            message: format!(
                "request {} at the provider did not finish within {} s (last status: {})",
                external.request_id,
                render.wait_timeout_seconds,
                external.provider_status.as_deref().unwrap_or("none")
            ),
            dead_letter: true,
        };
    };
    if external.callback_at.is_some() {
        return NextStep::Resume { attempt };
    }
    let since = external.waiting_since.as_ref().map_or(submitted, |t| t.0);
    match after(since, secs(render.poll_after_seconds), now) {
        None => NextStep::Resume { attempt },
        Some(poll_in) => NextStep::Wait(Some(poll_in.min(timeout_in))),
    }
}

/// A Failed or Cancelled Job whose `spec.retries` is ahead of its status
/// (and whose cancel, if any, was lifted with it) runs again.
fn retry_asked(job: &Job, status: &drover_crds::JobStatus) -> bool {
    matches!(status.phase, JobPhase::Failed | JobPhase::Cancelled)
        && !job.spec.cancel
        && status.retry_requested(job.spec.retries)
}

/// Whether the fleet's status says its topic and subscription exist.
fn queue_ready(fleet: &PipelineWorker) -> bool {
    fleet.status.as_ref().is_some_and(|status| {
        status
            .conditions
            .iter()
            .any(|c| c.type_ == FleetCondition::QueueReady.as_str() && c.status == "True")
    })
}

/// The reason and message of the fleet's `QueueReady` condition when it is False.
fn queue_problem(fleet: &PipelineWorker) -> Option<(String, String)> {
    let status = fleet.status.as_ref()?;
    status
        .conditions
        .iter()
        .find(|c| c.type_ == FleetCondition::QueueReady.as_str() && c.status == "False")
        .map(|c| (c.reason.clone(), c.message.clone()))
}

/// `None` once `start + wait` has passed, else the time left.
fn after(start: Timestamp, wait: Duration, now: Timestamp) -> Option<Duration> {
    let due = add(start, wait);
    (due > now).then(|| until(due, now))
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

fn until(t: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_crds::JobStatus;
    use drover_crds::job::{Claim, JobError};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn ago(secs: i64) -> Time {
        Time(now().checked_sub(SignedDuration::from_secs(secs)).unwrap())
    }

    fn fleet() -> PipelineWorker {
        let mut fleet = unready_fleet();
        fleet.status = Some(drover_crds::PipelineWorkerStatus {
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "QueueReady".into(),
                status: "True".into(),
                reason: "Ready".into(),
                message: String::new(),
                last_transition_time: ago(0),
                observed_generation: None,
            }],
            ..Default::default()
        });
        fleet
    }

    fn unready_fleet() -> PipelineWorker {
        PipelineWorker::new(
            "w",
            serde_json::from_value(json!({
                "pipeline": "sleep",
                "queue": {"topic": "t", "subscription": "s", "ackDeadlineSeconds": 20},
                "retry": {"maxAttempts": 3, "initialBackoffSeconds": 2, "backoffMultiplier": 3, "maxBackoffSeconds": 10},
                "timeouts": {"stepSeconds": 60, "jobSeconds": 120},
                "ttlSecondsAfterFinished": 600,
            }))
            .unwrap(),
        )
    }

    fn job(phase: JobPhase, attempt: i32) -> Job {
        let mut job = Job::new(
            "j",
            serde_json::from_value(json!({"worker": "w", "input": {"durationMillis": 5}})).unwrap(),
        );
        job.status = Some(JobStatus {
            phase,
            attempt,
            ..JobStatus::default()
        });
        job
    }

    /// What an operator whose clock agrees with the worker's has seen.
    fn trusted(job: &Job) -> Option<ClaimSeen> {
        let status = job.status.as_ref()?;
        let started = status.started_at.as_ref().map_or(now(), |t| t.0);
        status
            .claim
            .as_ref()
            .map(|claim| ClaimSeen::trusting(claim, started))
    }

    fn step(job: &Job) -> NextStep {
        next_step(job, Some(&fleet()), trusted(job), now())
    }

    #[test]
    fn valid_pending_job_is_published_as_attempt_one() {
        assert_eq!(
            step(&job(JobPhase::Pending, 0)),
            NextStep::Publish {
                attempt: 1,
                republish: false
            }
        );
    }

    #[test]
    fn a_valid_job_waits_for_its_fleets_queue_before_the_first_publish() {
        let j = job(JobPhase::Pending, 0);
        assert_eq!(
            next_step(&j, Some(&unready_fleet()), None, now()),
            NextStep::Wait(Some(QUEUE_READY_POLL))
        );
    }

    #[test]
    fn a_job_waiting_for_a_broken_queue_says_what_is_wrong() {
        let mut fleet = fleet();
        let condition = &mut fleet.status.as_mut().unwrap().conditions[0];
        condition.status = "False".into();
        condition.reason = "TopicNotFound".into();
        condition.message = "topic t does not exist".into();
        assert_eq!(
            next_step(&job(JobPhase::Pending, 0), Some(&fleet), None, now()),
            NextStep::AwaitQueue {
                reason: "TopicNotFound".into(),
                message: "topic t does not exist".into()
            }
        );
    }

    #[test]
    fn invalid_input_fails_before_any_message() {
        let mut j = job(JobPhase::Pending, 0);
        j.spec.input = json!({"duration": 5});
        let NextStep::Fail {
            reason,
            message,
            dead_letter,
        } = step(&j)
        else {
            panic!("expected a failure");
        };
        assert_eq!(reason, FailureReason::InvalidInput);
        assert!(message.contains("unknown field `duration`"), "{message}");
        assert!(!dead_letter);
    }

    #[test]
    fn job_for_a_missing_worker_fails_with_worker_not_found() {
        let NextStep::Fail {
            reason, message, ..
        } = next_step(&job(JobPhase::Pending, 0), None, None, now())
        else {
            panic!("expected a failure");
        };
        assert_eq!(reason, FailureReason::WorkerNotFound);
        assert!(message.contains("\"w\""), "{message}");
    }

    #[test]
    fn unclaimed_queued_job_is_republished_after_three_ack_deadlines() {
        let mut j = job(JobPhase::Queued, 1);
        j.status.as_mut().unwrap().queued_at = Some(ago(59));
        assert_eq!(step(&j), NextStep::Wait(Some(Duration::from_secs(1))));
        j.status.as_mut().unwrap().queued_at = Some(ago(60));
        assert_eq!(
            step(&j),
            NextStep::Publish {
                attempt: 1,
                republish: true
            }
        );
    }

    #[test]
    fn expired_claim_is_worker_lost() {
        let mut j = job(JobPhase::Running, 1);
        j.status.as_mut().unwrap().claim = Some(Claim {
            id: "c".into(),
            pod: "p".into(),
            renew_time: ago(31),
            lease_seconds: 30,
        });
        assert_eq!(step(&j), NextStep::WorkerLost { give_up: false });
        j.status.as_mut().unwrap().attempt = 3;
        assert_eq!(step(&j), NextStep::WorkerLost { give_up: true });
    }

    #[test]
    fn live_claim_is_left_alone_until_it_expires() {
        let mut j = job(JobPhase::Running, 1);
        let s = j.status.as_mut().unwrap();
        s.started_at = Some(ago(10));
        s.claim = Some(Claim {
            id: "c".into(),
            pod: "p".into(),
            renew_time: ago(5),
            lease_seconds: 30,
        });
        assert_eq!(step(&j), NextStep::Wait(Some(Duration::from_secs(25))));
    }

    #[test]
    fn running_past_timeout_and_grace_fails_with_deadline_exceeded() {
        let mut j = job(JobPhase::Running, 1);
        let s = j.status.as_mut().unwrap();
        s.started_at = Some(ago(151));
        s.claim = Some(Claim {
            id: "c".into(),
            pod: "p".into(),
            renew_time: ago(1),
            lease_seconds: 30,
        });
        assert!(matches!(
            step(&j),
            NextStep::Fail {
                reason: FailureReason::DeadlineExceeded,
                ..
            }
        ));
    }

    #[test]
    fn a_worker_clock_sixty_seconds_behind_is_neither_lost_nor_past_its_deadline() {
        let mut j = job(JobPhase::Running, 1);
        let s = j.status.as_mut().unwrap();
        // By the worker's clock it started 151 s and renewed 61 s ago; the
        // operator saw the claim appear 10 s ago and its last renewal now.
        s.started_at = Some(ago(151));
        s.claim = Some(Claim {
            id: "c".into(),
            pod: "p".into(),
            renew_time: ago(61),
            lease_seconds: 30,
        });
        let seen = ClaimSeen {
            renewed_at: now(),
            claimed_at: ago(10).0,
        };
        assert_eq!(
            next_step(&j, Some(&fleet()), Some(seen), now()),
            NextStep::Wait(Some(Duration::from_secs(30)))
        );
    }

    #[test]
    fn a_claim_first_seen_now_is_never_lost_at_once() {
        let mut j = job(JobPhase::Running, 1);
        j.status.as_mut().unwrap().claim = Some(Claim {
            id: "c".into(),
            pod: "p".into(),
            renew_time: ago(3600),
            lease_seconds: 30,
        });
        let seen = ClaimSeen {
            renewed_at: now(),
            claimed_at: now(),
        };
        assert!(matches!(
            next_step(&j, Some(&fleet()), Some(seen), now()),
            NextStep::Wait(Some(_))
        ));
    }

    #[test]
    fn a_job_handed_back_too_often_fails_with_a_reason() {
        let mut j = job(JobPhase::Queued, 1);
        j.status.as_mut().unwrap().queued_at = Some(ago(1));
        j.status.as_mut().unwrap().releases = MAX_RELEASES;
        assert!(matches!(step(&j), NextStep::Wait(_)));
        j.status.as_mut().unwrap().releases = MAX_RELEASES + 1;
        assert!(matches!(
            step(&j),
            NextStep::Fail {
                reason: FailureReason::ReleasedTooOften,
                dead_letter: true,
                ..
            }
        ));
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_maximum() {
        let s = JobSettings::of(&job(JobPhase::Backoff, 1), &fleet());
        assert_eq!(s.backoff_after(1), Duration::from_secs(2));
        assert_eq!(s.backoff_after(2), Duration::from_secs(6));
        assert_eq!(s.backoff_after(3), Duration::from_secs(10));
    }

    #[test]
    fn backoff_is_scheduled_then_the_next_attempt_published() {
        let mut j = job(JobPhase::Backoff, 1);
        assert_eq!(
            step(&j),
            NextStep::ScheduleRetry {
                retry_at: now().checked_add(SignedDuration::from_secs(2)).unwrap()
            }
        );
        j.status.as_mut().unwrap().retry_at = Some(ago(0));
        assert_eq!(
            step(&j),
            NextStep::Publish {
                attempt: 2,
                republish: false
            }
        );
    }

    #[test]
    fn last_failed_attempt_gives_up_with_dead_letter() {
        let mut j = job(JobPhase::Backoff, 3);
        j.status.as_mut().unwrap().error = Some(JobError {
            reason: "StepFailed".into(),
            message: "boom".into(),
            retryable: true,
        });
        let NextStep::Fail {
            reason,
            message,
            dead_letter,
        } = step(&j)
        else {
            panic!("expected a failure");
        };
        assert_eq!(reason, FailureReason::MaxAttemptsExceeded);
        assert_eq!(message, "all 3 attempts failed: boom (StepFailed)");
        assert!(dead_letter);
    }

    #[test]
    fn job_max_attempts_overrides_the_fleet() {
        let mut j = job(JobPhase::Backoff, 1);
        j.spec.max_attempts = Some(1);
        assert!(matches!(
            step(&j),
            NextStep::Fail {
                reason: FailureReason::MaxAttemptsExceeded,
                ..
            }
        ));
    }

    #[test]
    fn a_failed_or_cancelled_job_asked_to_retry_is_retried_and_a_succeeded_one_is_not() {
        for phase in [JobPhase::Failed, JobPhase::Cancelled] {
            let mut j = job(phase, 3);
            j.status.as_mut().unwrap().finished_at = Some(ago(10_000));
            j.spec.retries = 1;
            assert_eq!(step(&j), NextStep::Retry, "{phase:?}");
            j.status.as_mut().unwrap().retries = 1;
            assert_eq!(
                step(&j),
                NextStep::Delete,
                "{phase:?}: asked once, retried once"
            );
        }
        let mut j = job(JobPhase::Succeeded, 1);
        j.spec.retries = 1;
        assert_ne!(step(&j), NextStep::Retry);
        let mut j = job(JobPhase::Cancelled, 1);
        (j.spec.retries, j.spec.cancel) = (1, true);
        assert_ne!(step(&j), NextStep::Retry, "a cancel still set wins");
    }

    #[test]
    fn a_retried_job_counts_its_attempts_from_the_retry() {
        let mut j = job(JobPhase::Backoff, 3);
        j.status.as_mut().unwrap().attempt_base = 3;
        j.status.as_mut().unwrap().retry_at = Some(ago(0));
        assert_eq!(
            step(&j),
            NextStep::Publish {
                attempt: 4,
                republish: false
            }
        );
        j.status.as_mut().unwrap().attempt = 6;
        assert!(matches!(
            step(&j),
            NextStep::Fail {
                reason: FailureReason::MaxAttemptsExceeded,
                ..
            }
        ));
    }

    #[test]
    fn cancel_waits_for_a_live_worker_but_not_for_a_dead_one() {
        let mut j = job(JobPhase::Queued, 1);
        j.spec.cancel = true;
        assert_eq!(step(&j), NextStep::Cancel);
        let mut j = job(JobPhase::Running, 1);
        j.spec.cancel = true;
        j.status.as_mut().unwrap().claim = Some(Claim {
            id: "c".into(),
            pod: "p".into(),
            renew_time: ago(10),
            lease_seconds: 30,
        });
        assert_eq!(step(&j), NextStep::Wait(Some(Duration::from_secs(20))));
        j.status
            .as_mut()
            .unwrap()
            .claim
            .as_mut()
            .unwrap()
            .renew_time = ago(40);
        assert_eq!(step(&j), NextStep::Cancel);
    }

    #[test]
    fn finished_job_is_deleted_after_its_ttl() {
        let mut j = job(JobPhase::Succeeded, 1);
        j.status.as_mut().unwrap().finished_at = Some(ago(599));
        assert_eq!(step(&j), NextStep::Wait(Some(Duration::from_secs(1))));
        j.status.as_mut().unwrap().finished_at = Some(ago(600));
        assert_eq!(step(&j), NextStep::Delete);
        j.spec.ttl_seconds_after_finished = Some(0);
        j.status.as_mut().unwrap().finished_at = Some(ago(0));
        assert_eq!(step(&j), NextStep::Delete);
    }

    #[test]
    fn finished_job_without_ttl_is_kept() {
        let mut fleet = fleet();
        fleet.spec.ttl_seconds_after_finished = None;
        let mut j = job(JobPhase::Failed, 1);
        j.status.as_mut().unwrap().finished_at = Some(ago(10_000));
        assert_eq!(
            next_step(&j, Some(&fleet), None, now()),
            NextStep::Wait(None)
        );
    }

    fn render_fleet() -> PipelineWorker {
        let mut fleet = fleet();
        fleet.spec.render = Some(
            serde_json::from_value(json!({
                "submitUrl": "https://p/jobs", "statusUrl": "https://p/jobs/{requestId}",
                "outputPrefix": "s3://renders/", "pollAfterSeconds": 30, "waitTimeoutSeconds": 600,
            }))
            .unwrap(),
        );
        fleet
    }

    fn waiting(submitted_ago: i64, waiting_ago: i64, called_back: bool) -> Job {
        let mut j = job(JobPhase::Waiting, 2);
        j.status.as_mut().unwrap().external = Some(drover_crds::ExternalWait {
            step: "render".into(),
            attempt: 2,
            request_id: "r-1".into(),
            submitted_at: Some(ago(submitted_ago)),
            waiting_since: Some(ago(waiting_ago)),
            callback_at: called_back.then(|| ago(0)),
            ..Default::default()
        });
        j
    }

    fn waiting_step_of(j: &Job) -> NextStep {
        next_step(j, Some(&render_fleet()), None, now())
    }

    #[test]
    fn a_waiting_job_sleeps_until_its_poll_is_due_then_resumes_its_own_attempt() {
        assert_eq!(
            waiting_step_of(&waiting(10, 10, false)),
            NextStep::Wait(Some(Duration::from_secs(20)))
        );
        assert_eq!(
            waiting_step_of(&waiting(100, 30, false)),
            NextStep::Resume { attempt: 2 }
        );
    }

    #[test]
    fn a_callback_resumes_a_waiting_job_at_once() {
        assert_eq!(
            waiting_step_of(&waiting(1, 1, true)),
            NextStep::Resume { attempt: 2 }
        );
    }

    #[test]
    fn a_request_older_than_the_wait_timeout_fails_as_provider_timeout() {
        let Some(NextStep::Fail {
            reason,
            dead_letter,
            ..
        }) = Some(waiting_step_of(&waiting(600, 5, false)))
        else {
            panic!("a timed-out wait fails");
        };
        assert_eq!(
            (reason, dead_letter),
            (FailureReason::ProviderTimeout, true)
        );
        // The timeout bounds the next look, too.
        assert_eq!(
            waiting_step_of(&waiting(590, 0, false)),
            NextStep::Wait(Some(Duration::from_secs(10)))
        );
        // Even a callback does not bring back a request past its time.
        assert!(matches!(
            waiting_step_of(&waiting(601, 0, true)),
            NextStep::Fail {
                reason: FailureReason::ProviderTimeout,
                ..
            }
        ));
    }

    #[test]
    fn a_waiting_job_whose_fleet_is_gone_fails_and_the_failure_is_a_legal_move() {
        let j = waiting(1, 1, false);
        let NextStep::Fail {
            reason,
            dead_letter,
            ..
        } = next_step(&j, None, None, now())
        else {
            panic!("no fleet: the Job fails");
        };
        assert_eq!(
            (reason, dead_letter),
            (FailureReason::WorkerNotFound, false)
        );
        let change =
            drover_crds::JobTransition::reject(JobPhase::Waiting, reason, "gone".into(), now());
        assert!(change.is_ok(), "{change:?}");
        let timeout = drover_crds::JobTransition::give_up(
            JobPhase::Waiting,
            FailureReason::ProviderTimeout,
            "late".into(),
            now(),
        );
        assert!(timeout.is_ok(), "{timeout:?}");
    }

    #[test]
    fn a_waiting_job_that_is_cancelled_is_cancelled_by_the_operator() {
        let mut j = waiting(1, 1, false);
        j.spec.cancel = true;
        assert_eq!(waiting_step_of(&j), NextStep::Cancel);
    }
}
