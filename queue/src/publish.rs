//! Publishing: one Pub/Sub publisher per topic, built on first use and kept,
//! because a publisher batches and holds a connection.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::model::Message;

use crate::endpoint::PubSubEndpoint;

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

    /// Adds the attribute `key=value`.
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.push((key.into(), value.into()));
        self
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
    #[error("topic {topic} does not exist")]
    TopicNotFound { topic: String },
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
}

/// Publishers by topic, shared by every reconcile.
#[derive(Debug)]
pub struct Publishers {
    endpoint: PubSubEndpoint,
    by_topic: Mutex<HashMap<String, Publisher>>,
}

impl Publishers {
    /// An empty cache whose publishers talk to `endpoint`.
    pub fn new(endpoint: PubSubEndpoint) -> Self {
        Self {
            endpoint,
            by_topic: Mutex::default(),
        }
    }

    /// Publishes `message` to `topic` (a full path) and returns its message id.
    pub async fn publish(
        &self,
        topic: &str,
        message: OutgoingMessage,
    ) -> Result<String, PublishError> {
        let publisher = self.publisher(topic).await?;
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
        let publisher =
            self.endpoint
                .publisher(topic)
                .await
                .map_err(|source| PublishError::Client {
                    topic: topic.to_owned(),
                    source,
                })?;
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
    matches!(error, google_cloud_pubsub::error::PublishError::Rpc(e) if e.status().is_some_and(|s| s.code == Code::NotFound))
}

#[cfg(test)]
mod tests {
    use super::*;

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
