//! Text for a person: progress bars, durations, ages, the step lines of the
//! live view and the rows of `get`. Pure, so every shape is pinned by a test.

use std::time::Duration;

use drover_crds::job::JobError;
use drover_crds::job_transition::{CONDITION_PUBLISH_FAILED, CONDITION_UNCLAIMED};
use drover_crds::{Job, JobPhase, StepPhase, StepStatus};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;
use serde_json::Value;

/// `[#####.....]` for `percent` of `width` cells.
pub fn bar(percent: i32, width: usize) -> String {
    let percent = usize::try_from(percent.clamp(0, 100)).unwrap_or(0);
    // Full only when done; any progress at all shows one cell.
    let filled = (percent * width / 100)
        .max(usize::from(percent > 0))
        .min(width);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// `850ms`, `4.2s`, `1m05s`, `2h03m`.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.as_millis()),
        1..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// How long from `start` to `end`, both whole-second Kubernetes times: an
/// interval within one second reads `<1s`, not a false `0ms`.
pub fn span(start: Timestamp, end: Timestamp) -> String {
    match elapsed(start, end) {
        d if d.is_zero() => "<1s".to_owned(),
        d => duration(d),
    }
}

/// kubectl's ages: `12s`, `5m`, `3h`, `2d`.
pub fn age(since: Timestamp, now: Timestamp) -> String {
    let secs = elapsed(since, now).as_secs();
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Time from `since` to `now`, zero when `since` is ahead (another clock).
pub fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO)
}

/// How long a step ran: until it finished, or until now.
pub fn step_elapsed(step: &StepStatus, now: Timestamp) -> Option<Duration> {
    let started = step.started_at.as_ref()?.0;
    let end = step.finished_at.as_ref().map_or(now, |t| t.0);
    Some(elapsed(started, end))
}

pub fn step_phase(phase: StepPhase) -> &'static str {
    match phase {
        StepPhase::Pending => "Pending",
        StepPhase::Running => "Running",
        StepPhase::Waiting => "Waiting",
        StepPhase::Succeeded => "Succeeded",
        StepPhase::Failed => "Failed",
        StepPhase::Skipped => "Skipped",
    }
}

/// The words after a step's bar: phase, attempt, elapsed, last message.
pub fn step_detail(step: &StepStatus, attempt: i32, now: Timestamp) -> String {
    // Step times are whole seconds: a step done within one reads "<1s".
    let elapsed = match step_elapsed(step, now) {
        Some(d) if d.is_zero() && step.finished_at.is_some() => "<1s".to_owned(),
        Some(d) => duration(d),
        None => String::new(),
    };
    let mut detail = format!(
        "{:<9} attempt {attempt:<2} {elapsed:>7}",
        step_phase(step.phase)
    );
    if let Some(message) = step.message.as_deref().filter(|m| !m.is_empty()) {
        detail.push_str("  ");
        detail.push_str(message);
    }
    detail
}

/// One line per step, as printed when stdout is not a terminal.
pub fn step_line(step: &StepStatus, attempt: i32, now: Timestamp) -> String {
    format!(
        "step {:<18} {} {:>3}% {}",
        step.name,
        bar(step.progress, 20),
        step.progress.clamp(0, 100),
        step_detail(step, attempt, now)
    )
}

/// The Job's own line above its steps.
pub fn job_line(job: &Job, now: Timestamp) -> String {
    let status = job.status.clone().unwrap_or_default();
    let since = job.creation_timestamp().map(|t| t.0).unwrap_or(now);
    let mut line = format!(
        "job {} {:?} attempt {} {}% {}",
        job.name_any(),
        status.phase,
        status.attempt,
        status.progress,
        duration(elapsed(since, now))
    );
    let waiting = waiting_reason(job, now);
    if !waiting.is_empty() {
        line.push_str(" (");
        line.push_str(&waiting);
        line.push(')');
    }
    line
}

/// Why a Job that is not running waits, from its conditions and times.
pub fn waiting_reason(job: &Job, now: Timestamp) -> String {
    let Some(status) = job.status.as_ref() else {
        return "not yet seen by the operator".into();
    };
    let noted = status.conditions.iter().find(|c| {
        c.status == "False" && c.type_ == "Admitted"
            || c.status == "True"
                && [CONDITION_PUBLISH_FAILED, CONDITION_UNCLAIMED].contains(&c.type_.as_str())
    });
    if let Some(c) = noted {
        return format!("{}: {}", c.reason, c.message);
    }
    match status.phase {
        JobPhase::Pending => "waiting to be published".into(),
        JobPhase::Queued => "waiting for a worker".into(),
        JobPhase::Waiting => match &status.external {
            Some(wait) => provider_wait(wait),
            None => "waiting for an outside provider".into(),
        },
        JobPhase::Backoff => match &status.retry_at {
            Some(at) if at.0 > now => format!("next attempt in {}", duration(elapsed(now, at.0))),
            _ => "next attempt due".into(),
        },
        _ => String::new(),
    }
}

