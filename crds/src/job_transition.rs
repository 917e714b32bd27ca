//! One typed status patch per Job transition.
//!
//! Every writer of Job status (the operator's dispatcher, the worker's claim,
//! claim keeper and outcome, its shutdown release) builds a [`JobTransition`]
//! here and hands it to the one conditioned writer. A constructor checks the
//! move against the state machine first, so an illegal transition is refused
//! before anything is sent, and the status keys live in this file only.
//!
//! The patch is a JSON merge patch (RFC 7386): a field left `None` is kept,
//! `Some(None)` clears it, arrays (`steps`, `conditions`) are replaced whole.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use crate::bounds;
use crate::failure::FailureReason;
use crate::job::{ExternalWait, JobError, JobPhase, StepStatus};
use crate::job_state::{Transition, TransitionError};

/// `status` of a Job merge patch: only the fields a transition sets.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobStatusPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Option<Time>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Option<Time>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim: Option<Option<ClaimPatch>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepStatus>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Option<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_ref: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Option<JobError>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub releases: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt_base: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<Option<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external: Option<Option<ExternalPatch>>,
}

/// `status.external` of a merge patch: `Some(None)` clears a field.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<Option<Time>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<Option<Time>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub polls: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_status: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_url: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_at: Option<Option<Time>>,
}

/// `status.claim` of a merge patch: a renewal sets only `renewTime`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renew_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<i32>,
}

/// A checked phase change and the status patch that makes it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobTransition {
    pub transition: Transition,
    pub status: JobStatusPatch,
}

/// The Job condition types, mirroring batch Jobs for `kubectl wait`.
pub const CONDITION_COMPLETE: &str = "Complete";
pub const CONDITION_FAILED: &str = "Failed";
/// Condition reasons that are not failure reasons.
pub const REASON_SUCCEEDED: &str = "Succeeded";
pub const REASON_CANCELLED: &str = "Cancelled";

/// The operator cannot publish the Job's message (reason: what refused it).
pub const CONDITION_PUBLISH_FAILED: &str = "PublishFailed";
/// The Job failed, but its dead-letter message could not be published.
pub const CONDITION_DEAD_LETTER_FAILED: &str = "DeadLetterFailed";
/// Reason of [`CONDITION_DEAD_LETTER_FAILED`].
pub const REASON_DEAD_LETTER_PUBLISH_FAILED: &str = "DeadLetterPublishFailed";
/// A published attempt was not claimed in time and was published again.
pub const CONDITION_UNCLAIMED: &str = "Unclaimed";
/// Reason of [`CONDITION_UNCLAIMED`].
pub const REASON_NOT_CLAIMED: &str = "NotClaimed";
/// Conditions the operator sets on a waiting Job and clears once the Job
/// moves on (published, claimed).
pub const WAITING_CONDITIONS: [&str; 2] = [CONDITION_PUBLISH_FAILED, CONDITION_UNCLAIMED];

/// The facts a worker writes when it claims an attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct NewClaim {
    /// New for every claim (see [`crate::job::Claim::id`]).
    pub id: String,
    pub attempt: i32,
    pub pod: String,
    pub lease_seconds: i32,
    pub steps: Vec<StepStatus>,
}

impl JobTransition {
    /// Checks `transition` from `from` and pairs it with its patch; the
    /// patch always states the phase it leads to.
    fn checked(
        transition: Transition,
        from: JobPhase,
        status: JobStatusPatch,
    ) -> Result<Self, TransitionError> {
        transition.check_from(from)?;
        Ok(Self {
            transition,
            status: JobStatusPatch {
                phase: Some(transition.to()),
                ..status
            },
        })
    }

    // --- the operator ---

    /// Publish (Pending), Requeue (Backoff, attempt + 1), Republish
    /// (Queued) or Resume (Waiting, same attempt): the attempt's message
    /// went out with `message_id`.
    pub fn queued(
        transition: Transition,
        from: JobPhase,
        attempt: i32,
        message_id: String,
        generation: Option<i64>,
        now: Timestamp,
    ) -> Result<Self, TransitionError> {
        if !matches!(
            transition,
            Transition::Publish | Transition::Requeue | Transition::Republish | Transition::Resume
        ) {
            return Err(TransitionError::NotAllowed {
                actor: transition.actor(),
                from,
                to: transition.to(),
            });
        }
        Self::checked(
            transition,
            from,
            JobStatusPatch {
                attempt: Some(attempt),
                queued_at: Some(Time(now)),
                message_id: Some(message_id),
                claim: Some(None),
                retry_at: Some(None),
                observed_generation: Some(generation),
                ..JobStatusPatch::default()
            },
        )
    }

