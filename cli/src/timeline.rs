//! `describe`: one Job's life in time order, built from what its status
//! says (queued, started on which pod, each step, the last failure, the next
//! retry, the outcome), its conditions, and the Events about it (the
//! operator's failures, retries, dead letters).

use drover_crds::{Job, JobPhase};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::render;

/// One moment of a Job's life.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub at: Timestamp,
    pub what: String,
}

/// Everything known about `job` and `events` (already those about it), oldest first.
pub fn build(job: &Job, events: &[Event]) -> Vec<Entry> {
    let mut entries = Vec::new();
    let mut push = |at: Option<Timestamp>, what: String| {
        if let Some(at) = at {
            entries.push(Entry { at, what });
        }
    };
    push(
        job.creation_timestamp().map(|t| t.0),
        format!("created for worker {}", job.spec.worker),
    );
    let status = job.status.clone().unwrap_or_default();
    let attempt = status.attempt;
    push(
        status.queued_at.as_ref().map(|t| t.0),
        format!(
            "attempt {attempt} queued (message {})",
            status.message_id.as_deref().unwrap_or("?")
        ),
    );
    let pod = status
        .claim
        .as_ref()
        .map(|c| format!(" on pod {}", c.pod))
        .unwrap_or_default();
    push(
        status.started_at.as_ref().map(|t| t.0),
        format!("attempt {attempt} started{pod}"),
    );
    for step in &status.steps {
        let message = step
            .message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        push(
            step.started_at.as_ref().map(|t| t.0),
            format!("  step {} started", step.name),
        );
        push(
            step.finished_at.as_ref().map(|t| t.0),
            format!(
                "  step {} {} after {} ({} tries){message}",
                step.name,
                render::step_phase(step.phase),
                render::step_elapsed(step, Timestamp::now())
                    .map(render::duration)
                    .unwrap_or_default(),
                step.attempts
            ),
        );
    }
    if status.phase == JobPhase::Backoff {
        let why = status
            .error
            .as_ref()
            .map(|e| format!(" after {} ({})", e.message, e.reason))
            .unwrap_or_default();
        push(
            status.retry_at.as_ref().map(|t| t.0),
            format!("attempt {} due{why}", attempt + 1),
        );
    }
    for condition in &status.conditions {
        push(
            Some(condition.last_transition_time.0),
            format!(
                "condition {}={} {}: {}",
                condition.type_, condition.status, condition.reason, condition.message
            ),
        );
    }
    if status.phase.is_terminal() {
        push(
            status.finished_at.as_ref().map(|t| t.0),
            format!("finished: {}", finished(job)),
        );
    }
    for event in events {
        let at = event
            .event_time
            .as_ref()
            .map(|t| t.0)
            .or_else(|| event.deprecated_last_timestamp.as_ref().map(|t| t.0))
            .or_else(|| event.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let count = event
            .series
            .as_ref()
            .map(|s| format!(" (x{})", s.count))
            .unwrap_or_default();
        push(
            at,
            format!(
                "event {} {}{count}: {}",
                event.type_.as_deref().unwrap_or("Normal"),
                event.reason.as_deref().unwrap_or(""),
                event.note.as_deref().unwrap_or("")
            ),
        );
    }
    // Stable: what happened at one instant keeps the order above.
    entries.sort_by_key(|e| e.at);
    entries
}

/// The outcome in one line: a result is left to `Outcome:`.
fn finished(job: &Job) -> String {
    let status = job.status.clone().unwrap_or_default();
    match (status.phase, &status.result_ref) {
        (JobPhase::Succeeded, Some(url)) => format!("Succeeded, result at {url}"),
        (JobPhase::Succeeded, None) => "Succeeded".into(),
        _ => render::outcome(job),
    }
}

/// The Events of `all` that are about `job`: by uid, or by kind and name
/// when an Event names no uid (never those of an older Job of that name).
pub fn about(job: &Job, all: &[Event]) -> Vec<Event> {
    let uid = job.uid();
    let name = job.name_any();
    all.iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| match &r.uid {
                Some(theirs) => Some(theirs) == uid.as_ref(),
                None => {
                    r.kind.as_deref() == Some("Job") && r.name.as_deref() == Some(name.as_str())
                }
            })
        })
        .cloned()
        .collect()
}

