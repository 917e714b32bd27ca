//! Drain as long as promised, and restart nothing that need not restart:
//! * a spec edit that changes nothing the worker reads at start (retries
//!   here) rolls no pod, so a running Job keeps its worker;
//! * a worker pod stopped while it runs a Job longer than the old fixed
//!   25 s drain finishes that Job within its pod's grace (job timeout +
//!   30 s) instead of handing it back to start over.

use std::time::Duration;

use drover_crds::{Job, JobPhase, PipelineWorker};
use drover_e2e::drover::{DroverTest, drover_test};
use drover_e2e::wait;
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

fn fleet(test: &DroverTest, name: &str, replicas: i32) -> PipelineWorker {
    PipelineWorkerBuilder::sleep(name)
        .queue(
            &test.unique(&format!("{name}-jobs")),
            &test.unique(&format!("{name}-sub")),
        )
        .manual_replicas(replicas)
        .timeouts(60, 60)
        .build()
}

async fn running(jobs: &Api<Job>, name: &str) {
    wait::job_in_phase(jobs, name, JobPhase::Running, Duration::from_secs(60)).await;
}

async fn pod_names(pods: &Api<Pod>, fleet: &str) -> Vec<String> {
    let selector = format!("drover.dev/pipeline-worker={fleet}");
    let mut names: Vec<String> = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_retry_edit_rolls_no_pod_and_the_running_job_keeps_its_worker() {
    let test = drover_test("noroll").await;
    test.apply_fleet(fleet(&test, "steady", 1)).await;
    let jobs: Api<Job> = test.api();
    let pods: Api<Pod> = test.api();
    test.create_job(
        JobBuilder::new("long", "steady")
            .input(json!({"durationMillis": 12_000}))
            .build(),
    )
    .await;
    running(&jobs, "long").await;
    let before = pod_names(&pods, "steady").await;
    assert_eq!(before.len(), 1, "{before:?}");

    let fleets: Api<PipelineWorker> = test.api();
    fleets
        .patch(
            "steady",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"retry": {"maxAttempts": 7}}})),
        )
        .await
        .expect("retry edit");

    let status = wait::job_finished(&jobs, "long", Duration::from_secs(60)).await;
    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    assert_eq!((status.attempt, status.releases), (1, 0), "{status:?}");
    // A quiet period after the edit: still the one pod it started with.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        pod_names(&pods, "steady").await,
        before,
        "a retry edit rolled the fleet"
    );
}

#[tokio::test]
async fn a_stopped_worker_finishes_a_job_longer_than_the_old_drain_within_its_grace() {
    let test = drover_test("drain").await;
    test.apply_fleet(fleet(&test, "draining", 1)).await;
    let jobs: Api<Job> = test.api();
    test.create_job(
        JobBuilder::new("longer", "draining")
            .input(json!({"durationMillis": 32_000}))
            .build(),
    )
    .await;
    running(&jobs, "longer").await;
    // Scale to zero: the pod gets SIGTERM and 90 s of grace.
    test.apply_fleet(fleet(&test, "draining", 0)).await;

    let status = wait::job_finished(&jobs, "longer", Duration::from_secs(90)).await;
    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    assert_eq!(
        (status.attempt, status.releases),
        (1, 0),
        "the Job was handed back instead of finished: {status:?}"
    );
}
