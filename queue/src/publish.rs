//! Publishing: one Pub/Sub publisher per topic, built on first use and kept,
//! because a publisher batches and holds a connection.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use drover_crds::bounds::truncate;
use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::client::{BasePublisher, Publisher};
use google_cloud_pubsub::model::Message;

use tokio::sync::OnceCell;

use crate::endpoint::{PubSubEndpoint, topic_publisher};
use crate::send_guard::SendGuard;

/// Pub/Sub's own limits on a published message
/// (<https://cloud.google.com/pubsub/quotas#resource_limits>): it answers
/// INVALID_ARGUMENT to anything past them.
pub mod limits {
    /// Attributes per message.
    pub const MAX_ATTRIBUTES: usize = 100;
    /// Bytes in an attribute key.
    pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 256;
    /// Bytes in an attribute value.
    pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
    /// Bytes in a message: its data and every attribute key and value.
    pub const MAX_MESSAGE_BYTES: usize = 10_000_000;
}

/// A message to publish: its body and its attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub data: Vec<u8>,
    pub attributes: Vec<(String, String)>,
}

impl OutgoingMessage {
    /// A message with `data` as its body and no attributes.
    pub fn new(data: impl Into<Vec<u8>>) -> Self {
        Self {
            data: data.into(),
            attributes: Vec::new(),
        }
    }

    /// Adds the attribute `key=value`, cut to Pub/Sub's key and value
    /// limits; past the attribute count it is left out (and logged).
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = truncate(&key.into(), limits::MAX_ATTRIBUTE_KEY_BYTES);
        if self.attributes.len() >= limits::MAX_ATTRIBUTES {
            tracing::warn!(%key, "a message holds at most {} attributes; this one is left out", limits::MAX_ATTRIBUTES);
            return self;
        }
        let value = truncate(&value.into(), limits::MAX_ATTRIBUTE_VALUE_BYTES);
        self.attributes.push((key, value));
        self
    }

    /// The size Pub/Sub counts against its message limit.
    pub fn size(&self) -> usize {
        self.data.len()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// Why a message was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot build a Pub/Sub publisher for {topic}: {source}")]
    Client {
        topic: String,
        source: google_cloud_gax::client_builder::Error,
    },
    #[error("not sent to {topic}: this process may not publish now")]
    NotAllowed { topic: String },
    #[error("topic {topic} does not exist")]
    TopicNotFound { topic: String },
    #[error(
        "a message of {size} bytes is over Pub/Sub's limit of {} bytes",
        limits::MAX_MESSAGE_BYTES
    )]
    TooLarge { size: usize },
    #[error("cannot publish to {topic}: {source}")]
    Rpc {
        topic: String,
        source: google_cloud_pubsub::error::PublishError,
    },
}

impl PublishError {
    /// Whether the topic itself is missing (and recreating it may help).
    pub fn is_topic_not_found(&self) -> bool {
        matches!(self, PublishError::TopicNotFound { .. })
    }

    /// A CamelCase word for what refused the message, for a condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            PublishError::Client { .. } => "PublisherUnavailable",
            PublishError::NotAllowed { .. } => "NotAllowed",
            PublishError::TopicNotFound { .. } => "TopicNotFound",
            PublishError::TooLarge { .. } => "MessageTooLarge",
            PublishError::Rpc { source, .. } => match rpc_code(source) {
                Some(Code::InvalidArgument) => "InvalidArgument",
                Some(Code::PermissionDenied) => "PermissionDenied",
                Some(Code::Unavailable) => "Unavailable",
                Some(Code::DeadlineExceeded) => "DeadlineExceeded",
                _ => "PublishError",
            },
        }
    }
}

/// Publishers by topic, shared by every reconcile. All of them share one
/// connection: one per topic cost about 30 KB a fleet.
#[derive(Debug)]
pub struct Publishers {
    endpoint: PubSubEndpoint,
    guard: SendGuard,
    base: OnceCell<BasePublisher>,
    by_topic: Mutex<HashMap<String, Publisher>>,
}

impl Publishers {
    /// An empty cache whose publishers talk to `endpoint` and send each
    /// attempt only while `guard` allows it.
    pub fn new(endpoint: PubSubEndpoint, guard: SendGuard) -> Self {
        Self {
            endpoint,
            guard,
            base: OnceCell::new(),
            by_topic: Mutex::default(),
        }
    }

    /// Publishes `message` to `topic` (a full path) and returns its message id.
    pub async fn publish(
        &self,
        topic: &str,
        message: OutgoingMessage,
    ) -> Result<String, PublishError> {
        let size = message.size();
        if size > limits::MAX_MESSAGE_BYTES {
            return Err(PublishError::TooLarge { size });
        }
        let publisher = self.publisher(topic).await?;
        // Asked as late as this crate can: the library asks again before
        // each of its retries.
        if !self.guard.allows() {
            return Err(PublishError::NotAllowed {
                topic: topic.to_owned(),
            });
        }
        let message = Message::new()
            .set_data(message.data)
            .set_attributes(message.attributes);
        publisher.publish(message).await.map_err(|source| {
            let topic = topic.to_owned();
            if is_not_found(&source) {
                PublishError::TopicNotFound { topic }
            } else {
                PublishError::Rpc { topic, source }
            }
        })
    }

    async fn publisher(&self, topic: &str) -> Result<Publisher, PublishError> {
        if let Some(publisher) = self.lock().get(topic) {
            return Ok(publisher.clone());
        }
        let base = self
            .base
            .get_or_try_init(|| self.endpoint.guarded_base_publisher(self.guard.clone()))
            .await
            .map_err(|source| PublishError::Client {
                topic: topic.to_owned(),
                source,
            })?;
        let publisher = topic_publisher(base, topic);
        self.lock().insert(topic.to_owned(), publisher.clone());
        Ok(publisher)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Publisher>> {
        // A panic elsewhere cannot leave a map of clients half-written.
        self.by_topic
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn is_not_found(error: &google_cloud_pubsub::error::PublishError) -> bool {
    rpc_code(error) == Some(Code::NotFound)
}

fn rpc_code(error: &google_cloud_pubsub::error::PublishError) -> Option<Code> {
    match error {
        google_cloud_pubsub::error::PublishError::Rpc(e) => e.status().map(|s| s.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_cut_to_pubsub_limits() {
        let mut message =
            OutgoingMessage::new(b"{}".to_vec()).attribute("k".repeat(300), "v".repeat(5000));
        let (key, value) = &message.attributes[0];
        assert!(key.len() <= limits::MAX_ATTRIBUTE_KEY_BYTES);
        assert!(value.len() <= limits::MAX_ATTRIBUTE_VALUE_BYTES);
        for n in 0..200 {
            message = message.attribute(format!("a{n}"), "x");
        }
        assert_eq!(message.attributes.len(), limits::MAX_ATTRIBUTES);
    }

    #[test]
    fn attributes_keep_their_order() {
        let message = OutgoingMessage::new(b"{}".to_vec())
            .attribute("namespace", "ns")
            .attribute("attempt", 2.to_string());
        assert_eq!(message.data, b"{}");
        assert_eq!(
            message.attributes,
            [
                ("namespace".to_owned(), "ns".to_owned()),
                ("attempt".to_owned(), "2".to_owned())
            ]
        );
    }
}
