//! Fault windows around a claim, opened on purpose:
//! * a Job deleted while it runs and created again at once under the same
//!   name is another Job, and never receives the old attempt's result;
//! * an outcome write refused by the apiserver (a ValidatingAdmissionPolicy
//!   that denies status writes to Succeeded for a while) is retried while
//!   the claim stays renewed, so the attempt is neither run again nor lost;
//! * a message naming another fleet's Job, published to this fleet's topic,
//!   is never run here.

use std::path::Path;
use std::time::Duration;

use drover_crds::job_transition::JobStatusPatch;
use drover_crds::{Job, JobMessage, JobPhase, PipelineWorker};
use drover_e2e::admission::{Updates, refuse};
use drover_e2e::drover::{DroverTest, PUBSUB_PROJECT, drover_test};
use drover_e2e::wait;
use drover_queue::{PubSubEndpoint, topic_path};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use google_cloud_pubsub::model::Message;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// A fleet of one worker pod with room for two Jobs at once.
async fn one_pod_fleet(test: &DroverTest, name: &str) -> PipelineWorker {
    test.apply_fleet(
        PipelineWorkerBuilder::sleep(name)
            .queue(&test.unique("jobs"), &test.unique("jobs-sub"))
            .ack_deadline_seconds(10)
            .concurrency(2)
            .manual_replicas(1)
            .build(),
    )
    .await
}

fn sleep_job(name: &str, worker: &str, millis: u64, effects: &Path) -> Job {
    JobBuilder::new(name, worker)
        .input(json!({"durationMillis": millis, "effectsDir": effects.display().to_string()}))
        .build()
}

