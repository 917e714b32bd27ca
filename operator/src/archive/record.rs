//! A finished Job as the archive keeps it: the columns `history` filters and
//! sorts on, and the whole object (spec, final status, steps, attempts,
//! timings, result) as the apiserver served it.

use drover_crds::Job;
use drover_crds::history::phase_name;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

/// The annotation `kubectl apply` leaves: a second copy of the spec.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// One row of `drover_archived_jobs`; timestamps in RFC 3339.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchivedJob {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub worker: String,
    pub phase: String,
    pub attempt: i32,
    pub created_at: Option<String>,
    pub queued_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: String,
    pub error_reason: Option<String>,
    /// The Job object, less its managed fields and last-applied copy.
    pub job: serde_json::Value,
}

/// Why a Job cannot be archived (none of these happen to a Job the
/// apiserver served and the operator found finished).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("Job {0} has no uid or namespace")]
    Unnamed(String),
    #[error("Job {0} has not finished")]
    NotFinished(String),
    #[error("Job {job} does not encode as JSON: {source}")]
    Encode {
        job: String,
        source: serde_json::Error,
    },
}

impl ArchivedJob {
    /// The row for a finished Job.
    pub fn of(job: &Job) -> Result<Self, RecordError> {
        let name = job.name_any();
        let (Some(uid), Some(namespace)) = (job.uid(), job.namespace()) else {
            return Err(RecordError::Unnamed(name));
        };
        let status = job.status.clone().unwrap_or_default();
        let finished_at = match &status.finished_at {
            Some(at) if status.phase.is_terminal() => rfc3339(at),
            _ => return Err(RecordError::NotFinished(name)),
        };
        let mut kept = job.clone();
        kept.metadata.managed_fields = None;
        if let Some(annotations) = kept.metadata.annotations.as_mut() {
            annotations.remove(LAST_APPLIED);
        }
        let object = serde_json::to_value(&kept).map_err(|source| RecordError::Encode {
            job: name.clone(),
            source,
        })?;
        Ok(Self {
            uid,
            namespace,
            worker: job.spec.worker.clone(),
            phase: phase_name(status.phase),
            attempt: status.attempt,
            created_at: job.metadata.creation_timestamp.as_ref().map(rfc3339),
            queued_at: status.queued_at.as_ref().map(rfc3339),
            started_at: status.started_at.as_ref().map(rfc3339),
            finished_at,
            error_reason: status.error.as_ref().map(|e| e.reason.clone()),
            job: object,
            name,
        })
    }
}

fn rfc3339(time: &Time) -> String {
    time.0.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_crds::StepPhase;
    use drover_crds::job::{JobError, JobStatus, StepStatus};
    use drover_crds::{JobPhase, JobSpec};
    use k8s_openapi::jiff::Timestamp;
    use std::collections::BTreeMap;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + secs).unwrap())
    }

    fn finished(phase: JobPhase) -> Job {
        let spec: JobSpec =
            serde_json::from_value(serde_json::json!({"worker": "sleeper", "input": {"n": 1}}))
                .unwrap();
        let mut job = Job::new("j1", spec);
        job.metadata.namespace = Some("team-a".into());
        job.metadata.uid = Some("uid-1".into());
        job.metadata.creation_timestamp = Some(at(0));
        job.metadata.annotations = Some(BTreeMap::from([
            (LAST_APPLIED.to_owned(), "{...}".to_owned()),
            ("team".to_owned(), "a".to_owned()),
        ]));
        job.status = Some(JobStatus {
            phase,
            attempt: 2,
            queued_at: Some(at(1)),
            started_at: Some(at(2)),
            finished_at: Some(at(9)),
            steps: vec![StepStatus {
                name: "sleep".into(),
                phase: StepPhase::Succeeded,
                started_at: None,
                finished_at: None,
                attempts: 2,
                progress: 0,
                message: None,
            }],
            error: Some(JobError {
                reason: "MaxAttemptsExceeded".into(),
                message: "all 2 attempts failed".into(),
                retryable: false,
            }),
            ..JobStatus::default()
        });
        job
    }

    #[test]
    fn a_failed_job_keeps_its_steps_timings_and_reason() {
        let row = ArchivedJob::of(&finished(JobPhase::Failed)).unwrap();
        assert_eq!(
            (row.uid.as_str(), row.namespace.as_str(), row.name.as_str()),
            ("uid-1", "team-a", "j1")
        );
        assert_eq!(
            (row.worker.as_str(), row.phase.as_str()),
            ("sleeper", "Failed")
        );
        assert_eq!(row.attempt, 2);
        assert_eq!(row.finished_at, "2027-01-15T08:00:09Z");
        assert_eq!(row.queued_at.as_deref(), Some("2027-01-15T08:00:01Z"));
        assert_eq!(row.error_reason.as_deref(), Some("MaxAttemptsExceeded"));
        assert_eq!(row.job["status"]["steps"][0]["attempts"], 2);
        assert_eq!(row.job["spec"]["input"]["n"], 1);
    }

    #[test]
    fn the_last_applied_copy_is_dropped_and_other_annotations_kept() {
        let row = ArchivedJob::of(&finished(JobPhase::Succeeded)).unwrap();
        let annotations = &row.job["metadata"]["annotations"];
        assert!(annotations.get(LAST_APPLIED).is_none(), "{annotations}");
        assert_eq!(annotations["team"], "a");
    }

    #[test]
    fn an_unfinished_job_is_not_archived() {
        let mut job = finished(JobPhase::Running);
        assert!(matches!(
            ArchivedJob::of(&job),
            Err(RecordError::NotFinished(_))
        ));
        job.status.as_mut().unwrap().phase = JobPhase::Succeeded;
        job.status.as_mut().unwrap().finished_at = None;
        assert!(matches!(
            ArchivedJob::of(&job),
            Err(RecordError::NotFinished(_))
        ));
    }
}