    /// A failed attempt waits in Backoff until `retry_at`.
    pub fn schedule_retry(from: JobPhase, retry_at: Timestamp) -> Result<Self, TransitionError> {
        Self::checked(
            Transition::ScheduleRetry,
            from,
            JobStatusPatch {
                retry_at: Some(Some(Time(retry_at))),
                ..JobStatusPatch::default()
            },
        )
    }

    /// The running attempt's claim expired: it counts as failed, retryably.
    pub fn worker_lost(from: JobPhase, message: String) -> Result<Self, TransitionError> {
        Self::checked(
            Transition::WorkerLost,
            from,
            JobStatusPatch {
                claim: Some(None),
                retry_at: Some(None),
                error: Some(Some(JobError::new(
                    FailureReason::WorkerLost,
                    message,
                    true,
                ))),
                ..JobStatusPatch::default()
            },
        )
    }

    /// The Job cannot run at all (invalid input, unknown worker).
    pub fn reject(
        from: JobPhase,
        reason: FailureReason,
        message: String,
        now: Timestamp,
    ) -> Result<Self, TransitionError> {
        Self::checked(Transition::Reject, from, failed(reason, message, now))
    }

    /// Retries are exhausted or a deadline passed.
    pub fn give_up(
        from: JobPhase,
        reason: FailureReason,
        message: String,
        now: Timestamp,
    ) -> Result<Self, TransitionError> {
        Self::checked(Transition::GiveUp, from, failed(reason, message, now))
    }

    /// `spec.cancel` on a Job no live worker runs.
    pub fn cancel_idle(from: JobPhase, now: Timestamp) -> Result<Self, TransitionError> {
        Self::checked(Transition::CancelIdle, from, cancelled(now, None))
    }

    // --- a worker ---

    /// A worker takes the attempt: its first step starts now.
    pub fn claim(from: JobPhase, claim: NewClaim, now: Timestamp) -> Result<Self, TransitionError> {
        Self::checked(
            Transition::Claim,
            from,
            JobStatusPatch {
                attempt: Some(claim.attempt),
                started_at: Some(Time(now)),
                claim: Some(Some(ClaimPatch {
                    id: Some(claim.id),
                    pod: Some(claim.pod),
                    renew_time: Some(Time(now)),
                    lease_seconds: Some(claim.lease_seconds),
                })),
                steps: Some(bounded_steps(claim.steps)),
                progress: Some(0),
                result: Some(None),
                result_ref: Some(None),
                ..JobStatusPatch::default()
            },
        )
    }

    /// Renews the claim and writes step progress.
    pub fn progress(
        from: JobPhase,
        steps: Vec<StepStatus>,
        overall: i32,
        now: Timestamp,
    ) -> Result<Self, TransitionError> {
        Self::checked(
            Transition::Progress,
            from,
            JobStatusPatch {
                claim: Some(Some(ClaimPatch {
                    renew_time: Some(Time(now)),
                    ..ClaimPatch::default()
                })),
                steps: Some(bounded_steps(steps)),
                progress: Some(overall.clamp(0, 100)),
                ..JobStatusPatch::default()
            },
        )
    }

    /// The attempt produced `result`. A result larger than
    /// [`bounds::MAX_RESULT_BYTES`] is not kept: one that names its output
    /// (`outputUrl`) keeps only that, as `resultRef`; any other fails the
    /// attempt for good as `ResultTooLarge` (a pipeline bug, not a retry).
    pub fn succeed(
        from: JobPhase,
        result: Value,
        steps: Vec<StepStatus>,
        now: Timestamp,
    ) -> Result<Self, TransitionError> {
        let size = bounds::result_bytes(&result);
        if size > bounds::MAX_RESULT_BYTES {
            let output = result
                .get("outputUrl")
                .and_then(Value::as_str)
                .filter(|url| url.len() <= bounds::MAX_RESULT_REF_BYTES);
            let Some(output) = output else {
                let message = format!(
                    "the result is {size} bytes, more than the {} a Job keeps; write large outputs to object storage",
                    bounds::MAX_RESULT_BYTES
                );
                let error = JobError::new(FailureReason::ResultTooLarge, message, false);
                return Self::fail(from, error, steps, now);
            };
            let mut change = Self::succeed(from, Value::Object(Default::default()), steps, now)?;
            change.status.result = Some(None);
            change.status.result_ref = Some(Some(output.to_owned()));
            return Ok(change);
        }
        Self::checked(
            Transition::Succeed,
            from,
            JobStatusPatch {
                finished_at: Some(Some(Time(now))),
                progress: Some(100),
                result: Some(Some(result)),
                error: Some(None),
                claim: Some(None),
                steps: Some(bounded_steps(steps)),
                conditions: Some(vec![condition(
                    CONDITION_COMPLETE,
                    REASON_SUCCEEDED,
                    "the pipeline finished",
                    now,
                )]),
                ..JobStatusPatch::default()
            },
        )
    }

