//! Giving up on a Job against Pub/Sub's real limits (the emulator refuses
//! what production refuses: more than 100 attributes, keys over 256 bytes,
//! values over 1,024 bytes, messages over 10 MB, with INVALID_ARGUMENT):
//! * a last attempt whose failure message is longer than an attribute value
//!   may be still ends Failed, its dead letter published with the message cut;
//! * a dead letter that cannot be published at all never keeps the Job from
//!   failing: the Failed Job says so in a condition and an Event.
//!
//! The test plays the worker: the fleet has no pods, and the test writes the
//! failed attempt to the Job's status as a worker's FailRetryable would.

use std::time::Duration;

use drover_crds::bounds::MAX_MESSAGE_BYTES;
use drover_crds::job::JobError;
use drover_crds::job_transition::JobStatusPatch;
use drover_crds::job_transition::{CONDITION_DEAD_LETTER_FAILED, CONDITION_FAILED};
use drover_crds::{Job, JobPhase, JobStatus, JobTransition};
use drover_e2e::drover::{DroverTest, PUBSUB_PROJECT, drover_test};
use drover_e2e::wait;
use drover_queue::{PubSubEndpoint, subscription_path, topic_path};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

/// A fleet without pods (the test is its worker) with one attempt per Job
/// and a dead-letter topic.
fn workerless_fleet(test: &DroverTest, name: &str) -> PipelineWorkerBuilder {
    PipelineWorkerBuilder::sleep(name)
        .queue(&test.unique("jobs"), &test.unique("jobs-sub"))
        .dead_letter_topic(&test.unique("dead"))
        .max_attempts(1)
        .manual_replicas(0)
}

async fn queued(jobs: &Api<Job>, name: &str) {
    wait::until(
        &format!("{name} to be Queued"),
        Duration::from_secs(20),
        || async {
            let job = jobs.get(name).await.map_err(|e| e.to_string())?;
            match job.status.as_ref().map(|s| s.phase) {
                Some(JobPhase::Queued) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// Writes what a worker writes when attempt 1 fails retryably with `message`.
async fn fail_attempt_as_a_worker(jobs: &Api<Job>, name: &str, message: &str) {
    let error = JobError {
        reason: "Told".into(),
        message: message.into(),
        retryable: true,
    };
    let failed = JobTransition::fail(JobPhase::Running, error, Vec::new(), Timestamp::now())
        .expect("a legal transition");
    let status = JobStatusPatch {
        attempt: Some(1),
        ..failed.status
    };
    let patch = json!({ "status": status });
    jobs.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("the failed attempt is written");
}

async fn failed_within(jobs: &Api<Job>, name: &str, within: Duration) -> JobStatus {
    let status = wait::job_finished(jobs, name, within).await;
    assert_eq!(status.phase, JobPhase::Failed, "{status:?}");
    status
}

#[tokio::test]
async fn a_last_attempt_with_a_failure_message_over_1024_bytes_ends_failed() {
    let test = drover_test("dl-long").await;
    test.apply_fleet(workerless_fleet(&test, "w").build()).await;
    let jobs: Api<Job> = test.api();
    test.create_job(
        JobBuilder::new("long", "w")
            .input(json!({"durationMillis": 10}))
            .build(),
    )
    .await;
    queued(&jobs, "long").await;

    let message = "the model answered nonsense ".repeat(100);
    assert!(message.len() > 1024);
    fail_attempt_as_a_worker(&jobs, "long", &message).await;

    // On the code before the bounds this Job was retried every second forever.
    let status = failed_within(&jobs, "long", Duration::from_secs(20)).await;
    let error = status.error.expect("the Failed Job says why");
    assert_eq!(error.reason, "MaxAttemptsExceeded");
    assert!(
        error.message.len() <= MAX_MESSAGE_BYTES,
        "{}",
        error.message.len()
    );
    assert!(
        error
            .message
            .starts_with("all 1 attempts failed: the model answered")
    );
    let types: Vec<_> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(
        types,
        [CONDITION_FAILED],
        "the dead letter went out: {types:?}"
    );
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.message.len() <= MAX_MESSAGE_BYTES)
    );
}

#[tokio::test]
async fn a_dead_letter_that_cannot_be_published_is_noted_on_the_failed_job() {
    let test = drover_test("dl-gone").await;
    let dead = test.unique("dead");
    test.apply_fleet(workerless_fleet(&test, "w").build()).await;
    let jobs: Api<Job> = test.api();
    test.create_job(
        JobBuilder::new("orphan", "w")
            .input(json!({"durationMillis": 10}))
            .build(),
    )
    .await;
    queued(&jobs, "orphan").await;

    // The dead-letter topic vanishes (deleted by hand, after the
    // subscription that names it); the fleet's next queue check, a minute
    // away, would bring both back.
    let endpoint = PubSubEndpoint::emulator(test.env.pubsub.host_port());
    endpoint
        .subscription_admin()
        .await
        .expect("admin client")
        .delete_subscription()
        .set_subscription(subscription_path(PUBSUB_PROJECT, &test.unique("jobs-sub")))
        .send()
        .await
        .expect("the subscription is deleted");
    endpoint
        .topic_admin()
        .await
        .expect("admin client")
        .delete_topic()
        .set_topic(topic_path(PUBSUB_PROJECT, &dead))
        .send()
        .await
        .expect("the dead-letter topic is deleted");
    fail_attempt_as_a_worker(&jobs, "orphan", "boom").await;

    let status = failed_within(&jobs, "orphan", Duration::from_secs(20)).await;
    let noted = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_DEAD_LETTER_FAILED)
        .unwrap_or_else(|| panic!("no {CONDITION_DEAD_LETTER_FAILED}: {:?}", status.conditions));
    assert_eq!(
        (noted.status.as_str(), noted.reason.as_str()),
        ("True", "DeadLetterPublishFailed")
    );
    assert!(noted.message.contains(&dead), "{}", noted.message);

    let events: Api<Event> = test.api();
    wait::until(
        "a DeadLetterFailed Event",
        Duration::from_secs(10),
        || async {
            let list = events
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let reasons: Vec<_> = list.items.iter().filter_map(|e| e.reason.clone()).collect();
            if reasons.iter().any(|r| r == CONDITION_DEAD_LETTER_FAILED) {
                Ok(())
            } else {
                Err(format!("{reasons:?}"))
            }
        },
    )
    .await;
}
