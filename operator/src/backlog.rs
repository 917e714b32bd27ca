//! Counting a fleet's backlog from the Jobs the operator already has in its
//! informer cache: no extra API calls, no polling.

use std::collections::BTreeMap;

use drover_crds::job::{Job, JobPhase};
use drover_crds::pipeline_worker::Backlog;
use k8s_openapi::jiff::Timestamp;

/// The backlog of the fleet `worker` in `namespace`, and how much of it the
/// scaler should size for: queued + running + Backoff Jobs whose retry is due.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BacklogCount {
    /// What the status shows.
    pub backlog: Backlog,
    /// Jobs that want a worker now.
    pub demand: u32,
}

/// Counts the unfinished Jobs of one fleet. A Pending Job counts as queued: it
/// is about to be published and a worker should be warm for it.
pub fn count<'a>(
    jobs: impl IntoIterator<Item = &'a Job>,
    namespace: &str,
    worker: &str,
    now: Timestamp,
) -> BacklogCount {
    let mut count = BacklogCount::default();
    for job in jobs {
        if job.metadata.namespace.as_deref() != Some(namespace)
            || job.spec.worker != worker
            || job.metadata.deletion_timestamp.is_some()
            || job.spec.cancel
        {
            continue;
        }
        let status = job.status.clone().unwrap_or_default();
        match status.phase {
            JobPhase::Pending | JobPhase::Queued => {
                count.backlog.queued += 1;
                count.demand += 1;
            }
            JobPhase::Running => {
                count.backlog.running += 1;
                count.demand += 1;
            }
            JobPhase::Backoff => {
                count.backlog.backoff += 1;
                if status.retry_at.as_ref().is_none_or(|at| at.0 <= now) {
                    count.demand += 1;
                }
            }
            // Nobody runs it and it is not due: its provider works on it.
            JobPhase::Waiting => {}
            JobPhase::Succeeded | JobPhase::Failed | JobPhase::Cancelled => {}
        }
    }
    count
}

/// The earliest future retry among the fleet's Backoff Jobs: when the demand
/// will grow without any watch event, so the reconcile is scheduled for then.
pub fn next_retry<'a>(
    jobs: impl IntoIterator<Item = &'a Job>,
    namespace: &str,
    worker: &str,
    now: Timestamp,
) -> Option<Timestamp> {
    jobs.into_iter()
        .filter(|job| {
            job.metadata.namespace.as_deref() == Some(namespace) && job.spec.worker == worker
        })
        .filter_map(|job| job.status.as_ref())
        .filter(|status| status.phase == JobPhase::Backoff)
        .filter_map(|status| status.retry_at.as_ref().map(|t| t.0))
        .filter(|at| *at > now)
        .min()
}

/// How many Running Jobs each pod in `namespace` holds a claim on: what a
/// scale-down would interrupt if it stopped that pod.
pub fn running_by_pod<'a>(
    jobs: impl IntoIterator<Item = &'a Job>,
    namespace: &str,
) -> BTreeMap<String, u32> {
    let mut running = BTreeMap::new();
    for job in jobs {
        if job.metadata.namespace.as_deref() != Some(namespace) {
            continue;
        }
        if let Some(status) = &job.status
            && status.phase == JobPhase::Running
            && let Some(claim) = &status.claim
        {
            *running.entry(claim.pod.clone()).or_default() += 1;
        }
    }
    running
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_crds::JobStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::SignedDuration;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn job(ns: &str, worker: &str, phase: JobPhase, retry_in_secs: Option<i64>) -> Job {
        let spec =
            serde_json::from_value(serde_json::json!({"worker": worker, "input": {}})).unwrap();
        let mut job = Job::new("j", spec);
        job.metadata.namespace = Some(ns.into());
        job.status = Some(JobStatus {
            phase,
            retry_at: retry_in_secs
                .map(|s| Time(now().checked_add(SignedDuration::from_secs(s)).unwrap())),
            ..JobStatus::default()
        });
        job
    }

    #[test]
    fn counts_only_this_fleets_unfinished_jobs() {
        let jobs = [
            job("a", "w", JobPhase::Pending, None),
            job("a", "w", JobPhase::Queued, None),
            job("a", "w", JobPhase::Running, None),
            job("a", "w", JobPhase::Succeeded, None),
            job("a", "other", JobPhase::Queued, None),
            job("b", "w", JobPhase::Queued, None),
        ];
        let count = count(&jobs, "a", "w", now());
        assert_eq!(
            count.backlog,
            Backlog {
                queued: 2,
                running: 1,
                backoff: 0
            }
        );
        assert_eq!(count.demand, 3);
    }

    #[test]
    fn backoff_counts_as_demand_only_once_due() {
        let jobs = [
            job("a", "w", JobPhase::Backoff, Some(-1)),
            job("a", "w", JobPhase::Backoff, Some(30)),
        ];
        let count = count(&jobs, "a", "w", now());
        assert_eq!(count.backlog.backoff, 2);
        assert_eq!(count.demand, 1);
        assert_eq!(
            next_retry(&jobs, "a", "w", now()),
            Some(now().checked_add(SignedDuration::from_secs(30)).unwrap())
        );
    }

    #[test]
    fn job_without_status_is_pending_and_counts() {
        let mut fresh = job("a", "w", JobPhase::Pending, None);
        fresh.status = None;
        assert_eq!(count([&fresh], "a", "w", now()).demand, 1);
    }

    #[test]
    fn cancelled_or_deleted_jobs_want_no_worker() {
        let mut cancelled = job("a", "w", JobPhase::Queued, None);
        cancelled.spec.cancel = true;
        assert_eq!(count([&cancelled], "a", "w", now()).demand, 0);
    }

    #[test]
    fn running_jobs_are_counted_per_claiming_pod() {
        let claimed = |ns: &str, pod: &str, phase: JobPhase| {
            let mut j = job(ns, "w", phase, None);
            if let Some(status) = j.status.as_mut() {
                status.claim = Some(drover_crds::job::Claim {
                    id: format!("claim-{pod}"),
                    pod: pod.into(),
                    renew_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()),
                    lease_seconds: 30,
                });
            }
            j
        };
        let jobs = [
            claimed("a", "p1", JobPhase::Running),
            claimed("a", "p1", JobPhase::Running),
            claimed("a", "p2", JobPhase::Running),
            claimed("a", "p3", JobPhase::Succeeded),
            claimed("b", "p1", JobPhase::Running),
        ];
        let running = running_by_pod(&jobs, "a");
        assert_eq!(
            running,
            BTreeMap::from([("p1".into(), 2), ("p2".into(), 1)])
        );
    }
}
