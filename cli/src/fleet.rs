//! `fleet`: one row per PipelineWorker with its backlog and replicas (from
//! its status) and its throughput and error rate (from the finish times and
//! phases of its Jobs over a recent window).

use std::time::Duration;

use drover_crds::{Job, JobPhase, PipelineWorker};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::render;

pub const HEADERS: [&str; 10] = [
    "NAME",
    "PIPELINE",
    "READY",
    "DESIRED",
    "QUEUED",
    "RUNNING",
    "BACKOFF",
    "DONE/MIN",
    "ERRORS",
    "CONDITION",
];

/// Jobs of `fleet` that finished within `window` before `now`: (finished, failed).
pub fn finished_in(
    fleet: &PipelineWorker,
    jobs: &[Job],
    window: Duration,
    now: Timestamp,
) -> (u32, u32) {
    let name = fleet.name_any();
    let namespace = fleet.namespace();
    let mut finished = 0;
    let mut failed = 0;
    for job in jobs {
        let Some(status) = job.status.as_ref() else {
            continue;
        };
        let recent = status
            .finished_at
            .as_ref()
            .is_some_and(|t| render::elapsed(t.0, now) <= window);
        if job.spec.worker != name
            || job.namespace() != namespace
            || !recent
            || !status.phase.is_terminal()
        {
            continue;
        }
        finished += 1;
        if status.phase == JobPhase::Failed {
            failed += 1;
        }
    }
    (finished, failed)
}

/// The fleet's row.
pub fn row(fleet: &PipelineWorker, jobs: &[Job], window: Duration, now: Timestamp) -> Vec<String> {
    let status = fleet.status.clone().unwrap_or_default();
    let (finished, failed) = finished_in(fleet, jobs, window, now);
    let minutes = (window.as_secs_f64() / 60.0).max(1.0 / 60.0);
    let errors = if finished == 0 {
        "-".to_owned()
    } else {
        format!("{:.0}%", f64::from(failed) * 100.0 / f64::from(finished))
    };
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded" && c.status == "True")
        .or_else(|| status.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| format!("{}={} {}", c.type_, c.status, c.reason))
        .unwrap_or_default();
    vec![
        fleet.name_any(),
        fleet.spec.pipeline.as_str().to_owned(),
        format!("{}/{}", status.ready_replicas, status.replicas),
        status.desired_replicas.to_string(),
        status.backlog.queued.to_string(),
        status.backlog.running.to_string(),
        status.backlog.backoff.to_string(),
        format!("{:.1}", f64::from(finished) / minutes),
        errors,
        condition,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_crds::pipeline_worker::Backlog;
    use drover_crds::{JobStatus, PipelineWorkerStatus};
    use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::SignedDuration;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn fleet() -> PipelineWorker {
        let mut fleet = PipelineWorkerBuilder::sleep("sleeper")
            .namespace("ns")
            .build();
        fleet.status = Some(PipelineWorkerStatus {
            replicas: 3,
            ready_replicas: 2,
            desired_replicas: 4,
            backlog: Backlog {
                queued: 7,
                running: 6,
                backoff: 1,
            },
            ..PipelineWorkerStatus::default()
        });
        fleet
    }

    fn finished(worker: &str, phase: JobPhase, secs_ago: i64) -> Job {
        let at = Time(
            now()
                .checked_sub(SignedDuration::from_secs(secs_ago))
                .unwrap(),
        );
        let mut job = JobBuilder::new("j", worker).namespace("ns").build();
        job.status = Some(JobStatus {
            phase,
            finished_at: Some(at),
            ..JobStatus::default()
        });
        job
    }

    #[test]
    fn throughput_and_error_rate_count_only_this_fleets_recent_jobs() {
        let jobs = [
            finished("sleeper", JobPhase::Succeeded, 10),
            finished("sleeper", JobPhase::Succeeded, 20),
            finished("sleeper", JobPhase::Succeeded, 30),
            finished("sleeper", JobPhase::Failed, 40),
            finished("sleeper", JobPhase::Failed, 400),
            finished("other", JobPhase::Failed, 5),
        ];
        let row = row(&fleet(), &jobs, Duration::from_secs(120), now());
        assert_eq!(
            row,
            [
                "sleeper", "sleep", "2/3", "4", "7", "6", "1", "2.0", "25%", ""
            ]
        );
    }

    #[test]
    fn an_idle_fleet_shows_no_error_rate() {
        let row = row(&fleet(), &[], Duration::from_secs(300), now());
        assert_eq!(row[7..9], ["0.0", "-"]);
    }
}
