//! `describe`: one Job's life in time order, built from what its status
//! says (queued, started on which pod, each step, the last failure, the next
//! retry, the outcome), its conditions, the Events about it (the operator's
//! failures, retries, dead letters), and, since status keeps only the last
//! attempt, every attempt's own lines in the worker pods' logs (which pod
//! ran it, its steps, how it ended).

use std::collections::BTreeSet;

use drover_crds::{Job, JobPhase};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::Value;

use crate::render;

/// One moment of a Job's life.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub at: Timestamp,
    pub what: String,
    source: Source,
}

/// Where an entry comes from, which says how precise its time is.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Source {
    /// The Job's creation: always first.
    Created,
    /// Job status, in whole seconds: `finishing` for its outcome and conditions.
    Status { attempt: i32, finishing: bool },
    /// A worker's log line, to the microsecond.
    Log { attempt: i32 },
    /// An Event, to the microsecond.
    Event,
}

impl Source {
    /// Whether a precise entry from `self` came before a status entry from
    /// `status` that shares its second.
    fn precedes(self, status: Source) -> bool {
        let Source::Status { attempt, finishing } = status else {
            return false;
        };
        match self {
            Source::Log { attempt: a } => a < attempt || (finishing && a == attempt),
            // The operator's Events of an outcome come after it is written;
            // those before a new attempt (Retried) come before it.
            Source::Event => !finishing,
            Source::Created | Source::Status { .. } => false,
        }
    }
}

/// Status times are whole seconds: each is moved to just after what it
/// must follow within its second (the logs and Events of that second).
fn place(entries: &mut [Entry]) {
    let second = std::time::Duration::from_secs(1);
    let precise: Vec<(Timestamp, Source)> = entries
        .iter()
        .filter(|e| matches!(e.source, Source::Log { .. } | Source::Event))
        .map(|e| (e.at, e.source))
        .collect();
    for entry in entries
        .iter_mut()
        .filter(|e| matches!(e.source, Source::Status { .. }))
    {
        let end = entry.at.checked_add(second).unwrap_or(entry.at);
        if let Some(latest) = precise
            .iter()
            .filter(|(at, source)| *at >= entry.at && *at < end && source.precedes(entry.source))
            .map(|(at, _)| *at)
            .max()
        {
            // Just after it, so it sorts after it.
            entry.at = latest
                .checked_add(k8s_openapi::jiff::SignedDuration::from_micros(1))
                .unwrap_or(latest);
        }
    }
}

/// What the worker logs say about each attempt of a Job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub entries: Vec<Entry>,
    /// The attempts whose start the logs show.
    pub attempts: BTreeSet<i32>,
}