async fn running(jobs: &Api<Job>, name: &str) -> Job {
    wait::until(
        &format!("{name} to run"),
        Duration::from_secs(60),
        || async {
            let job = jobs.get(name).await.map_err(|e| e.to_string())?;
            match job.status.as_ref().map(|s| s.phase) {
                Some(JobPhase::Running) => Ok(job),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

fn effect_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn a_job_recreated_under_the_same_name_never_receives_the_old_result() {
    let test = drover_test("recreated").await;
    let effects = test.env.control_plane.state_dir().join("effects-recreated");
    std::fs::create_dir_all(&effects).expect("effects dir");
    one_pod_fleet(&test, "w").await;
    let jobs: Api<Job> = test.api();

    test.create_job(sleep_job("same", "w", 6_000, &effects))
        .await;
    let old = running(&jobs, "same").await;
    jobs.delete("same", &DeleteParams::default())
        .await
        .expect("the running Job is deleted");
    wait::until(
        "the old Job to be gone",
        Duration::from_secs(10),
        || async {
            match jobs.get_opt("same").await {
                Ok(None) => Ok(()),
                other => Err(format!("{:?}", other.map(|j| j.map(|j| j.uid())))),
            }
        },
    )
    .await;
    let new = test
        .create_job(sleep_job("same", "w", 15_000, &effects))
        .await;
    assert_ne!(new.uid(), old.uid());

    let status = wait::job_finished(&jobs, "same", Duration::from_secs(90)).await;
    let new_uid = new.uid().expect("uid");
    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    assert_eq!(
        status.result,
        Some(json!({"sleptMillis": 15_000, "jobUid": new_uid})),
        "the recreated Job got another Job's result"
    );
}

/// Waits until the policy refuses a write, proven on a Job no fleet runs.
async fn policy_in_force(jobs: &Api<Job>) {
    jobs.create(
        &PostParams::default(),
        &JobBuilder::new("probe", "no-such-worker")
            .input(json!({}))
            .build(),
    )
    .await
    .expect("probe Job");
    let mut tries = 0;
    wait::until(
        "the policy to refuse a Succeeded write",
        Duration::from_secs(30),
        || {
            tries += 1;
            let forged = JobStatusPatch {
                phase: Some(JobPhase::Succeeded),
                progress: Some(tries % 100),
                ..JobStatusPatch::default()
            };
            let patch = json!({ "status": forged });
            async move {
                match jobs
                    .patch_status("probe", &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Err(kube::Error::Api(status))
                        if status.message.contains("refuses status writes") =>
                    {
                        Ok(())
                    }
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
}

#[tokio::test]
async fn an_outcome_refused_for_ten_seconds_lands_without_a_second_run() {
    let test = drover_test("refused").await;
    let effects = test.env.control_plane.state_dir().join("effects-refused");
    std::fs::create_dir_all(&effects).expect("effects dir");
    one_pod_fleet(&test, "w").await;
    let jobs: Api<Job> = test.api();
    // Denies every write that leaves a Job of this namespace Succeeded.
    let refusal = refuse(
        &test.client,
        &format!("refuse-succeeded-{}", test.namespace),
        Updates {
            group: "drover.dev",
            version: "v1alpha1",
            resource: "jobs/status",
            namespace: Some(&test.namespace),
        },
        "!has(object.status) || !has(object.status.phase) || object.status.phase != 'Succeeded'",
        "this test refuses status writes to Succeeded for now",
    )
    .await;
    policy_in_force(&jobs).await;

    let job = test
        .create_job(sleep_job("refused", "w", 500, &effects))
        .await;
    running(&jobs, "refused").await;
    // The attempt finishes within a second; its outcome write is refused
    // for ten, longer than the claim's 15 s lease would survive unrenewed
    // counted from the claim.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = jobs
        .get("refused")
        .await
        .expect("job")
        .status
        .unwrap_or_default();
    assert_eq!(
        during.phase,
        JobPhase::Running,
        "the outcome cannot have landed: {during:?}"
    );
    refusal.lift().await;

    let status = wait::job_finished(&jobs, "refused", Duration::from_secs(60)).await;
    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    assert_eq!(
        status.attempt, 1,
        "the finished attempt ran again: {status:?}"
    );
    assert_eq!(
        status.result,
        Some(json!({"sleptMillis": 500, "jobUid": job.uid().expect("uid")}))
    );
    // A quiet period: nothing runs the Job again afterwards.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let prefix = format!("{}_refused_", test.namespace);
    let runs: Vec<_> = effect_files(&effects)
        .into_iter()
        .filter(|f| f.starts_with(&prefix))
        .collect();
    assert_eq!(
        runs,
        [format!("{prefix}1")],
        "the attempt's effect repeated"
    );
}

#[tokio::test]
async fn a_message_for_another_fleets_job_is_never_run_here() {
    let test = drover_test("misrouted").await;
    let effects = test.env.control_plane.state_dir().join("effects-misrouted");
    std::fs::create_dir_all(&effects).expect("effects dir");
    one_pod_fleet(&test, "here").await;
    // The Job's own fleet has no workers: only a misrouted message could run it.
    test.apply_fleet(
        PipelineWorkerBuilder::sleep("elsewhere")
            .queue(&test.unique("other"), &test.unique("other-sub"))
            .manual_replicas(0)
            .build(),
    )
    .await;
    let jobs: Api<Job> = test.api();
    let job = test
        .create_job(sleep_job("theirs", "elsewhere", 100, &effects))
        .await;
    wait::job_in_phase(&jobs, "theirs", JobPhase::Queued, Duration::from_secs(30)).await;

    let message = JobMessage {
        namespace: test.namespace.clone(),
        name: "theirs".into(),
        uid: job.uid().expect("uid"),
        attempt: 1,
    };
    let topic = topic_path(PUBSUB_PROJECT, &test.unique("jobs"));
    let publisher = PubSubEndpoint::emulator(test.env.pubsub.host_port())
        .publisher(&topic)
        .await
        .expect("publisher");
    publisher
        .publish(Message::new().set_data(message.encode()))
        .await
        .expect("published");
    // A control Job on this fleet, published after the misrouted message:
    // once it has run, the worker has had the other one too.
    test.create_job(sleep_job("ours", "here", 100, &effects))
        .await;
    let ours = wait::job_finished(&jobs, "ours", Duration::from_secs(60)).await;
    assert_eq!(ours.phase, JobPhase::Succeeded, "{ours:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let theirs = jobs
        .get("theirs")
        .await
        .expect("job")
        .status
        .unwrap_or_default();
    assert_eq!(
        theirs.phase,
        JobPhase::Queued,
        "another fleet's worker ran it: {theirs:?}"
    );
    assert!(theirs.claim.is_none(), "{theirs:?}");
}