/// `+12.3s  what`, from the first entry.
pub fn render(entries: &[Entry]) -> String {
    let Some(first) = entries.first() else {
        return "(nothing recorded)".into();
    };
    entries
        .iter()
        .map(|e| {
            format!(
                "{}  +{:<7}  {}",
                e.at.strftime("%H:%M:%S"),
                render::duration(render::elapsed(first.at, e.at)),
                e.what
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job() -> Job {
        serde_json::from_value(json!({
            "apiVersion": "drover.dev/v1alpha1", "kind": "Job",
            "metadata": {"name": "mix", "namespace": "ns", "uid": "u-1",
                         "creationTimestamp": "2027-01-15T08:00:00Z"},
            "spec": {"worker": "assembly", "input": {}},
            "status": {
                "phase": "Failed", "attempt": 2,
                "queuedAt": "2027-01-15T08:00:10Z", "startedAt": "2027-01-15T08:00:11Z",
                "finishedAt": "2027-01-15T08:00:20Z", "messageId": "m-2",
                "steps": [{"name": "fetch", "phase": "Failed", "attempts": 3,
                           "startedAt": "2027-01-15T08:00:11Z", "finishedAt": "2027-01-15T08:00:19Z",
                           "message": "404"}],
                "error": {"reason": "MaxAttemptsExceeded", "message": "all 2 attempts failed", "retryable": false},
                "conditions": [{"type": "Failed", "status": "True", "reason": "MaxAttemptsExceeded",
                                "message": "all 2 attempts failed", "lastTransitionTime": "2027-01-15T08:00:20Z"}]
            }
        }))
        .unwrap()
    }

    fn event(reason: &str, at: &str, uid: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": format!("e-{reason}")},
            "eventTime": at.replace('Z', ".000000Z"), "reason": reason, "note": "n", "type": "Warning",
            "regarding": {"kind": "Job", "name": "mix", "uid": uid, "apiVersion": "drover.dev/v1alpha1"},
            "reportingController": "drover", "reportingInstance": "op", "action": "Dispatch"
        }))
        .unwrap()
    }

    #[test]
    fn a_failed_job_reads_from_creation_to_outcome_with_its_events_in_between() {
        let events = [event("MaxAttemptsExceeded", "2027-01-15T08:00:20Z", "u-1")];
        let lines: Vec<String> = build(&job(), &events).into_iter().map(|e| e.what).collect();
        assert_eq!(
            lines,
            [
                "created for worker assembly",
                "attempt 2 queued (message m-2)",
                "attempt 2 started",
                "  step fetch started",
                "  step fetch Failed after 8.0s (3 tries): 404",
                "condition Failed=True MaxAttemptsExceeded: all 2 attempts failed",
                "finished: Failed: all 2 attempts failed (MaxAttemptsExceeded)",
                "event Warning MaxAttemptsExceeded: n",
            ]
        );
        let text = render(&build(&job(), &events));
        assert!(text.starts_with("08:00:00  +0ms"), "{text}");
        assert!(text.contains("08:00:20  +20.0s"), "{text}");
    }

    #[test]
    fn only_the_events_about_this_job_are_kept() {
        let all = [
            event("Retried", "2027-01-15T08:00:30Z", "u-1"),
            event("Retried", "2027-01-15T08:00:30Z", "u-of-an-older-job"),
        ];
        let mut recreated = all[1].clone();
        recreated.regarding.as_mut().unwrap().uid = None;
        let kept = about(&job(), &[all[0].clone(), recreated]);
        assert_eq!(
            kept.len(),
            2,
            "by uid, or by kind and name when no uid is given"
        );
        assert_eq!(about(&job(), &all[1..]).len(), 0, "an older Job's Event");
    }
}
