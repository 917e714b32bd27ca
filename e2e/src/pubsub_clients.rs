//! Clients of the official google-cloud-pubsub crate pointed at the local
//! emulator: plain-text gRPC and anonymous credentials, exactly what a
//! production client gets when `PUBSUB_EMULATOR_HOST` is set.

use google_cloud_auth::credentials::anonymous;
use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin, TopicAdmin};

use anyhow::Context;

/// The gRPC endpoint for an emulator `host:port`.
pub fn endpoint(host_port: &str) -> String {
    format!("http://{host_port}")
}

pub fn topic_path(project: &str, topic: &str) -> String {
    format!("projects/{project}/topics/{topic}")
}

pub fn subscription_path(project: &str, subscription: &str) -> String {
    format!("projects/{project}/subscriptions/{subscription}")
}

pub async fn topic_admin(host_port: &str) -> anyhow::Result<TopicAdmin> {
    TopicAdmin::builder()
        .with_endpoint(endpoint(host_port))
        .with_credentials(anonymous::Builder::new().build())
        .build()
        .await
        .with_context(|| format!("cannot build a Pub/Sub client for the emulator at {host_port}"))
}

pub async fn subscription_admin(host_port: &str) -> anyhow::Result<SubscriptionAdmin> {
    SubscriptionAdmin::builder()
        .with_endpoint(endpoint(host_port))
        .with_credentials(anonymous::Builder::new().build())
        .build()
        .await
        .with_context(|| format!("cannot build a Pub/Sub client for the emulator at {host_port}"))
}

pub async fn publisher(host_port: &str, topic_path: &str) -> anyhow::Result<Publisher> {
    Publisher::builder(topic_path)
        .with_endpoint(endpoint(host_port))
        .with_credentials(anonymous::Builder::new().build())
        .build()
        .await
        .with_context(|| format!("cannot build a Pub/Sub client for the emulator at {host_port}"))
}

pub async fn subscriber(host_port: &str) -> anyhow::Result<Subscriber> {
    Subscriber::builder()
        .with_endpoint(endpoint(host_port))
        .with_credentials(anonymous::Builder::new().build())
        .build()
        .await
        .with_context(|| format!("cannot build a Pub/Sub client for the emulator at {host_port}"))
}