/// A Job's wait for its provider: the request, what the provider last
/// said, the polls so far, and whether its callback came.
pub fn provider_wait(wait: &drover_crds::ExternalWait) -> String {
    let mut line = format!(
        "provider request {}: {}",
        wait.request_id,
        wait.provider_status.as_deref().unwrap_or("submitted")
    );
    if wait.polls > 0 {
        line.push_str(&format!(", {} polls", wait.polls));
    }
    if wait.callback_at.is_some() {
        line.push_str(", callback received");
    }
    line
}

/// What a finished Job produced, for a person.
pub fn outcome(job: &Job) -> String {
    let status = job.status.clone().unwrap_or_default();
    match status.phase {
        JobPhase::Succeeded => match (&status.result, &status.result_ref) {
            (_, Some(url)) => format!("Succeeded: result at {url}"),
            (Some(result), None) => format!(
                "Succeeded:\n{}",
                serde_json::to_string_pretty(result).unwrap_or_default()
            ),
            (None, None) => "Succeeded".into(),
        },
        phase => match &status.error {
            Some(error) => format!("{phase:?}: {} ({})", error.message, error.reason),
            None => format!("{phase:?}"),
        },
    }
}

/// The machine-readable outcome of `-o json`.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub namespace: Option<String>,
    pub name: String,
    pub phase: JobPhase,
    pub attempt: i32,
    pub result: Option<Value>,
    pub result_ref: Option<String>,
    pub error: Option<JobError>,
}

/// What `-o json` prints for `job`.
pub fn outcome_json(job: &Job) -> Outcome {
    let status = job.status.clone().unwrap_or_default();
    Outcome {
        namespace: job.namespace(),
        name: job.name_any(),
        phase: status.phase,
        attempt: status.attempt,
        result: status.result,
        result_ref: status.result_ref,
        error: status.error,
    }
}

/// The first columns of every table of Jobs: namespace (with `-A`), name,
/// worker, phase, attempt.
pub fn job_columns(job: &Job, with_namespace: bool) -> Vec<String> {
    let status = job.status.as_ref();
    let mut row = Vec::new();
    if with_namespace {
        row.push(job.namespace().unwrap_or_default());
    }
    row.extend([
        job.name_any(),
        job.spec.worker.clone(),
        format!("{:?}", status.map(|s| s.phase).unwrap_or_default()),
        status.map_or(0, |s| s.attempt).to_string(),
    ]);
    row
}

/// The columns of `get`.
pub fn job_row(job: &Job, now: Timestamp, with_namespace: bool) -> Vec<String> {
    let status = job.status.clone().unwrap_or_default();
    let mut row = job_columns(job, with_namespace);
    row.extend([
        format!("{}%", status.progress),
        job.creation_timestamp()
            .map(|t| age(t.0, now))
            .unwrap_or_default(),
        waiting_reason(job, now),
    ]);
    row
}

pub fn job_headers(with_namespace: bool) -> Vec<&'static str> {
    let mut headers = Vec::new();
    if with_namespace {
        headers.push("NAMESPACE");
    }
    headers.extend([
        "NAME", "WORKER", "PHASE", "ATTEMPT", "PROGRESS", "AGE", "WAITING",
    ]);
    headers
}