    /// The attempt failed; whether another may succeed decides between
    /// Backoff (the operator retries or gives up) and Failed.
    pub fn fail(
        from: JobPhase,
        error: JobError,
        steps: Vec<StepStatus>,
        now: Timestamp,
    ) -> Result<Self, TransitionError> {
        // A worker may build the error itself; its message is bounded here.
        let error = JobError {
            message: bounds::message(&error.message),
            ..error
        };
        if error.retryable {
            return Self::checked(
                Transition::FailRetryable,
                from,
                JobStatusPatch {
                    error: Some(Some(error)),
                    claim: Some(None),
                    retry_at: Some(None),
                    steps: Some(bounded_steps(steps)),
                    ..JobStatusPatch::default()
                },
            );
        }
        let status = JobStatusPatch {
            finished_at: Some(Some(Time(now))),
            claim: Some(None),
            steps: Some(bounded_steps(steps)),
            conditions: Some(vec![condition(
                CONDITION_FAILED,
                &error.reason,
                &error.message,
                now,
            )]),
            error: Some(Some(error)),
            ..JobStatusPatch::default()
        };
        Self::checked(Transition::FailPermanent, from, status)
    }

    /// The worker stopped the attempt because `spec.cancel` was set.
    pub fn cancel_running(
        from: JobPhase,
        steps: Vec<StepStatus>,
        now: Timestamp,
    ) -> Result<Self, TransitionError> {
        Self::checked(
            Transition::CancelRunning,
            from,
            cancelled(now, Some(bounded_steps(steps))),
        )
    }

    /// The worker shuts down before the attempt finished: hand it back,
    /// counting the hand-back (`released_before` is the count read).
    pub fn release(
        from: JobPhase,
        released_before: i32,
        now: Timestamp,
    ) -> Result<Self, TransitionError> {
        Self::checked(
            Transition::Release,
            from,
            JobStatusPatch {
                claim: Some(None),
                queued_at: Some(Time(now)),
                releases: Some(released_before.saturating_add(1)),
                ..JobStatusPatch::default()
            },
        )
    }
}

// --- a step that waits for an outside provider ---

impl JobTransition {
    /// The attempt's step `wait.step` waits for its provider: the worker
    /// lets go of the claim and records the request. Any callback of an
    /// earlier wait is cleared, so only a new one resumes the Job.
    pub fn wait(
        from: JobPhase,
        wait: ExternalWait,
        steps: Vec<StepStatus>,
        overall: i32,
    ) -> Result<Self, TransitionError> {
        let bounded = |text: Option<String>| text.map(|t| bounds::message(&t));
        Self::checked(
            Transition::Wait,
            from,
            JobStatusPatch {
                claim: Some(None),
                steps: Some(bounded_steps(steps)),
                progress: Some(overall.clamp(0, 100)),
                external: Some(Some(ExternalPatch {
                    step: Some(wait.step),
                    attempt: Some(wait.attempt),
                    request_id: Some(bounds::message(&wait.request_id)),
                    submitted_at: Some(wait.submitted_at),
                    waiting_since: Some(wait.waiting_since),
                    polls: Some(wait.polls),
                    provider_status: Some(bounded(wait.provider_status)),
                    output_url: Some(bounded(wait.output_url)),
                    callback_at: Some(None),
                })),
                ..JobStatusPatch::default()
            },
        )
    }
}

impl JobConditionUpdate {
    /// Records the provider's callback on a Waiting Job (its status word and
    /// output); the phase stays, and the operator resumes the Job from it.
    /// Refused for any Job that is not Waiting.
    pub fn callback_received(
        from: JobPhase,
        provider_status: Option<String>,
        output_url: Option<String>,
        now: Timestamp,
    ) -> Result<Self, TransitionError> {
        if from != JobPhase::Waiting {
            return Err(TransitionError::NotAllowed {
                actor: crate::job_state::Actor::Operator,
                from,
                to: from,
            });
        }
        let bounded = |text: Option<String>| text.map(|t| bounds::message(&t));
        Ok(Self {
            status: JobStatusPatch {
                external: Some(Some(ExternalPatch {
                    provider_status: Some(bounded(provider_status)),
                    output_url: Some(bounded(output_url)),
                    callback_at: Some(Some(Time(now))),
                    ..ExternalPatch::default()
                })),
                ..JobStatusPatch::default()
            },
        })
    }
}

// --- a retry someone asked for ---

