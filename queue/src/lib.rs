//! The queue Drover's Jobs travel through. Today that is Google Cloud Pub/Sub
//! (or its emulator): where it is ([`endpoint`]), what a fleet's topic and
//! subscription are called ([`names`]), keeping them in place ([`admin`]) and
//! publishing to them ([`publish`]). The operator talks to it through the small
//! [`JobQueue`] trait, so a second backend needs only that; the pull side stays
//! Pub/Sub-specific in the worker.

pub mod admin;
pub mod dead_letters;
pub mod endpoint;
pub mod names;
pub mod ownership;
pub mod publish;
pub mod send_guard;

use std::future::Future;

use drover_crds::PipelineWorker;

pub use admin::{Ensured, QueueAdmin, QueueError, QueueProblem};
pub use endpoint::PubSubEndpoint;
pub use names::{QueueNames, subscription_path, topic_path};
pub use publish::{OutgoingMessage, PublishError, Publishers};
pub use send_guard::SendGuard;

/// What the operator needs from a queue backend.
pub trait JobQueue: Send + Sync {
    /// Brings the queue of `fleet` into place; `Ok(Err(problem))` is a state
    /// to report, `Err` a failure to retry.
    fn ensure(
        &self,
        fleet: &PipelineWorker,
        default_project: &str,
    ) -> impl Future<Output = Result<Result<QueueNames, QueueProblem>, QueueError>> + Send;

    /// Publishes `message` to `topic` and returns the message id.
    fn publish(
        &self,
        topic: &str,
        message: OutgoingMessage,
    ) -> impl Future<Output = Result<String, PublishError>> + Send;

    /// [`JobQueue::publish`] to a topic of `fleet`; when the topic has vanished
    /// (an emulator restart, a topic deleted by hand) it recreates the fleet's
    /// queue once and publishes again, instead of waiting for the fleet's next
    /// check. Only the topic and subscription come back: the messages they held
    /// are gone, and the watchdog republishes the Jobs that waited on them;
    /// `on_recreated` runs once the queue is back, before the second publish,
    /// so the caller can republish those Jobs at once.
    fn publish_recreating(
        &self,
        fleet: &PipelineWorker,
        default_project: &str,
        topic: &str,
        message: OutgoingMessage,
        on_recreated: impl FnOnce() + Send,
    ) -> impl Future<Output = Result<String, PublishError>> + Send {
        async move {
            match self.publish(topic, message.clone()).await {
                Err(error) if error.is_topic_not_found() => {
                    if recreated(self.ensure(fleet, default_project).await) {
                        on_recreated();
                        self.publish(topic, message).await
                    } else {
                        Err(error)
                    }
                }
                sent => sent,
            }
        }
    }
}

/// Whether an [`JobQueue::ensure`] after a vanished topic brought it back.
fn recreated(ensured: Result<Result<QueueNames, QueueProblem>, QueueError>) -> bool {
    match ensured {
        Ok(Ok(names)) => {
            tracing::warn!(event = "queue_recreated", topic = %names.topic, subscription = %names.subscription, "the fleet's queue had vanished; recreated it");
            true
        }
        Ok(Err(problem)) => {
            tracing::warn!(%problem, "the fleet's queue is missing and is not Drover's to create");
            false
        }
        Err(error) => {
            tracing::warn!(%error, "cannot recreate the fleet's queue");
            false
        }
    }
}

/// The Pub/Sub backend: admin clients and a publisher per topic.
#[derive(Debug)]
pub struct PubSubQueue {
    admin: QueueAdmin,
    publishers: Publishers,
}

impl PubSubQueue {
    /// Publishes through `endpoint`, each attempt only while `guard`
    /// allows it, and keeps queues in place with `admin`.
    pub fn new(endpoint: PubSubEndpoint, admin: QueueAdmin, guard: SendGuard) -> Self {
        Self {
            admin,
            publishers: Publishers::new(endpoint, guard),
        }
    }
}

impl JobQueue for PubSubQueue {
    fn ensure(
        &self,
        fleet: &PipelineWorker,
        default_project: &str,
    ) -> impl Future<Output = Result<Result<QueueNames, QueueProblem>, QueueError>> + Send {
        self.admin.ensure(fleet, default_project)
    }

    fn publish(
        &self,
        topic: &str,
        message: OutgoingMessage,
    ) -> impl Future<Output = Result<String, PublishError>> + Send {
        self.publishers.publish(topic, message)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// A queue in memory whose topics can vanish.
    #[derive(Default)]
    struct FakeQueue {
        topics: Mutex<BTreeSet<String>>,
        create: bool,
        published: Mutex<Vec<String>>,
    }

    impl JobQueue for FakeQueue {
        async fn ensure(
            &self,
            fleet: &PipelineWorker,
            default_project: &str,
        ) -> Result<Result<QueueNames, QueueProblem>, QueueError> {
            let names = QueueNames::of(fleet, default_project);
            if !self.create {
                return Ok(Err(QueueProblem::TopicNotFound(names.topic)));
            }
            self.topics.lock().unwrap().insert(names.topic.clone());
            Ok(Ok(names))
        }

        async fn publish(
            &self,
            topic: &str,
            message: OutgoingMessage,
        ) -> Result<String, PublishError> {
            if !self.topics.lock().unwrap().contains(topic) {
                return Err(PublishError::TopicNotFound {
                    topic: topic.to_owned(),
                });
            }
            let mut published = self.published.lock().unwrap();
            published.push(String::from_utf8_lossy(&message.data).into_owned());
            Ok(format!("m{}", published.len()))
        }
    }

    fn fleet() -> PipelineWorker {
        PipelineWorker::new(
            "w",
            serde_json::from_value(serde_json::json!({
                "pipeline": "sleep",
                "queue": {"topic": "t", "subscription": "s"},
            }))
            .unwrap(),
        )
    }

    const TOPIC: &str = "projects/p/topics/t";

    #[tokio::test]
    async fn a_vanished_topic_is_recreated_once_and_the_message_published() {
        let queue = FakeQueue {
            create: true,
            ..FakeQueue::default()
        };
        let recreated = AtomicBool::new(false);
        let noted = || recreated.store(true, Ordering::SeqCst);
        let id = queue
            .publish_recreating(
                &fleet(),
                "p",
                TOPIC,
                OutgoingMessage::new(b"job".to_vec()),
                noted,
            )
            .await
            .unwrap();
        assert_eq!(id, "m1");
        assert!(recreated.load(Ordering::SeqCst), "the caller hears of it");
        assert_eq!(*queue.published.lock().unwrap(), ["job"]);
    }

    #[tokio::test]
    async fn a_topic_that_is_not_ours_to_create_stays_an_error() {
        let queue = FakeQueue::default();
        let noted = || panic!("nothing was recreated");
        let error = queue
            .publish_recreating(
                &fleet(),
                "p",
                TOPIC,
                OutgoingMessage::new(b"job".to_vec()),
                noted,
            )
            .await
            .unwrap_err();
        assert!(error.is_topic_not_found(), "{error}");
        assert!(queue.published.lock().unwrap().is_empty());
    }
}
