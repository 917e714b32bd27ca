//! A fleet's dead-letter subscription: where `kubectl drover dlq` reads what
//! went to the dead-letter topic (Jobs that gave up, foreign messages no
//! worker could adopt), and the short hold that lets it list messages
//! without consuming them and ack only the ones it replayed.
//!
//! A message another read just handed back may be out of sight for up to
//! [`LEASE_SECONDS`]: Pub/Sub can redeliver it to that read's stream as it
//! closes. A read that names the ids it wants waits for them.
//!
//! The subscription has the dead-letter topic's own name (topics and
//! subscriptions are separate namespaces in Pub/Sub), so a person finds it
//! without reading any configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownBehavior, ShutdownToken};

use crate::endpoint::PubSubEndpoint;

/// `projects/p/subscriptions/t` for the dead-letter topic `projects/p/topics/t`.
pub fn subscription_of(dead_letter_topic: &str) -> Option<String> {
    let (project, topic) = dead_letter_topic.split_once("/topics/")?;
    Some(format!("{project}/subscriptions/{topic}"))
}

/// Why reading the dead-letter subscription failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("cannot build a Pub/Sub subscriber: {0}")]
    Client(#[from] google_cloud_gax::client_builder::Error),
    #[error("pulling from {subscription} failed: {source}")]
    Pull {
        subscription: String,
        source: google_cloud_pubsub::Error,
    },
}

/// One message read from the dead-letter subscription.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// The message id in the dead-letter subscription.
    pub id: String,
    pub data: Vec<u8>,
    pub attributes: BTreeMap<String, String>,
    /// When it reached the dead-letter topic (seconds since the epoch).
    pub published_at: Option<i64>,
}

impl DeadLetter {
    /// The reason the operator or a worker gave when it sent it here.
    pub fn reason(&self) -> &str {
        self.attributes.get("reason").map_or("", String::as_str)
    }

    /// Their message for a person.
    pub fn message(&self) -> &str {
        self.attributes.get("message").map_or("", String::as_str)
    }

    /// The attributes a republished copy keeps: not the ones that say why
    /// it was dead-lettered.
    pub fn original_attributes(&self) -> BTreeMap<String, String> {
        self.attributes
            .iter()
            .filter(|(k, _)| {
                !matches!(k.as_str(), "reason" | "message" | "original-message-id")
                    && !k.starts_with("CloudPubSubDeadLetter")
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Messages held (neither acked nor nacked) until [`Held::finish`].
pub struct Held {
    pub letters: Vec<DeadLetter>,
    handlers: BTreeMap<String, Vec<Handler>>,
    shutdown: ShutdownToken,
    // Kept open so the client keeps extending the held messages' leases.
    stream: MessageStream,
}

/// How long a message read stays leased if it is not handed back in time
/// (the stream's ack deadline): a copy that Pub/Sub redelivers to a stream
/// as it closes is out of sight that long.
pub const LEASE_SECONDS: u64 = 10;

/// When a read is complete.
#[derive(Clone, Debug)]
pub struct Until {
    /// No new message came for this long ...
    pub quiet: Duration,
    /// ... and every one of these ids was read, or `ids_within` passed.
    pub ids: Vec<String>,
    pub ids_within: Duration,
    /// Or this many were read.
    pub max: usize,
}

/// Pulls from `subscription` until `until` holds, and holds what it read.
pub async fn hold(
    endpoint: &PubSubEndpoint,
    subscription: &str,
    until: Until,
) -> Result<Held, DeadLetterError> {
    let subscriber = endpoint.subscriber().await?;
    let mut stream = subscriber
        .subscribe(subscription)
        .set_max_lease_extension(Duration::from_secs(LEASE_SECONDS))
        .set_shutdown_behavior(ShutdownBehavior::WaitForProcessing)
        .build();
    let shutdown = stream.shutdown_token();
    let mut letters: Vec<DeadLetter> = Vec::new();
    let mut handlers: BTreeMap<String, Vec<Handler>> = BTreeMap::new();
    let started = tokio::time::Instant::now();
    while letters.len() < until.max {
        let missing = until.ids.iter().any(|id| !handlers.contains_key(id));
        let wait = if missing && started.elapsed() < until.ids_within {
            until.ids_within - started.elapsed()
        } else {
            until.quiet
        };
        let next = match tokio::time::timeout(wait, stream.next()).await {
            Err(_quiet) => break,
            Ok(None) => break,
            Ok(Some(next)) => next,
        };
        let (message, handler) = next.map_err(|source| DeadLetterError::Pull {
            subscription: subscription.to_owned(),
            source,
        })?;
        let id = message.message_id.clone();
        // A redelivery of one already held is held with it.
        if !handlers.contains_key(&id) {
            letters.push(letter(&message));
        }
        handlers.entry(id).or_default().push(handler);
    }
    Ok(Held {
        letters,
        handlers,
        shutdown,
        stream,
    })
}

fn letter(message: &Message) -> DeadLetter {
    DeadLetter {
        id: message.message_id.clone(),
        data: message.data.to_vec(),
        attributes: message
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        published_at: message.publish_time.as_ref().map(|t| t.seconds()),
    }
}

impl Held {
    /// Acks the messages of `acked` and hands every other one back, then
    /// waits until that is sent. A message handed back is redelivered at
    /// once, and a copy sent to this stream would be out of sight until its
    /// lease ran out: so the stream is closed first, and the rest handed
    /// back only once the server has let it go.
    pub async fn finish(mut self, acked: &[String]) {
        let mut handed_back = Vec::new();
        for (id, handlers) in std::mem::take(&mut self.handlers) {
            for handler in handlers {
                if acked.contains(&id) {
                    handler.ack();
                } else {
                    handed_back.push(handler);
                }
            }
        }
        let token = self.shutdown.clone();
        let mut shutdown = std::pin::pin!(token.shutdown());
        // The first poll stops the stream; the rest waits for the acks. It
        // may finish on that first poll, and a finished future must not be
        // polled again.
        let shut_down = tokio::select! {
            biased;
            () = &mut shutdown => true,
            () = std::future::ready(()) => false,
        };
        // A stopped stream closes its connection on its next read.
        let _closed = self.stream.next().await;
        tokio::time::sleep(CLOSE_SETTLE).await;
        handed_back.into_iter().for_each(Handler::nack);
        if !shut_down {
            shutdown.await;
        }
    }
}

/// Time for the server to drop a closed stream before messages are handed back.
const CLOSE_SETTLE: Duration = Duration::from_millis(300);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dead_letter_subscription_is_named_like_its_topic() {
        assert_eq!(
            subscription_of("projects/p/topics/dead").as_deref(),
            Some("projects/p/subscriptions/dead")
        );
        assert_eq!(subscription_of("dead"), None);
    }

    #[test]
    fn a_republished_copy_drops_the_dead_letter_attributes() {
        let letter = DeadLetter {
            id: "1".into(),
            data: b"{}".to_vec(),
            attributes: BTreeMap::from([
                ("reason".into(), "not_json".into()),
                ("message".into(), "why".into()),
                ("original-message-id".into(), "9".into()),
                ("CloudPubSubDeadLetterSourceSubscription".into(), "s".into()),
                ("source".into(), "billing".into()),
            ]),
            published_at: None,
        };
        assert_eq!(letter.reason(), "not_json");
        assert_eq!(
            letter.original_attributes(),
            BTreeMap::from([("source".to_owned(), "billing".to_owned())])
        );
    }
}