impl JobTransition {
    /// Runs a Failed or Cancelled Job again: it waits in Backoff, due at
    /// once, with a fresh attempt budget counted from its last `attempt`
    /// (the numbers go on, so no old attempt's message runs again). Its last
    /// error and steps stay for `describe`; the outcome conditions go, so
    /// `kubectl wait` waits for the new outcome.
    pub fn retry(
        from: JobPhase,
        attempt: i32,
        current: &[Condition],
        spec_retries: i32,
        now: Timestamp,
    ) -> Result<Self, TransitionError> {
        Self::checked(
            Transition::Retry,
            from,
            JobStatusPatch {
                finished_at: Some(None),
                retry_at: Some(Some(Time(now))),
                claim: Some(None),
                result: Some(None),
                result_ref: Some(None),
                releases: Some(0),
                retries: Some(spec_retries),
                attempt_base: Some(attempt),
                conditions: Some(without(current, &[CONDITION_COMPLETE, CONDITION_FAILED])),
                ..JobStatusPatch::default()
            },
        )
    }
}

impl JobError {
    pub fn new(reason: FailureReason, message: String, retryable: bool) -> Self {
        Self {
            reason: reason.as_str().to_owned(),
            message: bounds::message(&message),
            retryable,
        }
    }
}

fn failed(reason: FailureReason, message: String, now: Timestamp) -> JobStatusPatch {
    JobStatusPatch {
        claim: Some(None),
        retry_at: Some(None),
        finished_at: Some(Some(Time(now))),
        conditions: Some(vec![condition(
            CONDITION_FAILED,
            reason.as_str(),
            &message,
            now,
        )]),
        error: Some(Some(JobError::new(reason, message, false))),
        ..JobStatusPatch::default()
    }
}

fn cancelled(now: Timestamp, steps: Option<Vec<StepStatus>>) -> JobStatusPatch {
    JobStatusPatch {
        claim: Some(None),
        finished_at: Some(Some(Time(now))),
        steps,
        conditions: Some(vec![condition(
            CONDITION_FAILED,
            REASON_CANCELLED,
            "spec.cancel was set",
            now,
        )]),
        ..JobStatusPatch::default()
    }
}

/// A condition the operator notes on a Job (`PublishFailed`, `Unclaimed`,
/// `DeadLetterFailed`): what is wrong, for `kubectl describe`.
#[derive(Clone, Debug, PartialEq)]
pub struct JobNote {
    pub type_: &'static str,
    pub reason: String,
    pub message: String,
}

impl JobTransition {
    /// Adds `note` to the conditions this transition writes (or, when it
    /// writes none, to `current`, the conditions of the version it is
    /// conditioned on), replacing one of the same type.
    pub fn noting(mut self, current: &[Condition], note: &JobNote, now: Timestamp) -> Self {
        let base = self
            .status
            .conditions
            .take()
            .unwrap_or_else(|| current.to_vec());
        self.status.conditions = Some(upsert(base, note, now));
        self
    }

    /// Drops the conditions of `types` from `current`, when it has any and
    /// this transition writes no conditions of its own.
    pub fn clearing(mut self, current: &[Condition], types: &[&str]) -> Self {
        if self.status.conditions.is_none()
            && current.iter().any(|c| types.contains(&c.type_.as_str()))
        {
            self.status.conditions = Some(without(current, types));
        }
        self
    }
}

/// A status patch that changes only conditions, never the phase: for a Job
/// that is stuck where it is and must say why. Checked like a transition:
/// a finished Job never changes.
#[derive(Clone, Debug, PartialEq)]
pub struct JobConditionUpdate {
    pub status: JobStatusPatch,
}

impl JobConditionUpdate {
    /// Sets `note` on a Job in phase `from` whose conditions are `current`;
    /// `Ok(None)` when the Job already shows it (nothing to write).
    pub fn note(
        from: JobPhase,
        current: &[Condition],
        note: &JobNote,
        now: Timestamp,
    ) -> Result<Option<Self>, TransitionError> {
        refuse_terminal(from)?;
        let shown = current.iter().any(|c| {
            c.type_ == note.type_
                && c.status == "True"
                && c.reason == note.reason
                && c.message == bounds::message(&note.message)
        });
        Ok((!shown).then(|| Self {
            status: JobStatusPatch {
                conditions: Some(upsert(current.to_vec(), note, now)),
                ..JobStatusPatch::default()
            },
        }))
    }

    /// Removes the conditions of `types`; `Ok(None)` when there are none.
    pub fn clear(
        from: JobPhase,
        current: &[Condition],
        types: &[&str],
    ) -> Result<Option<Self>, TransitionError> {
        refuse_terminal(from)?;
        let present = current.iter().any(|c| types.contains(&c.type_.as_str()));
        Ok(present.then(|| Self {
            status: JobStatusPatch {
                conditions: Some(without(current, types)),
                ..JobStatusPatch::default()
            },
        }))
    }
}