/// The history in `lines` (log lines already known to be the Job's).
pub fn history<'a>(lines: impl IntoIterator<Item = &'a str>) -> History {
    let mut history = History::default();
    for line in lines {
        let Ok(line) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let fields = &line["fields"];
        let text = |key: &str| fields[key].as_str().unwrap_or_default().to_owned();
        let attempt = fields["attempt"]
            .as_i64()
            .or_else(|| line["span"]["attempt"].as_i64())
            .and_then(|a| i32::try_from(a).ok());
        let at = line["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<Timestamp>().ok());
        let (Some(attempt), Some(at)) = (attempt, at) else {
            continue;
        };
        let took = fields["took_ms"]
            .as_u64()
            .map(|ms| {
                format!(
                    " in {}",
                    render::duration(std::time::Duration::from_millis(ms))
                )
            })
            .unwrap_or_default();
        let what = match fields["event"].as_str() {
            Some("job_started") => {
                history.attempts.insert(attempt);
                format!("attempt {attempt} started on pod {}", text("pod"))
            }
            Some("step_completed") => format!(
                "  step {} Succeeded{took} (attempt {attempt})",
                text("step")
            ),
            Some("step_failed") => format!(
                "  step {} Failed (attempt {attempt}): {} ({})",
                text("step"),
                text("message"),
                text("reason")
            ),
            Some("job_completed") => format!("attempt {attempt} succeeded{took}"),
            Some("job_failed") => format!(
                "attempt {attempt} failed{}: {} ({})",
                if fields["retryable"].as_bool() == Some(true) {
                    ", retryable"
                } else {
                    ""
                },
                text("message"),
                text("reason")
            ),
            Some("job_cancelled") => format!("attempt {attempt} stopped on cancel"),
            _ => continue,
        };
        history.entries.push(Entry {
            at,
            what,
            source: Source::Log { attempt },
        });
    }
    history
}

/// Everything known about `job`, the `events` about it and its `history`
/// from the logs, oldest first.
pub fn build(job: &Job, events: &[Event], history: &History) -> Vec<Entry> {
    let mut entries = history.entries.clone();
    let status = job.status.clone().unwrap_or_default();
    let attempt = status.attempt;
    let (running, finishing) = (
        Source::Status {
            attempt,
            finishing: false,
        },
        Source::Status {
            attempt,
            finishing: true,
        },
    );
    let mut push = |at: Option<Timestamp>, what: String, source: Source| {
        if let Some(at) = at {
            entries.push(Entry { at, what, source });
        }
    };
    push(
        job.creation_timestamp().map(|t| t.0),
        format!("created for worker {}", job.spec.worker),
        Source::Created,
    );
    push(
        status.queued_at.as_ref().map(|t| t.0),
        format!(
            "attempt {attempt} queued (message {})",
            status.message_id.as_deref().unwrap_or("?")
        ),
        running,
    );
    let pod = status
        .claim
        .as_ref()
        .map(|c| format!(" on pod {}", c.pod))
        .unwrap_or_default();
    // The logs tell the current attempt's start and steps better, when they have them.
    let logged = history.attempts.contains(&attempt);
    if !logged {
        push(
            status.started_at.as_ref().map(|t| t.0),
            format!("attempt {attempt} started{pod}"),
            running,
        );
    }
    for step in status.steps.iter().filter(|_| !logged) {
        let message = step
            .message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        push(
            step.started_at.as_ref().map(|t| t.0),
            format!("  step {} started", step.name),
            running,
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
            running,
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
            running,
        );
    }
    for condition in &status.conditions {
        push(
            Some(condition.last_transition_time.0),
            format!(
                "condition {}={} {}: {}",
                condition.type_, condition.status, condition.reason, condition.message
            ),
            finishing,
        );
    }
    if status.phase.is_terminal() {
        push(
            status.finished_at.as_ref().map(|t| t.0),
            format!("finished: {}", finished(job)),
            finishing,
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
            Source::Event,
        );
    }
    place(&mut entries);
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
    use drover_crds::job::JobError;
    use drover_crds::job_transition::CONDITION_FAILED;
    use drover_crds::{FailureReason, JobStatus, StepPhase, StepStatus};
    use drover_testkit::JobBuilder;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use serde_json::json;

    fn at(time: &str) -> Option<Time> {
        Some(Time(time.parse().unwrap()))
    }

    fn job() -> Job {
        let mut job = JobBuilder::new("mix", "assembly").namespace("ns").build();
        job.metadata.uid = Some("u-1".into());
        job.metadata.creation_timestamp = at("2027-01-15T08:00:00Z");
        let error = JobError::new(
            FailureReason::MaxAttemptsExceeded,
            "all 2 attempts failed".into(),
            false,
        );
        job.status = Some(JobStatus {
            phase: JobPhase::Failed,
            attempt: 2,
            queued_at: at("2027-01-15T08:00:10Z"),
            started_at: at("2027-01-15T08:00:11Z"),
            finished_at: at("2027-01-15T08:00:20Z"),
            message_id: Some("m-2".into()),
            steps: vec![StepStatus {
                name: "fetch".into(),
                phase: StepPhase::Failed,
                attempts: 3,
                progress: 0,
                started_at: at("2027-01-15T08:00:11Z"),
                finished_at: at("2027-01-15T08:00:19Z"),
                message: Some("404".into()),
            }],
            conditions: vec![Condition {
                type_: CONDITION_FAILED.into(),
                status: "True".into(),
                reason: error.reason.clone(),
                message: error.message.clone(),
                last_transition_time: at("2027-01-15T08:00:20Z").unwrap(),
                observed_generation: None,
            }],
            error: Some(error),
            ..JobStatus::default()
        });
        job
    }

    fn event(reason: &str, at: &str, uid: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": format!("e-{reason}")},
            "eventTime": if at.contains('.') { at.to_owned() } else { at.replace('Z', ".000000Z") }, "reason": reason, "note": "n", "type": "Warning",
            "regarding": {"kind": "Job", "name": "mix", "uid": uid, "apiVersion": "drover.dev/v1alpha1"},
            "reportingController": "drover", "reportingInstance": "op", "action": "Dispatch"
        }))
        .unwrap()
    }

    #[test]
    fn a_failed_job_reads_from_creation_to_outcome_with_its_events_in_between() {
        let events = [event("MaxAttemptsExceeded", "2027-01-15T08:00:20Z", "u-1")];
        let lines: Vec<String> = build(&job(), &events, &History::default())
            .into_iter()
            .map(|e| e.what)
            .collect();
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
        let text = render(&build(&job(), &events, &History::default()));
        assert!(text.starts_with("08:00:00  +0ms"), "{text}");
        assert!(text.contains("08:00:20  +20.0s"), "{text}");
    }

    #[test]
    fn every_attempt_in_the_logs_shows_its_pod_steps_and_end() {
        let lines = [
            r#"{"timestamp":"2027-01-15T08:00:02.5Z","fields":{"event":"job_started","job":"mix","attempt":1,"pod":"w-a"}}"#,
            r#"{"timestamp":"2027-01-15T08:00:03Z","fields":{"event":"step_failed","step":"fetch","reason":"NotFound","message":"404"},"span":{"job":"mix","attempt":1}}"#,
            r#"{"timestamp":"2027-01-15T08:00:03.1Z","fields":{"event":"job_failed","job":"mix","attempt":1,"reason":"StepFailed","retryable":true,"message":"fetch: 404"}}"#,
            r#"{"timestamp":"2027-01-15T08:00:11.2Z","fields":{"event":"job_started","job":"mix","attempt":2,"pod":"w-b"}}"#,
            r#"{"timestamp":"2027-01-15T08:00:11.3Z","fields":{"event":"claim_renewed","job":"mix","attempt":2}}"#,
            "not json",
        ];
        let history = history(lines);
        assert_eq!(history.attempts, BTreeSet::from([1, 2]));
        let all: Vec<String> = build(&job(), &[], &history)
            .into_iter()
            .map(|e| e.what)
            .collect();
        assert_eq!(
            all,
            [
                "created for worker assembly",
                "attempt 1 started on pod w-a",
                "  step fetch Failed (attempt 1): 404 (NotFound)",
                "attempt 1 failed, retryable: fetch: 404 (StepFailed)",
                "attempt 2 queued (message m-2)",
                "attempt 2 started on pod w-b",
                "condition Failed=True MaxAttemptsExceeded: all 2 attempts failed",
                "finished: Failed: all 2 attempts failed (MaxAttemptsExceeded)",
            ],
            "the logged start of attempt 2 replaces the one from status"
        );
    }

    #[test]
    fn a_status_time_in_whole_seconds_goes_after_what_it_follows_in_its_second() {
        // Attempt 2 failed at 08:00:20.4 (its log), the Job finished at
        // 08:00:20 by its status (so after 20.4), and the operator's Event
        // of it came at 20.6.
        let lines = [
            r#"{"timestamp":"2027-01-15T08:00:20.4Z","fields":{"event":"job_failed","job":"mix","attempt":2,"reason":"Told","retryable":true,"message":"no"}}"#,
        ];
        let events = [event(
            "MaxAttemptsExceeded",
            "2027-01-15T08:00:20.600000Z",
            "u-1",
        )];
        let all: Vec<String> = build(&job(), &events, &history(lines))
            .into_iter()
            .map(|e| e.what)
            .skip(5)
            .collect();
        assert_eq!(
            all,
            [
                "attempt 2 failed, retryable: no (Told)",
                "condition Failed=True MaxAttemptsExceeded: all 2 attempts failed",
                "finished: Failed: all 2 attempts failed (MaxAttemptsExceeded)",
                "event Warning MaxAttemptsExceeded: n",
            ]
        );
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