/// Columns padded to their widest cell, two spaces apart, like kubectl.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_crds::job::ExternalWait;
    use drover_crds::job_transition::REASON_NOT_CLAIMED;
    use drover_crds::{FailureReason, JobStatus};
    use drover_testkit::JobBuilder;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::SignedDuration;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn ago(secs: i64) -> Time {
        Time(now().checked_sub(SignedDuration::from_secs(secs)).unwrap())
    }

    fn step(phase: StepPhase, progress: i32, message: Option<&str>) -> StepStatus {
        StepStatus {
            name: "normalize".into(),
            phase,
            started_at: Some(ago(65)),
            finished_at: None,
            attempts: 1,
            progress,
            message: message.map(Into::into),
        }
    }

    #[test]
    fn bars_fill_in_proportion_and_stay_in_bounds() {
        assert_eq!(bar(0, 10), "[..........]");
        assert_eq!(bar(40, 10), "[####......]");
        assert_eq!(bar(100, 10), "[##########]");
        assert_eq!(bar(250, 4), "[####]");
        assert_eq!(bar(-5, 4), "[....]");
        assert_eq!(bar(1, 10), "[#.........]", "any progress shows");
        assert_eq!(bar(99, 10), "[#########.]", "full only when done");
    }

    #[test]
    fn durations_and_ages_read_like_kubectl() {
        assert_eq!(duration(Duration::from_millis(850)), "850ms");
        assert_eq!(duration(Duration::from_millis(4200)), "4.2s");
        assert_eq!(duration(Duration::from_secs(65)), "1m05s");
        assert_eq!(duration(Duration::from_secs(7380)), "2h03m");
        assert_eq!(age(ago(12).0, now()), "12s");
        assert_eq!(age(ago(600).0, now()), "10m");
        assert_eq!(age(ago(3 * 86_400).0, now()), "3d");
        assert_eq!(age(ago(-30).0, now()), "0s", "a clock ahead of ours");
        assert_eq!(span(ago(5).0, ago(5).0), "<1s");
        assert_eq!(span(ago(65).0, now()), "1m05s");
    }

    #[test]
    fn a_step_line_shows_bar_percent_phase_attempt_elapsed_and_message() {
        let line = step_line(
            &step(StepPhase::Running, 40, Some("measuring loudness")),
            2,
            now(),
        );
        assert_eq!(
            line,
            "step normalize          [########............]  40% Running   attempt 2    1m05s  measuring loudness"
        );
        let mut done = step(StepPhase::Succeeded, 100, None);
        done.finished_at = Some(ago(60));
        assert!(step_line(&done, 1, now()).ends_with("Succeeded attempt 1     5.0s"));
        done.finished_at = done.started_at.clone();
        assert!(step_line(&done, 1, now()).ends_with("Succeeded attempt 1      <1s"));
    }

    fn job(status: JobStatus) -> Job {
        let mut job = JobBuilder::new("j", "w").build();
        job.status = Some(status);
        job
    }

    fn status(phase: JobPhase) -> JobStatus {
        JobStatus {
            phase,
            attempt: 1,
            ..JobStatus::default()
        }
    }

    #[test]
    fn a_waiting_job_says_why() {
        let unclaimed = job(JobStatus {
            conditions: vec![Condition {
                type_: CONDITION_UNCLAIMED.into(),
                status: "True".into(),
                reason: REASON_NOT_CLAIMED.into(),
                message: "published again".into(),
                last_transition_time: ago(0),
                observed_generation: None,
            }],
            ..status(JobPhase::Queued)
        });
        assert_eq!(
            waiting_reason(&unclaimed, now()),
            "NotClaimed: published again"
        );
        let backoff = job(JobStatus {
            retry_at: Some(ago(-3)),
            ..status(JobPhase::Backoff)
        });
        assert_eq!(waiting_reason(&backoff, now()), "next attempt in 3.0s");
        assert_eq!(waiting_reason(&job(status(JobPhase::Running)), now()), "");
    }

    #[test]
    fn a_job_waiting_for_its_provider_shows_the_request_and_what_the_provider_said() {
        let wait = ExternalWait {
            step: "render".into(),
            attempt: 1,
            request_id: "r-7".into(),
            submitted_at: None,
            waiting_since: None,
            polls: 2,
            provider_status: Some("rendering".into()),
            output_url: None,
            callback_at: None,
        };
        let waiting = job(JobStatus {
            external: Some(wait.clone()),
            ..status(JobPhase::Waiting)
        });
        assert_eq!(
            waiting_reason(&waiting, now()),
            "provider request r-7: rendering, 2 polls"
        );
        let called_back = job(JobStatus {
            external: Some(ExternalWait {
                polls: 0,
                provider_status: Some("succeeded".into()),
                callback_at: Some(ago(60)),
                ..wait
            }),
            ..status(JobPhase::Waiting)
        });
        assert_eq!(
            waiting_reason(&called_back, now()),
            "provider request r-7: succeeded, callback received"
        );
        assert_eq!(step_phase(StepPhase::Waiting), "Waiting");
    }

    #[test]
    fn outcomes_show_the_result_or_the_error() {
        let ok = job(JobStatus {
            result: Some(serde_json::json!({"durationSeconds": 3})),
            ..status(JobPhase::Succeeded)
        });
        assert_eq!(outcome(&ok), "Succeeded:\n{\n  \"durationSeconds\": 3\n}");
        let failed = job(JobStatus {
            error: Some(JobError::new(
                FailureReason::MaxAttemptsExceeded,
                "all 3 attempts failed".into(),
                false,
            )),
            ..status(JobPhase::Failed)
        });
        assert_eq!(
            outcome(&failed),
            "Failed: all 3 attempts failed (MaxAttemptsExceeded)"
        );
        let printed = outcome_json(&failed);
        assert_eq!((printed.phase, printed.attempt), (JobPhase::Failed, 1));
        assert_eq!((printed.result, printed.result_ref), (None, None));
    }

    #[test]
    fn tables_pad_columns_to_the_widest_cell() {
        let text = table(
            &["NAME", "PHASE"],
            &[
                vec!["a-long-name".into(), "Running".into()],
                vec!["b".into(), "Queued".into()],
            ],
        );
        assert_eq!(
            text,
            "NAME         PHASE\na-long-name  Running\nb            Queued"
        );
    }
}