fn refuse_terminal(from: JobPhase) -> Result<(), TransitionError> {
    if from.is_terminal() {
        return Err(TransitionError::FromTerminal { from, to: from });
    }
    Ok(())
}

/// `conditions` with `note` in place of any condition of its type; the
/// transition time is kept while the condition stays True.
fn upsert(mut conditions: Vec<Condition>, note: &JobNote, now: Timestamp) -> Vec<Condition> {
    let mut new = condition(note.type_, &note.reason, &note.message, now);
    if let Some(old) = conditions
        .iter()
        .find(|c| c.type_ == note.type_ && c.status == "True")
    {
        new.last_transition_time = old.last_transition_time.clone();
    }
    conditions.retain(|c| c.type_ != note.type_);
    conditions.push(new);
    conditions
}

fn without(conditions: &[Condition], types: &[&str]) -> Vec<Condition> {
    conditions
        .iter()
        .filter(|c| !types.contains(&c.type_.as_str()))
        .cloned()
        .collect()
}

/// Step messages bounded like every status message.
fn bounded_steps(steps: Vec<StepStatus>) -> Vec<StepStatus> {
    steps
        .into_iter()
        .map(|step| StepStatus {
            message: step.message.as_deref().map(bounds::message),
            ..step
        })
        .collect()
}

