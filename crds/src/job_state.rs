//! The Job state machine: which phase changes are allowed, who may make them,
//! and whether a worker that received a message may claim the Job it names.
//!
//! Pure functions only, so every rule is pinned by a unit test and the
//! operator and worker share one definition of "allowed".

use k8s_openapi::jiff::Timestamp;

use crate::claim_clock::ClaimSeen;
use crate::job::{JobPhase, JobStatus};
use crate::message::JobMessage;

/// Who writes a Job's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    Operator,
    Worker,
}

/// A phase change refused by the state machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("a {from:?} Job is finished and never changes phase (asked for {to:?})")]
    FromTerminal { from: JobPhase, to: JobPhase },
    #[error("{actor:?} may not move a Job from {from:?} to {to:?}")]
    NotAllowed {
        actor: Actor,
        from: JobPhase,
        to: JobPhase,
    },
}

/// Why a phase change happens; each maps to exactly one (actor, from, to).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Operator: the Job is valid and its message was published.
    Publish,
    /// Operator: the Job cannot run (invalid input, unknown worker, deadline).
    Reject,
    /// Operator: a failed attempt in Backoff is given the time of its retry.
    ScheduleRetry,
    /// Operator: a Job waiting in Backoff gets its next attempt (attempt + 1).
    Requeue,
    /// Operator: a Queued Job's message may be lost; publish it again (same attempt).
    Republish,
    /// Operator: a Running Job's claim expired; count the attempt as failed.
    WorkerLost,
    /// Operator: retries are exhausted or a deadline passed.
    GiveUp,
    /// Operator: cancel a Job no worker is running.
    CancelIdle,
    /// Worker: claim a Queued Job.
    Claim,
    /// Worker: renew the claim or write step progress.
    Progress,
    /// Worker: the attempt produced a result.
    Succeed,
    /// Worker: the attempt failed and another may succeed.
    FailRetryable,
    /// Worker: the attempt failed and no other can succeed.
    FailPermanent,
    /// Worker: stopped on `spec.cancel`.
    CancelRunning,
    /// Worker: shutting down before the Job finished; hand it back.
    Release,
    /// Operator: someone asked (`spec.retries`) to run a Failed or
    /// Cancelled Job again with a fresh attempt budget.
    Retry,
    /// Worker: a step handed work to an outside provider; the worker lets
    /// go of the Job (no claim) until the provider answers.
    Wait,
    /// Operator: a Waiting Job's provider called back, or a poll is due:
    /// publish the same attempt again so a worker goes on with the step.
    Resume,
}

impl Transition {
    /// Every transition, for exhaustive tests and documentation.
    pub const ALL: [Transition; 18] = [
        Transition::Publish,
        Transition::Reject,
        Transition::ScheduleRetry,
        Transition::Requeue,
        Transition::Republish,
        Transition::WorkerLost,
        Transition::GiveUp,
        Transition::CancelIdle,
        Transition::Claim,
        Transition::Progress,
        Transition::Succeed,
        Transition::FailRetryable,
        Transition::FailPermanent,
        Transition::CancelRunning,
        Transition::Release,
        Transition::Retry,
        Transition::Wait,
        Transition::Resume,
    ];

    /// Who makes this transition.
    pub fn actor(self) -> Actor {
        use Transition::*;
        match self {
            Publish | Reject | ScheduleRetry | Requeue | Republish | WorkerLost | GiveUp
            | CancelIdle | Retry | Resume => Actor::Operator,
            Claim | Progress | Succeed | FailRetryable | FailPermanent | CancelRunning
            | Release | Wait => Actor::Worker,
        }
    }

