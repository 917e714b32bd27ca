//! The operator's queue management against the Pub/Sub emulator: with
//! `create: true` it makes the topic and subscription; with `false` it names
//! exactly what is missing.

use drover_crds::PipelineWorker;
use drover_e2e::shared;
use drover_queue::PubSubEndpoint;
use drover_queue::{QueueAdmin, QueueProblem};
use drover_testkit::PipelineWorkerBuilder;

const PROJECT: &str = "drover-queue";

fn fleet(topic: &str, subscription: &str, create: bool) -> PipelineWorker {
    let fleet = PipelineWorkerBuilder::sleep("fleet")
        .queue(topic, subscription)
        .ack_deadline_seconds(42)
        .dead_letter_topic(&format!("{topic}-dead"));
    if create {
        fleet
    } else {
        fleet.existing_queue()
    }
    .build()
}

#[tokio::test]
async fn create_true_makes_topic_subscription_and_dead_letter_topic() {
    let env = shared().await;
    let endpoint = PubSubEndpoint::emulator(env.pubsub.host_port());
    let admin = QueueAdmin::connect(&endpoint).await.expect("admin clients");
    let pw = fleet("made-topic", "made-sub", true);

    let names = admin
        .ensure(&pw, PROJECT)
        .await
        .expect("Pub/Sub answers")
        .expect("queue in place");
    let sub = endpoint
        .subscription_admin()
        .await
        .expect("client")
        .get_subscription()
        .set_subscription(&names.subscription)
        .send()
        .await
        .expect("subscription exists");
    assert_eq!(sub.topic, "projects/drover-queue/topics/made-topic");
    assert_eq!(sub.ack_deadline_seconds, 42);
    // Messages no worker can handle are dead-lettered after a bounded
    // number of deliveries (pstest honours the policy as Pub/Sub does).
    let policy = sub
        .dead_letter_policy
        .expect("a fleet with a dead-letter topic gets a dead-letter policy");
    assert_eq!(
        policy.dead_letter_topic,
        "projects/drover-queue/topics/made-topic-dead"
    );
    assert_eq!(
        policy.max_delivery_attempts,
        drover_queue::admin::MAX_DELIVERY_ATTEMPTS
    );
    let topics = endpoint.topic_admin().await.expect("client");
    topics
        .get_topic()
        .set_topic("projects/drover-queue/topics/made-topic-dead")
        .send()
        .await
        .expect("dead-letter topic exists");

    // A second reconcile finds everything in place and changes nothing.
    let again = admin.ensure(&pw, PROJECT).await.expect("Pub/Sub answers");
    assert_eq!(again, Ok(names));
}

#[tokio::test]
async fn create_false_names_what_is_missing_until_it_exists() {
    let env = shared().await;
    let endpoint = PubSubEndpoint::emulator(env.pubsub.host_port());
    let admin = QueueAdmin::connect(&endpoint).await.expect("admin clients");
    let pw = fleet("byo-topic", "byo-sub", false);
    let topic = "projects/drover-queue/topics/byo-topic";

    let state = admin.ensure(&pw, PROJECT).await.expect("Pub/Sub answers");
    assert_eq!(state, Err(QueueProblem::TopicNotFound(topic.into())));

    let topics = endpoint.topic_admin().await.expect("client");
    topics
        .create_topic()
        .set_name(topic)
        .send()
        .await
        .expect("topic");
    let state = admin.ensure(&pw, PROJECT).await.expect("Pub/Sub answers");
    assert_eq!(
        state,
        Err(QueueProblem::DeadLetterTopicNotFound(format!(
            "{topic}-dead"
        )))
    );

    topics
        .create_topic()
        .set_name(format!("{topic}-dead"))
        .send()
        .await
        .expect("topic");
    let state = admin.ensure(&pw, PROJECT).await.expect("Pub/Sub answers");
    let problem = state.expect_err("subscription still missing");
    assert_eq!(problem.reason(), "SubscriptionNotFound");
    assert_eq!(
        problem.to_string(),
        "subscription projects/drover-queue/subscriptions/byo-sub does not exist (queue.create is false)"
    );

    let subscriptions = endpoint.subscription_admin().await.expect("client");
    subscriptions
        .create_subscription()
        .set_name("projects/drover-queue/subscriptions/byo-sub")
        .set_topic(topic)
        .send()
        .await
        .expect("subscription");
    assert!(
        admin
            .ensure(&pw, PROJECT)
            .await
            .expect("Pub/Sub answers")
            .is_ok()
    );
}