fn condition(type_: &str, reason: &str, message: &str, now: Timestamp) -> Condition {
    Condition {
        type_: type_.into(),
        status: "True".into(),
        reason: reason.into(),
        message: bounds::message(message),
        last_transition_time: Time(now),
        observed_generation: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Claim, JobStatus, StepPhase};
    use JobPhase::*;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    /// RFC 7386: objects merge key by key, `null` removes, the rest replaces.
    fn merge(target: &mut Value, patch: &Value) {
        let Value::Object(patch) = patch else {
            *target = patch.clone();
            return;
        };
        if !target.is_object() {
            *target = Value::Object(Default::default());
        }
        let target = target.as_object_mut().expect("made an object above");
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }

    /// The status after `change` is merged into `before`, read back as the CRD type.
    fn apply(before: &JobStatus, change: &JobTransition) -> JobStatus {
        let mut status = serde_json::to_value(before).unwrap();
        merge(&mut status, &serde_json::to_value(&change.status).unwrap());
        serde_json::from_value(status).expect("the patched status is a valid JobStatus")
    }

    fn steps() -> Vec<StepStatus> {
        vec![StepStatus {
            name: "sleep".into(),
            phase: StepPhase::Running,
            started_at: Some(Time(now())),
            finished_at: None,
            attempts: 1,
            progress: 0,
            message: None,
        }]
    }

    fn running() -> JobStatus {
        JobStatus {
            phase: Running,
            attempt: 2,
            claim: Some(Claim {
                id: "c-0".into(),
                pod: "worker-a".into(),
                renew_time: Time(now()),
                lease_seconds: 15,
            }),
            started_at: Some(Time(now())),
            steps: steps(),
            ..JobStatus::default()
        }
    }

    fn status(phase: JobPhase) -> JobStatus {
        match phase {
            Running => running(),
            phase => JobStatus {
                phase,
                attempt: 1,
                ..JobStatus::default()
            },
        }
    }

    fn external() -> ExternalWait {
        ExternalWait {
            step: "render".into(),
            attempt: 2,
            request_id: "r-1".into(),
            submitted_at: Some(Time(now())),
            waiting_since: Some(Time(now())),
            polls: 0,
            provider_status: Some("queued".into()),
            output_url: None,
            callback_at: None,
        }
    }

    #[test]
    fn a_waiting_job_holds_no_claim_and_a_callback_then_a_resume_keep_the_request() {
        let waiting = apply(
            &running(),
            &JobTransition::wait(Running, external(), steps(), 30).unwrap(),
        );
        assert_eq!((waiting.phase, waiting.claim.clone()), (Waiting, None));
        assert_eq!(waiting.external, Some(external()));
        assert_eq!(waiting.attempt, 2, "the attempt goes on");

        let called = JobConditionUpdate::callback_received(
            Waiting,
            Some("succeeded".into()),
            Some("https://cdn/out.mp4".into()),
            now(),
        )
        .unwrap();
        let mut after = waiting.clone();
        let mut value = serde_json::to_value(&after).unwrap();
        merge(&mut value, &serde_json::to_value(&called.status).unwrap());
        after = serde_json::from_value(value).unwrap();
        assert_eq!(after.phase, Waiting, "a callback never changes the phase");
        let ext = after.external.clone().unwrap();
        assert_eq!(ext.request_id, "r-1");
        assert_eq!(ext.callback_at, Some(Time(now())));
        assert_eq!(ext.output_url.as_deref(), Some("https://cdn/out.mp4"));

        let resumed = apply(
            &after,
            &JobTransition::queued(Transition::Resume, Waiting, 2, "m-3".into(), None, now())
                .unwrap(),
        );
        assert_eq!((resumed.phase, resumed.attempt), (Queued, 2));
        assert_eq!(
            resumed.external, after.external,
            "the worker reads the callback"
        );

        // Waiting again after a poll clears the callback of the last wait.
        let mut running_again = resumed.clone();
        running_again.phase = Running;
        let again = apply(
            &running_again,
            &JobTransition::wait(
                Running,
                ExternalWait {
                    polls: 1,
                    ..external()
                },
                steps(),
                30,
            )
            .unwrap(),
        );
        assert_eq!(again.external.unwrap().callback_at, None);
    }

    #[test]
    fn a_callback_is_recorded_only_on_a_waiting_job() {
        for from in JobPhase::ALL {
            let built = JobConditionUpdate::callback_received(from, None, None, now()).is_ok();
            assert_eq!(built, from == Waiting, "{from:?}");
        }
    }

    fn error(retryable: bool) -> JobError {
        JobError::new(FailureReason::StepTimeout, "too slow".into(), retryable)
    }

    /// One transition of every kind, built from `from`.
    fn every_transition(from: JobPhase) -> Vec<Result<JobTransition, TransitionError>> {
        let message = || "m-1".to_owned();
        vec![
            JobTransition::queued(Transition::Publish, from, 1, message(), Some(1), now()),
            JobTransition::queued(Transition::Requeue, from, 2, message(), Some(1), now()),
            JobTransition::queued(Transition::Republish, from, 1, message(), Some(1), now()),
            JobTransition::schedule_retry(from, now()),
            JobTransition::worker_lost(from, "gone".into()),
            JobTransition::reject(from, FailureReason::InvalidInput, "bad".into(), now()),
            JobTransition::give_up(
                from,
                FailureReason::MaxAttemptsExceeded,
                "all".into(),
                now(),
            ),
            JobTransition::cancel_idle(from, now()),
            JobTransition::claim(
                from,
                NewClaim {
                    id: "c-1".into(),
                    attempt: 1,
                    pod: "worker-b".into(),
                    lease_seconds: 15,
                    steps: steps(),
                },
                now(),
            ),
            JobTransition::progress(from, steps(), 50, now()),
            JobTransition::succeed(from, serde_json::json!({"ok": true}), steps(), now()),
            JobTransition::fail(from, error(true), steps(), now()),
            JobTransition::fail(from, error(false), steps(), now()),
            JobTransition::cancel_running(from, steps(), now()),
            JobTransition::release(from, 0, now()),
            JobTransition::retry(from, 3, &[], 1, now()),
            JobTransition::wait(from, external(), steps(), 30),
            JobTransition::queued(Transition::Resume, from, 1, message(), Some(1), now()),
        ]
    }

    #[test]
    fn every_transition_is_built_and_every_one_is_covered() {
        let mut seen: Vec<Transition> = JobPhase::ALL
            .into_iter()
            .flat_map(every_transition)
            .filter_map(Result::ok)
            .map(|t| t.transition)
            .collect();
        seen.sort_by_key(|t| format!("{t:?}"));
        seen.dedup();
        assert_eq!(seen.len(), Transition::ALL.len(), "{seen:?}");
    }

    #[test]
    fn every_patch_round_trips_through_job_status_and_reaches_its_phase() {
        for from in JobPhase::ALL {
            for change in every_transition(from).into_iter().filter_map(Result::ok) {
                let after = apply(&status(from), &change);
                assert_eq!(after.phase, change.transition.to(), "{change:?}");
            }
        }
    }

    #[test]
    fn a_transition_from_the_wrong_phase_is_refused_before_any_write() {
        for from in JobPhase::ALL {
            for (built, kind) in every_transition(from).into_iter().zip(0..) {
                if let Ok(change) = &built {
                    assert!(
                        change.transition.from().contains(&from),
                        "transition #{kind} built from {from:?}: {change:?}"
                    );
                }
            }
        }
        assert_eq!(
            JobTransition::succeed(Queued, Value::Null, vec![], now()).unwrap_err(),
            TransitionError::NotAllowed {
                actor: crate::job_state::Actor::Worker,
                from: Queued,
                to: Succeeded
            }
        );
        assert!(matches!(
            JobTransition::cancel_idle(Succeeded, now()),
            Err(TransitionError::FromTerminal { .. })
        ));
    }

    #[test]
    fn queued_refuses_transitions_that_do_not_publish() {
        assert!(
            JobTransition::queued(Transition::Release, Running, 1, "m".into(), None, now())
                .is_err()
        );
    }

    #[test]
    fn claim_then_progress_renews_and_keeps_the_holder() {
        let claimed = JobTransition::claim(
            Queued,
            NewClaim {
                id: "c-2".into(),
                attempt: 1,
                pod: "worker-b".into(),
                lease_seconds: 15,
                steps: steps(),
            },
            now(),
        )
        .unwrap();
        let after_claim = apply(&status(Queued), &claimed);
        let later = now()
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(5))
            .unwrap();
        let renewed = JobTransition::progress(Running, steps(), 40, later).unwrap();
        let after = apply(&after_claim, &renewed);
        let claim = after.claim.expect("the claim is kept");
        assert_eq!(
            (claim.id.as_str(), claim.pod.as_str(), claim.lease_seconds),
            ("c-2", "worker-b", 15)
        );
        assert_eq!(claim.renew_time, Time(later));
        assert_eq!(after.progress, 40);
    }

    #[test]
    fn outcomes_clear_the_claim_and_record_the_error() {
        let before = running();
        let succeeded = apply(
            &before,
            &JobTransition::succeed(Running, serde_json::json!({"n": 1}), steps(), now()).unwrap(),
        );
        assert_eq!(succeeded.claim, None);
        assert_eq!(succeeded.result, Some(serde_json::json!({"n": 1})));
        assert_eq!(succeeded.conditions[0].type_, CONDITION_COMPLETE);

        let backoff = apply(
            &before,
            &JobTransition::fail(Running, error(true), steps(), now()).unwrap(),
        );
        assert_eq!((backoff.phase, backoff.claim.clone()), (Backoff, None));
        assert!(
            backoff.conditions.is_empty(),
            "a retryable failure is not final"
        );

        let failed = apply(
            &before,
            &JobTransition::fail(Running, error(false), steps(), now()).unwrap(),
        );
        assert_eq!(failed.phase, Failed);
        assert_eq!(failed.conditions[0].reason, "StepTimeout");
        assert_eq!(failed.error, Some(error(false)));
    }

    #[test]
    fn publish_of_the_next_attempt_clears_the_retry_time() {
        let mut before = status(Backoff);
        before.retry_at = Some(Time(now()));
        let change = JobTransition::queued(
            Transition::Requeue,
            Backoff,
            2,
            "m-2".into(),
            Some(3),
            now(),
        )
        .unwrap();
        let after = apply(&before, &change);
        assert_eq!(after.retry_at, None);
        assert_eq!(
            (after.attempt, after.message_id.as_deref()),
            (2, Some("m-2"))
        );
        assert_eq!(after.observed_generation, Some(3));
    }

    #[test]
    fn every_message_written_to_status_is_bounded() {
        let long = "e".repeat(5000);
        let mut long_steps = steps();
        long_steps[0].message = Some(long.clone());
        let failed = apply(
            &running(),
            &JobTransition::give_up(
                Backoff,
                FailureReason::MaxAttemptsExceeded,
                long.clone(),
                now(),
            )
            .unwrap(),
        );
        assert!(failed.error.unwrap().message.len() <= bounds::MAX_MESSAGE_BYTES);
        assert!(failed.conditions[0].message.len() <= bounds::MAX_MESSAGE_BYTES);
        let worker_error = JobError {
            reason: "Told".into(),
            message: long.clone(),
            retryable: true,
        };
        let backoff = apply(
            &running(),
            &JobTransition::fail(Running, worker_error, long_steps.clone(), now()).unwrap(),
        );
        assert!(backoff.error.unwrap().message.len() <= bounds::MAX_MESSAGE_BYTES);
        let progressed = apply(
            &running(),
            &JobTransition::progress(Running, long_steps, 10, now()).unwrap(),
        );
        let message = progressed.steps[0].message.clone().unwrap();
        assert!(
            message.len() <= bounds::MAX_MESSAGE_BYTES,
            "{}",
            message.len()
        );
    }

    #[test]
    fn an_oversized_result_fails_the_attempt_unless_it_names_its_output() {
        let big = serde_json::json!({"text": "r".repeat(bounds::MAX_RESULT_BYTES)});
        let change = JobTransition::succeed(Running, big, steps(), now()).unwrap();
        assert_eq!(change.transition, Transition::FailPermanent);
        let after = apply(&running(), &change);
        assert_eq!(after.error.unwrap().reason, "ResultTooLarge");

        let with_url = serde_json::json!({
            "outputUrl": "gs://bucket/episode.mp3",
            "log": "l".repeat(bounds::MAX_RESULT_BYTES),
        });
        let change = JobTransition::succeed(Running, with_url, steps(), now()).unwrap();
        assert_eq!(change.transition, Transition::Succeed);
        let after = apply(&running(), &change);
        assert_eq!(after.result, None);
        assert_eq!(after.result_ref.as_deref(), Some("gs://bucket/episode.mp3"));
    }

    fn note() -> JobNote {
        JobNote {
            type_: CONDITION_PUBLISH_FAILED,
            reason: "InvalidArgument".into(),
            message: "refused".into(),
        }
    }

    #[test]
    fn a_note_is_written_once_and_keeps_the_phase() {
        let pending = status(Pending);
        let update = JobConditionUpdate::note(Pending, &pending.conditions, &note(), now())
            .unwrap()
            .expect("a new note is written");
        assert_eq!(update.status.phase, None, "a note never changes the phase");
        let mut after = pending.clone();
        after.conditions = update.status.conditions.unwrap();
        assert_eq!(after.conditions[0].type_, CONDITION_PUBLISH_FAILED);
        assert_eq!(
            JobConditionUpdate::note(Pending, &after.conditions, &note(), now()).unwrap(),
            None,
            "the same note is not written again"
        );
        assert!(matches!(
            JobConditionUpdate::note(Failed, &[], &note(), now()),
            Err(TransitionError::FromTerminal { .. })
        ));
        let cleared = JobConditionUpdate::clear(Pending, &after.conditions, &WAITING_CONDITIONS)
            .unwrap()
            .unwrap();
        assert_eq!(cleared.status.conditions, Some(vec![]));
    }

    #[test]
    fn the_publish_after_a_failed_one_clears_the_note() {
        let mut pending = status(Pending);
        pending.conditions = vec![condition(CONDITION_PUBLISH_FAILED, "X", "y", now())];
        let change =
            JobTransition::queued(Transition::Publish, Pending, 1, "m".into(), None, now())
                .unwrap()
                .clearing(&pending.conditions, &WAITING_CONDITIONS);
        assert!(apply(&pending, &change).conditions.is_empty());
        let untouched =
            JobTransition::queued(Transition::Publish, Pending, 1, "m".into(), None, now())
                .unwrap()
                .clearing(&[], &WAITING_CONDITIONS);
        assert_eq!(
            untouched.status.conditions, None,
            "no write of conditions when none is shown"
        );
    }

    #[test]
    fn a_failed_job_notes_a_dead_letter_that_did_not_go_out() {
        let dead = JobNote {
            type_: CONDITION_DEAD_LETTER_FAILED,
            reason: REASON_DEAD_LETTER_PUBLISH_FAILED.into(),
            message: "INVALID_ARGUMENT".into(),
        };
        let change = JobTransition::give_up(
            Backoff,
            FailureReason::MaxAttemptsExceeded,
            "all".into(),
            now(),
        )
        .unwrap()
        .noting(&[], &dead, now());
        let after = apply(&status(Backoff), &change);
        let types: Vec<_> = after.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [CONDITION_FAILED, CONDITION_DEAD_LETTER_FAILED]);
        assert_eq!(after.phase, Failed);
    }

    #[test]
    fn a_retried_failed_job_is_due_at_once_with_a_fresh_budget_and_keeps_its_history() {
        let failed = JobTransition::fail(Running, error(false), steps(), now()).unwrap();
        let mut before = apply(&running(), &failed);
        before.attempt = 3;
        assert_eq!(before.phase, Failed);
        let retried =
            JobTransition::retry(Failed, before.attempt, &before.conditions, 1, now()).unwrap();
        let after = apply(&before, &retried);
        assert_eq!(after.phase, Backoff);
        assert_eq!((after.attempt, after.attempt_base), (3, 3));
        assert_eq!(after.attempts_used(), 0);
        assert_eq!(after.retries, 1);
        assert!(!after.retry_requested(1));
        assert_eq!(after.retry_at, Some(Time(now())));
        assert_eq!(after.finished_at, None);
        assert!(after.conditions.is_empty(), "{:?}", after.conditions);
        assert_eq!(after.error, before.error, "the last failure stays");
        assert_eq!(after.steps, before.steps, "the last steps stay");
    }

    #[test]
    fn only_a_failed_or_cancelled_job_is_retried() {
        for from in JobPhase::ALL {
            let built = JobTransition::retry(from, 1, &[], 1, now()).is_ok();
            assert_eq!(built, matches!(from, Failed | Cancelled), "{from:?}");
        }
    }
}