    /// The phases this transition starts from.
    pub fn from(self) -> &'static [JobPhase] {
        use JobPhase::*;
        match self {
            Transition::Publish => &[Pending],
            Transition::Reject => &[Pending, Queued, Running, Waiting, Backoff],
            Transition::ScheduleRetry | Transition::Requeue => &[Backoff],
            Transition::Republish => &[Queued],
            Transition::WorkerLost => &[Running],
            Transition::GiveUp => &[Queued, Running, Waiting, Backoff],
            Transition::CancelIdle => &[Pending, Queued, Running, Waiting, Backoff],
            Transition::Claim => &[Queued, Running],
            Transition::Progress => &[Running],
            Transition::Succeed
            | Transition::FailRetryable
            | Transition::FailPermanent
            | Transition::CancelRunning
            | Transition::Release
            | Transition::Wait => &[Running],
            Transition::Retry => &[Failed, Cancelled],
            Transition::Resume => &[Waiting],
        }
    }

    /// The phase this transition leads to.
    pub fn to(self) -> JobPhase {
        use JobPhase::*;
        match self {
            Transition::Publish | Transition::Requeue | Transition::Republish => Queued,
            Transition::Release | Transition::Resume => Queued,
            Transition::Wait => Waiting,
            Transition::Reject | Transition::GiveUp | Transition::FailPermanent => Failed,
            Transition::ScheduleRetry
            | Transition::WorkerLost
            | Transition::FailRetryable
            | Transition::Retry => Backoff,
            Transition::CancelIdle | Transition::CancelRunning => Cancelled,
            Transition::Claim | Transition::Progress => Running,
            Transition::Succeed => Succeeded,
        }
    }
}

impl Transition {
    /// Checks that this transition may start from `from`: the state machine
    /// allows the move and `from` is one of this transition's own phases.
    pub fn check_from(self, from: JobPhase) -> Result<(), TransitionError> {
        let (actor, to) = (self.actor(), self.to());
        check_transition(actor, from, to)?;
        if self.from().contains(&from) {
            Ok(())
        } else {
            Err(TransitionError::NotAllowed { actor, from, to })
        }
    }
}

/// Checks that `actor` may move a Job from `from` to `to`. A finished Job
/// moves only by an asked-for retry ([`Transition::Retry`]).
pub fn check_transition(actor: Actor, from: JobPhase, to: JobPhase) -> Result<(), TransitionError> {
    if from.is_terminal() && !is_retry(actor, from, to) {
        return Err(TransitionError::FromTerminal { from, to });
    }
    let allowed = Transition::ALL
        .iter()
        .any(|t| t.actor() == actor && t.to() == to && t.from().contains(&from));
    if allowed {
        Ok(())
    } else {
        Err(TransitionError::NotAllowed { actor, from, to })
    }
}

/// The one move out of a finished phase: the operator's retry.
fn is_retry(actor: Actor, from: JobPhase, to: JobPhase) -> bool {
    let retry = Transition::Retry;
    actor == retry.actor() && to == retry.to() && retry.from().contains(&from)
}

/// What a worker does with a message it pulled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimDecision {
    /// Claim the Job (a status write conditioned on its resourceVersion) and run it.
    Claim,
    /// Ack the message without running anything; the reason is logged as
    /// `idempotent_skip`.
    Skip(SkipReason),
    /// The Job's status has not caught up with the message yet (the operator
    /// published and has not written Queued): nack so it comes back shortly.
    Defer(DeferReason),
}

/// Why a message is acked without running the Job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The Job already finished.
    Terminal,
    /// The message is for an attempt older than the Job's current one.
    StaleAttempt,
    /// The message's attempt already failed and waits for its retry.
    AttemptFinished,
    /// The Job of that name was deleted and created again.
    UidMismatch,
    /// Another worker holds a live claim.
    ClaimedElsewhere,
    /// The attempt's holder is gone (a previous container of this pod, or a
    /// claim nobody renews): that attempt may have left its effects, so it is
    /// never run again under its number; the operator retries the Job as a
    /// new attempt (`WorkerLost`).
    HolderGone,
    /// This worker process already runs it under this very claim (a
    /// duplicate delivery).
    AlreadyRunningHere,
    /// Cancel was requested; the operator finishes it.
    CancelRequested,
    /// The Job belongs to another fleet (another namespace or `spec.worker`):
    /// this worker never runs it; its own fleet's watchdog republishes it there.
    WrongFleet,
    /// The Job waits for an outside provider; the operator publishes it
    /// again when the provider answers or a poll is due.
    Waiting,
}

