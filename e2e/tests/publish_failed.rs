//! A Job that cannot be published says so on the Job within seconds (the
//! `PublishFailed` condition, with the reason and the error, and an Event),
//! its retries back off instead of hammering Pub/Sub and the apiserver, and
//! once the queue is there it is published and the condition is gone.

use std::time::Duration;

use drover_crds::job_transition::CONDITION_PUBLISH_FAILED;
use drover_crds::{Job, JobPhase};
use drover_e2e::drover::{PUBSUB_PROJECT, drover_test};
use drover_e2e::wait;
use drover_queue::{PubSubEndpoint, subscription_path, topic_path};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::Api;
use serde_json::json;

#[tokio::test]
async fn a_job_whose_topic_is_missing_shows_publish_failed_then_is_published_once_it_exists() {
    let test = drover_test("pubfail").await;
    let (topic, subscription) = (test.unique("jobs"), test.unique("jobs-sub"));
    // queue.create is false and nobody made the topic: every publish fails.
    test.apply_fleet(
        PipelineWorkerBuilder::sleep("w")
            .queue(&topic, &subscription)
            .existing_queue()
            .manual_replicas(0)
            .build(),
    )
    .await;
    let jobs: Api<Job> = test.api();
    test.create_job(
        JobBuilder::new("stuck", "w")
            .input(json!({"durationMillis": 10}))
            .build(),
    )
    .await;

    let shown = wait::until(
        "PublishFailed on the Job",
        Duration::from_secs(5),
        || async {
            let job = jobs.get("stuck").await.map_err(|e| e.to_string())?;
            let status = job.status.clone().unwrap_or_default();
            status
                .conditions
                .iter()
                .find(|c| c.type_ == CONDITION_PUBLISH_FAILED && c.status == "True")
                .map(|c| (c.reason.clone(), c.message.clone(), status.phase))
                .ok_or_else(|| format!("{:?}", status.conditions))
        },
    )
    .await;
    assert_eq!(shown.0, "TopicNotFound", "{shown:?}");
    assert!(shown.1.contains(&topic), "{shown:?}");
    assert_eq!(shown.2, JobPhase::Pending);

    let events: Api<Event> = test.api();
    wait::until(
        "a PublishFailed Event on the Job",
        Duration::from_secs(5),
        || async {
            let list = events
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .iter()
                .find(|e| {
                    e.reason.as_deref() == Some(CONDITION_PUBLISH_FAILED)
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("stuck")
                })
                .map(|_| ())
                .ok_or_else(|| {
                    format!(
                        "{:?}",
                        list.items.iter().map(|e| &e.reason).collect::<Vec<_>>()
                    )
                })
        },
    )
    .await;

    // The retries go on, backing off, and write nothing while the error stays the same.
    let before = jobs.get("stuck").await.expect("job").resource_version();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = jobs.get("stuck").await.expect("job");
    assert_eq!(
        after.resource_version(),
        before,
        "the Job was written during the retries: {:?}",
        after.status
    );

    // The queue appears; the Job goes out and the condition is cleared.
    let endpoint = PubSubEndpoint::emulator(test.env.pubsub.host_port());
    endpoint
        .topic_admin()
        .await
        .expect("client")
        .create_topic()
        .set_name(topic_path(PUBSUB_PROJECT, &topic))
        .send()
        .await
        .expect("topic created");
    endpoint
        .subscription_admin()
        .await
        .expect("client")
        .create_subscription()
        .set_name(subscription_path(PUBSUB_PROJECT, &subscription))
        .set_topic(topic_path(PUBSUB_PROJECT, &topic))
        .send()
        .await
        .expect("subscription created");
    wait::until(
        "the Job to be Queued without PublishFailed",
        Duration::from_secs(45),
        || async {
            let status = jobs
                .get("stuck")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            let failed = status
                .conditions
                .iter()
                .any(|c| c.type_ == CONDITION_PUBLISH_FAILED);
            if status.phase == JobPhase::Queued && !failed {
                Ok(())
            } else {
                Err(format!("{:?} {:?}", status.phase, status.conditions))
            }
        },
    )
    .await;
}
