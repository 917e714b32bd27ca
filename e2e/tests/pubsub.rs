//! The official google-cloud-pubsub crate against the emulator (Google's
//! pstest fake): admin, publish and streaming pull, the paths Drover uses.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use drover_e2e::shared;
use drover_queue::{PubSubEndpoint, subscription_path, topic_path};
use google_cloud_pubsub::model::Message;

const PROJECT: &str = "drover-e2e";
const MESSAGES: usize = 1_000;

#[tokio::test]
async fn thousand_messages_round_trip_none_lost_none_left() {
    let env = shared().await;
    let endpoint = PubSubEndpoint::emulator(env.pubsub.host_port());
    let topic = topic_path(PROJECT, "round-trip");
    let subscription = subscription_path(PROJECT, "round-trip-sub");

    let topics = endpoint.topic_admin().await.expect("topic admin");
    topics
        .create_topic()
        .set_name(&topic)
        .send()
        .await
        .expect("topic is created");
    let subscriptions = endpoint
        .subscription_admin()
        .await
        .expect("subscription admin");
    subscriptions
        .create_subscription()
        .set_name(&subscription)
        .set_topic(&topic)
        .set_ack_deadline_seconds(10)
        .send()
        .await
        .expect("subscription is created");

    let publisher = endpoint.publisher(&topic).await.expect("publisher");
    let started = Instant::now();
    let pending: Vec<_> = (0..MESSAGES)
        .map(|i| publisher.publish(Message::new().set_data(format!("message-{i}"))))
        .collect();
    let mut message_ids = HashSet::new();
    for publish in pending {
        message_ids.insert(publish.await.expect("publish is confirmed"));
    }
    assert_eq!(
        message_ids.len(),
        MESSAGES,
        "every publish got its own message id"
    );
    let published_in = started.elapsed();

    let subscriber = endpoint.subscriber().await.expect("subscriber");
    let mut stream = subscriber.subscribe(&subscription).build();
    let mut received = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.len() < MESSAGES {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(remaining, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {MESSAGES} messages arrived in 60 s",
                    received.len()
                )
            });
        let (message, handler) = next.expect("stream stays open").expect("message arrives");
        let body = String::from_utf8(message.data.to_vec()).expect("utf-8 body");
        assert!(received.insert(body.clone()), "{body} was delivered twice");
        handler.ack();
    }
    let expected: HashSet<String> = (0..MESSAGES).map(|i| format!("message-{i}")).collect();
    assert_eq!(received, expected);
    eprintln!(
        "published {MESSAGES} in {:.0} ms, received and acked them in {:.0} ms",
        published_in.as_secs_f64() * 1e3,
        started.elapsed().saturating_sub(published_in).as_secs_f64() * 1e3
    );

    // None left: past the ack deadline, an unacked message would be redelivered.
    let quiet = tokio::time::timeout(Duration::from_secs(12), stream.next()).await;
    if let Ok(Some(Ok((message, _)))) = quiet {
        panic!(
            "a message came back after all were acked: {:?}",
            message.data
        );
    }
}