impl SkipReason {
    /// The snake_case name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Terminal => "terminal",
            SkipReason::StaleAttempt => "stale_attempt",
            SkipReason::AttemptFinished => "attempt_finished",
            SkipReason::UidMismatch => "uid_mismatch",
            SkipReason::ClaimedElsewhere => "claimed_elsewhere",
            SkipReason::HolderGone => "holder_gone",
            SkipReason::AlreadyRunningHere => "already_running_here",
            SkipReason::CancelRequested => "cancel_requested",
            SkipReason::WrongFleet => "wrong_fleet",
            SkipReason::Waiting => "waiting",
        }
    }
}

/// Why a message is handed back for later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeferReason {
    /// The Job is still Pending: its Queued status write has not landed.
    NotYetQueued,
    /// The message is for a newer attempt than the status shows.
    AttemptAhead,
    /// The message resumes the Job's wait for its provider, and its Queued
    /// status write has not landed yet.
    NotYetResumed,
}

/// The facts about a Job that decide a claim.
#[derive(Clone, Copy, Debug)]
pub struct ClaimView<'a> {
    pub uid: &'a str,
    /// The Job's `spec.worker`: the fleet that may run it.
    pub worker: &'a str,
    pub cancel_requested: bool,
    pub status: &'a JobStatus,
    /// When this worker first saw the Job's current claim as it is (its own
    /// clock; see [`crate::claim_clock`]). `None` trusts `renewTime`.
    pub claim_seen: Option<ClaimSeen>,
    /// Whether the Job's current claim is one this worker process holds now.
    /// A claim naming this pod that the process does not hold belongs to a
    /// container of the pod that is gone (a restart).
    pub claim_held_here: bool,
    /// The wait the message resumes ([`wait_key`]), when it is a resume.
    pub resumes: Option<&'a str>,
}

/// Names one wait of a Job for its provider (the request and when the wait
/// began, as the worker wrote them): a resume message carries it, so a
/// worker tells the message that ends this wait, whose Queued write is
/// still on its way, from a late copy of an older one.
pub fn wait_key(wait: &crate::job::ExternalWait) -> String {
    let since = wait
        .waiting_since
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    format!("{}@{since}", wait.request_id)
}

/// Decides whether the worker pod `me` of the fleet `my_fleet` (in the
/// Job's namespace) may claim the Job a message names.
///
/// Order matters: identity first (a recreated Job is another Job, and a Job
/// of another fleet is never ours), then finished Jobs, then attempts, then
/// claims.
pub fn decide_claim(
    job: ClaimView<'_>,
    msg: &JobMessage,
    me: &str,
    my_fleet: &str,
    now: Timestamp,
) -> ClaimDecision {
    use ClaimDecision::*;
    let status = job.status;
    if job.uid != msg.uid {
        return Skip(SkipReason::UidMismatch);
    }
    if job.worker != my_fleet {
        return Skip(SkipReason::WrongFleet);
    }
    if status.phase.is_terminal() {
        return Skip(SkipReason::Terminal);
    }
    if msg.attempt < status.attempt {
        return Skip(SkipReason::StaleAttempt);
    }
    if job.cancel_requested {
        return Skip(SkipReason::CancelRequested);
    }
    if status.phase == JobPhase::Pending {
        return Defer(DeferReason::NotYetQueued);
    }
    if msg.attempt > status.attempt {
        return Defer(DeferReason::AttemptAhead);
    }
    match status.phase {
        JobPhase::Queued => Claim,
        JobPhase::Backoff => Skip(SkipReason::AttemptFinished),
        // The operator publishes before it writes Queued: the message that
        // resumes this very wait may come first.
        JobPhase::Waiting
            if job.resumes.is_some()
                && job.resumes == status.external.as_ref().map(wait_key).as_deref() =>
        {
            Defer(DeferReason::NotYetResumed)
        }
        // A late duplicate of the message that ran the step until it waited.
        JobPhase::Waiting => Skip(SkipReason::Waiting),
        JobPhase::Running => match &status.claim {
            Some(_) if job.claim_held_here => Skip(SkipReason::AlreadyRunningHere),
            // A previous container of this pod: nobody renews it any more.
            Some(claim) if claim.pod == me => Skip(SkipReason::HolderGone),
            Some(claim) if seen_or_trusted(job.claim_seen, claim).is_live(claim, now) => {
                Skip(SkipReason::ClaimedElsewhere)
            }
            // The holder stopped renewing, perhaps after its effect: one
            // attempt number runs at most once, so this one is not taken
            // over; the operator's watchdog retries it as the next attempt.
            Some(_) => Skip(SkipReason::HolderGone),
            // Running with no claim at all: nobody ran it yet.
            None => Claim,
        },
        // Handled above; listed so a new phase cannot slip through unnoticed.
        JobPhase::Pending | JobPhase::Succeeded | JobPhase::Failed | JobPhase::Cancelled => {
            Skip(SkipReason::Terminal)
        }
    }
}

