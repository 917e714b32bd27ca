//! Pub/Sub clients of the official crate, pointed at production or, when
//! `PUBSUB_EMULATOR_HOST` is set, at an emulator (plain text, no credentials),
//! the way Google's client libraries in other languages behave.

use std::time::Duration;

use google_cloud_auth::credentials::anonymous;
use google_cloud_pubsub::client::{
    BasePublisher, Publisher, Subscriber, SubscriptionAdmin, TopicAdmin,
};

use crate::send_guard::{GuardedRetry, GuardedThrottler, SendGuard};

/// Where Pub/Sub is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PubSubEndpoint {
    /// `host:port` of an emulator; `None` for Google Cloud with ambient credentials.
    pub emulator_host: Option<String>,
}

/// What building a client returns: the client, or why it cannot be built.
pub type BuildResult<T> = Result<T, google_cloud_gax::client_builder::Error>;

/// Applies the emulator endpoint and anonymous credentials to any client builder.
macro_rules! configure {
    ($builder:expr, $endpoint:expr) => {
        match &$endpoint.emulator_host {
            Some(host) => $builder
                .with_endpoint(format!("http://{host}"))
                .with_credentials(anonymous::Builder::new().build()),
            None => $builder,
        }
    };
}

impl PubSubEndpoint {
    /// Reads `PUBSUB_EMULATOR_HOST`; empty counts as unset.
    pub fn from_env() -> Self {
        Self {
            emulator_host: std::env::var("PUBSUB_EMULATOR_HOST")
                .ok()
                .filter(|h| !h.is_empty()),
        }
    }

    /// An emulator at `host:port`.
    pub fn emulator(host: impl Into<String>) -> Self {
        Self {
            emulator_host: Some(host.into()),
        }
    }

    /// Creates and reads topics.
    pub async fn topic_admin(&self) -> BuildResult<TopicAdmin> {
        configure!(TopicAdmin::builder(), self).build().await
    }

    /// Creates and reads subscriptions.
    pub async fn subscription_admin(&self) -> BuildResult<SubscriptionAdmin> {
        configure!(SubscriptionAdmin::builder(), self).build().await
    }

    /// Publishes to one topic (a full `projects/../topics/..` path).
    pub async fn publisher(&self, topic_path: &str) -> BuildResult<Publisher> {
        self.guarded_publisher(topic_path, SendGuard::always())
            .await
    }

    /// Publishes to one topic, each message at once and each attempt only
    /// while `guard` allows it (see [`Self::guarded_base_publisher`]).
    pub async fn guarded_publisher(
        &self,
        topic_path: &str,
        guard: SendGuard,
    ) -> BuildResult<Publisher> {
        let base = self.guarded_base_publisher(guard).await?;
        Ok(topic_publisher(&base, topic_path))
    }

    /// One connection for publishing to any number of topics (see
    /// [`topic_publisher`]), each attempt only while `guard` allows it (see
    /// [`crate::send_guard`]).
    pub async fn guarded_base_publisher(&self, guard: SendGuard) -> BuildResult<BasePublisher> {
        configure!(BasePublisher::builder(), self)
            .with_retry_policy(GuardedRetry::new(guard.clone()))
            .with_retry_throttler(GuardedThrottler(guard))
            .build()
            .await
    }

    /// Pulls from subscriptions.
    pub async fn subscriber(&self) -> BuildResult<Subscriber> {
        configure!(Subscriber::builder(), self).build().await
    }
}

/// Publishes to `topic_path` over `base`'s connection, each message at once:
/// no batching delay, in which a frozen process would hold it.
pub fn topic_publisher(base: &BasePublisher, topic_path: &str) -> Publisher {
    base.publisher(topic_path)
        .set_delay_threshold(Duration::ZERO)
        .build()
}