/// The observer's sighting of `claim`, or the holder's own `renewTime` when
/// the observer keeps none.
fn seen_or_trusted(seen: Option<ClaimSeen>, claim: &crate::job::Claim) -> ClaimSeen {
    seen.unwrap_or_else(|| ClaimSeen::trusting(claim, claim.renew_time.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Claim;
    use JobPhase::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::SignedDuration;

    /// The full table of allowed (actor, from, to) triples. Every other
    /// combination must be refused.
    const ALLOWED: &[(Actor, JobPhase, JobPhase)] = &[
        (Actor::Operator, Pending, Queued),
        (Actor::Operator, Pending, Failed),
        (Actor::Operator, Pending, Cancelled),
        (Actor::Operator, Queued, Queued),
        (Actor::Operator, Queued, Failed),
        (Actor::Operator, Queued, Cancelled),
        (Actor::Operator, Running, Backoff),
        (Actor::Operator, Running, Failed),
        (Actor::Operator, Running, Cancelled),
        (Actor::Operator, Backoff, Backoff),
        (Actor::Operator, Backoff, Queued),
        (Actor::Operator, Backoff, Failed),
        (Actor::Operator, Backoff, Cancelled),
        (Actor::Worker, Queued, Running),
        (Actor::Worker, Running, Running),
        (Actor::Worker, Running, Succeeded),
        (Actor::Worker, Running, Backoff),
        (Actor::Worker, Running, Failed),
        (Actor::Worker, Running, Cancelled),
        (Actor::Worker, Running, Queued),
        (Actor::Worker, Running, Waiting),
        (Actor::Operator, Waiting, Queued),
        (Actor::Operator, Waiting, Failed),
        (Actor::Operator, Waiting, Cancelled),
        (Actor::Operator, Failed, Backoff),
        (Actor::Operator, Cancelled, Backoff),
    ];

    #[test]
    fn every_allowed_transition_is_accepted() {
        for &(actor, from, to) in ALLOWED {
            assert_eq!(
                check_transition(actor, from, to),
                Ok(()),
                "{actor:?} {from:?} -> {to:?}"
            );
        }
    }

    #[test]
    fn every_other_transition_is_refused() {
        for actor in [Actor::Operator, Actor::Worker] {
            for from in JobPhase::ALL {
                for to in JobPhase::ALL {
                    if ALLOWED.contains(&(actor, from, to)) {
                        continue;
                    }
                    assert!(
                        check_transition(actor, from, to).is_err(),
                        "{actor:?} {from:?} -> {to:?} should be refused"
                    );
                }
            }
        }
    }

    #[test]
    fn finished_jobs_move_only_by_the_operators_retry() {
        for from in [Succeeded, Failed, Cancelled] {
            for to in JobPhase::ALL {
                for actor in [Actor::Operator, Actor::Worker] {
                    if ALLOWED.contains(&(actor, from, to)) {
                        continue;
                    }
                    assert_eq!(
                        check_transition(actor, from, to),
                        Err(TransitionError::FromTerminal { from, to })
                    );
                }
            }
        }
    }

    #[test]
    fn a_succeeded_job_is_never_retried_and_a_worker_never_retries() {
        assert!(Transition::Retry.check_from(Succeeded).is_err());
        assert!(check_transition(Actor::Worker, Failed, Backoff).is_err());
        assert!(Transition::Retry.check_from(Failed).is_ok());
        assert!(Transition::Retry.check_from(Cancelled).is_ok());
    }

    #[test]
    fn worker_cannot_publish_and_operator_cannot_claim() {
        assert!(matches!(
            check_transition(Actor::Worker, Pending, Queued),
            Err(TransitionError::NotAllowed { .. })
        ));
        assert!(matches!(
            check_transition(Actor::Operator, Queued, Running),
            Err(TransitionError::NotAllowed { .. })
        ));
    }

    #[test]
    fn refusal_message_names_actor_and_phases() {
        let err = check_transition(Actor::Worker, Backoff, Queued).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Worker may not move a Job from Backoff to Queued"
        );
    }

    #[test]
    fn each_named_transition_is_allowed_for_its_actor_only() {
        for t in Transition::ALL {
            for &from in t.from() {
                assert_eq!(check_transition(t.actor(), from, t.to()), Ok(()), "{t:?}");
            }
        }
    }

    #[test]
    fn only_a_worker_running_the_job_puts_it_to_waiting() {
        for actor in [Actor::Operator, Actor::Worker] {
            for from in JobPhase::ALL {
                let allowed = check_transition(actor, from, Waiting).is_ok();
                assert_eq!(
                    allowed,
                    actor == Actor::Worker && from == Running,
                    "{actor:?} {from:?} -> Waiting"
                );
            }
        }
        assert_eq!(Transition::Wait.check_from(Running), Ok(()));
        assert!(Transition::Wait.check_from(Queued).is_err());
    }

    #[test]
    fn a_waiting_job_leaves_only_by_the_operator_resume_timeout_or_cancel() {
        for to in JobPhase::ALL {
            assert!(
                check_transition(Actor::Worker, Waiting, to).is_err(),
                "a worker holds no Waiting Job, so it moves none (to {to:?})"
            );
            let allowed = check_transition(Actor::Operator, Waiting, to).is_ok();
            assert_eq!(
                allowed,
                matches!(to, Queued | Failed | Cancelled),
                "Operator Waiting -> {to:?}"
            );
        }
        assert_eq!(Transition::Resume.check_from(Waiting), Ok(()));
        assert_eq!(Transition::GiveUp.check_from(Waiting), Ok(()));
        // Its fleet was deleted while it waited: WorkerNotFound.
        assert_eq!(Transition::Reject.check_from(Waiting), Ok(()));
        assert_eq!(Transition::CancelIdle.check_from(Waiting), Ok(()));
        for other in [
            Transition::Republish,
            Transition::Requeue,
            Transition::WorkerLost,
        ] {
            assert!(other.check_from(Waiting).is_err(), "{other:?}");
        }
        for from in JobPhase::ALL.into_iter().filter(|p| *p != Waiting) {
            assert!(Transition::Resume.check_from(from).is_err(), "{from:?}");
        }
    }

    #[test]
    fn the_message_that_resumes_this_wait_waits_for_the_queued_write() {
        let mut s = status(Waiting, 1);
        s.external = Some(crate::job::ExternalWait {
            request_id: "r-1".into(),
            attempt: 1,
            waiting_since: Some(Time(now())),
            ..Default::default()
        });
        let key = wait_key(s.external.as_ref().unwrap());
        let view = |resumes| ClaimView {
            uid: UID,
            worker: FLEET,
            cancel_requested: false,
            status: &s,
            claim_seen: None,
            claim_held_here: false,
            resumes,
        };
        assert_eq!(
            decide_claim(view(Some(&key)), &message(1), ME, FLEET, now()),
            ClaimDecision::Defer(DeferReason::NotYetResumed)
        );
        assert_eq!(
            decide_claim(
                view(Some("r-1@an-older-wait")),
                &message(1),
                ME,
                FLEET,
                now()
            ),
            ClaimDecision::Skip(SkipReason::Waiting),
            "a late resume of an earlier wait"
        );
        assert_eq!(
            decide_claim(view(None), &message(1), ME, FLEET, now()),
            ClaimDecision::Skip(SkipReason::Waiting)
        );
    }

    #[test]
    fn a_message_for_a_waiting_job_is_acked_and_skipped() {
        assert_eq!(
            decide(&status(Waiting, 1), 1),
            ClaimDecision::Skip(SkipReason::Waiting)
        );
        assert_eq!(
            decide(&status(Waiting, 2), 1),
            ClaimDecision::Skip(SkipReason::StaleAttempt)
        );
    }

    const UID: &str = "0b6c1d3e-uid";
    const ME: &str = "worker-a";
    const FLEET: &str = "sleepers";

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn status(phase: JobPhase, attempt: i32) -> JobStatus {
        JobStatus {
            phase,
            attempt,
            ..JobStatus::default()
        }
    }

    fn message(attempt: i32) -> JobMessage {
        JobMessage {
            namespace: "ns".into(),
            name: "job".into(),
            uid: UID.into(),
            attempt,
        }
    }

    fn claimed(pod: &str, renewed_secs_ago: i64, lease: i32) -> Option<Claim> {
        Some(Claim {
            id: format!("claim-of-{pod}"),
            pod: pod.into(),
            renew_time: Time(
                now()
                    .checked_sub(SignedDuration::from_secs(renewed_secs_ago))
                    .unwrap(),
            ),
            lease_seconds: lease,
        })
    }

    fn decide(status: &JobStatus, attempt: i32) -> ClaimDecision {
        decide_with(status, attempt, UID, false)
    }

    fn decide_with(status: &JobStatus, attempt: i32, uid: &str, cancel: bool) -> ClaimDecision {
        decide_held(status, attempt, uid, cancel, false)
    }

    fn decide_held(
        status: &JobStatus,
        attempt: i32,
        uid: &str,
        cancel: bool,
        claim_held_here: bool,
    ) -> ClaimDecision {
        let view = ClaimView {
            uid,
            worker: FLEET,
            cancel_requested: cancel,
            status,
            claim_seen: None,
            claim_held_here,
            resumes: None,
        };
        decide_claim(view, &message(attempt), ME, FLEET, now())
    }

    #[test]
    fn queued_job_with_matching_attempt_is_claimed() {
        assert_eq!(decide(&status(Queued, 1), 1), ClaimDecision::Claim);
    }

    #[test]
    fn stale_attempt_message_is_acked_and_skipped() {
        assert_eq!(
            decide(&status(Queued, 2), 1),
            ClaimDecision::Skip(SkipReason::StaleAttempt)
        );
    }

    #[test]
    fn finished_job_message_is_skipped() {
        for phase in [Succeeded, Failed, Cancelled] {
            assert_eq!(
                decide(&status(phase, 1), 1),
                ClaimDecision::Skip(SkipReason::Terminal)
            );
        }
    }

    #[test]
    fn recreated_job_with_other_uid_is_skipped() {
        assert_eq!(
            decide_with(&status(Queued, 1), 1, "another-uid", false),
            ClaimDecision::Skip(SkipReason::UidMismatch)
        );
    }

    #[test]
    fn a_job_of_another_fleet_is_never_claimed() {
        let s = status(Queued, 1);
        let view = ClaimView {
            uid: UID,
            worker: "someone-elses",
            cancel_requested: false,
            status: &s,
            claim_seen: None,
            claim_held_here: false,
            resumes: None,
        };
        assert_eq!(
            decide_claim(view, &message(1), ME, FLEET, now()),
            ClaimDecision::Skip(SkipReason::WrongFleet)
        );
    }

    #[test]
    fn live_claim_of_another_pod_is_skipped() {
        let mut s = status(Running, 1);
        s.claim = claimed("worker-b", 5, 30);
        assert_eq!(
            decide(&s, 1),
            ClaimDecision::Skip(SkipReason::ClaimedElsewhere)
        );
    }

    #[test]
    fn expired_claim_of_another_pod_is_never_run_again_under_its_number() {
        let mut s = status(Running, 1);
        s.claim = claimed("worker-b", 31, 30);
        assert_eq!(decide(&s, 1), ClaimDecision::Skip(SkipReason::HolderGone));
    }

    #[test]
    fn duplicate_delivery_to_the_running_process_is_skipped() {
        let mut s = status(Running, 1);
        s.claim = claimed(ME, 1, 30);
        assert_eq!(
            decide_held(&s, 1, UID, false, true),
            ClaimDecision::Skip(SkipReason::AlreadyRunningHere)
        );
    }

    #[test]
    fn a_claim_of_a_previous_container_of_this_pod_is_left_to_the_watchdog() {
        let mut s = status(Running, 1);
        s.claim = claimed(ME, 1, 30);
        assert_eq!(decide(&s, 1), ClaimDecision::Skip(SkipReason::HolderGone));
    }

    #[test]
    fn running_without_claim_is_claimable() {
        assert_eq!(decide(&status(Running, 1), 1), ClaimDecision::Claim);
    }

    #[test]
    fn message_for_failed_attempt_in_backoff_is_skipped() {
        assert_eq!(
            decide(&status(Backoff, 1), 1),
            ClaimDecision::Skip(SkipReason::AttemptFinished)
        );
    }

    #[test]
    fn message_ahead_of_status_is_deferred() {
        assert_eq!(
            decide(&status(Backoff, 1), 2),
            ClaimDecision::Defer(DeferReason::AttemptAhead)
        );
        assert_eq!(
            decide(&status(Pending, 0), 1),
            ClaimDecision::Defer(DeferReason::NotYetQueued)
        );
    }

    #[test]
    fn cancel_requested_is_skipped_even_when_queued() {
        assert_eq!(
            decide_with(&status(Queued, 1), 1, UID, true),
            ClaimDecision::Skip(SkipReason::CancelRequested)
        );
    }

    #[test]
    fn claim_expires_exactly_at_renew_plus_lease() {
        let claim = claimed("p", 30, 30).unwrap();
        assert!(!seen_or_trusted(None, &claim).is_live(&claim, now()));
        let claim = claimed("p", 29, 30).unwrap();
        assert!(seen_or_trusted(None, &claim).is_live(&claim, now()));
    }

    #[test]
    fn a_claim_renewed_long_ago_by_its_clock_but_just_seen_is_live() {
        // A holder whose clock runs 60 s behind this worker's.
        let mut s = status(Running, 1);
        s.claim = claimed("worker-b", 61, 30);
        let claim = s.claim.clone().unwrap();
        let view = ClaimView {
            uid: UID,
            worker: FLEET,
            cancel_requested: false,
            status: &s,
            claim_seen: Some(ClaimSeen {
                renewed_at: now(),
                claimed_at: now(),
            }),
            claim_held_here: false,
            resumes: None,
        };
        assert!(!seen_or_trusted(None, &claim).is_live(&claim, now()));
        assert_eq!(
            decide_claim(view, &message(1), ME, FLEET, now()),
            ClaimDecision::Skip(SkipReason::ClaimedElsewhere)
        );
    }
}
