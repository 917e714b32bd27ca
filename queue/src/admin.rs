//! Keeps a PipelineWorker's Pub/Sub topic, subscription and dead-letter topic
//! in place (`queue.create: true`) or checks that they exist (`false`).
//!
//! The operator owns retries and dead-lettering of Jobs (attempts are counted
//! on the Job, not in deliveries). The subscription's own dead-letter policy
//! (set when Drover creates it and the fleet has a dead-letter topic) is
//! only the backstop for messages no worker can ever handle (a Job in a
//! namespace the worker cannot read, a foreign message that cannot be
//! adopted): after [`MAX_DELIVERY_ATTEMPTS`] deliveries Pub/Sub moves them to
//! the dead-letter topic instead of redelivering them forever. A worker's
//! brief deferrals stay far below that bound, and a Job whose message went
//! there is still republished by the Queued watchdog.

use std::time::Duration;

use drover_crds::PipelineWorker;
use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::client::{SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::{DeadLetterPolicy, RetryPolicy};

use crate::endpoint::PubSubEndpoint;
use crate::names::QueueNames;
use crate::ownership::{self, Claim, Owner};

/// Pub/Sub's own limit on the subscription retry back-off.
const MAX_PUBSUB_BACKOFF: Duration = Duration::from_secs(600);

/// Deliveries of one message before Pub/Sub dead-letters it (Pub/Sub
/// allows 5 to 100).
pub const MAX_DELIVERY_ATTEMPTS: i32 = 20;

/// The subscription's dead-letter policy: only for a fleet with a
/// dead-letter topic.
pub fn dead_letter_policy(names: &QueueNames) -> Option<DeadLetterPolicy> {
    let topic = names.dead_letter_topic.as_ref()?;
    Some(
        DeadLetterPolicy::new()
            .set_dead_letter_topic(topic.clone())
            .set_max_delivery_attempts(MAX_DELIVERY_ATTEMPTS),
    )
}

/// Something missing that a person has to create (or let the operator create).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueProblem {
    #[error("topic {0} does not exist (queue.create is false)")]
    TopicNotFound(String),
    #[error("subscription {0} does not exist (queue.create is false)")]
    SubscriptionNotFound(String),
    #[error("dead-letter topic {0} does not exist (queue.create is false)")]
    DeadLetterTopicNotFound(String),
    #[error(
        "{resource} belongs to {owner}: a fleet never takes another's queue; name a topic and subscription of your own"
    )]
    OwnedElsewhere { resource: String, owner: String },
    #[error("subscription {subscription} reads topic {actual}, not {expected}")]
    SubscriptionTopicMismatch {
        subscription: String,
        expected: String,
        actual: String,
    },
}

impl QueueProblem {
    /// The condition reason a person sees.
    pub fn reason(&self) -> drover_crds::fleet_conditions::DegradedReason {
        use drover_crds::fleet_conditions::DegradedReason;
        match self {
            QueueProblem::TopicNotFound(_) => DegradedReason::TopicNotFound,
            QueueProblem::SubscriptionNotFound(_) => DegradedReason::SubscriptionNotFound,
            QueueProblem::DeadLetterTopicNotFound(_) => DegradedReason::DeadLetterTopicNotFound,
            QueueProblem::SubscriptionTopicMismatch { .. } => {
                DegradedReason::SubscriptionTopicMismatch
            }
            QueueProblem::OwnedElsewhere { .. } => DegradedReason::QueueOwnedElsewhere,
        }
    }
}

/// Pub/Sub itself failed (unreachable, permission denied, ...): retried with back-off.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot build a Pub/Sub admin client: {0}")]
    Client(#[from] google_cloud_gax::client_builder::Error),
    #[error("Pub/Sub {action} {name} failed: {source}")]
    Rpc {
        action: &'static str,
        name: String,
        source: google_cloud_pubsub::Error,
    },
}

/// Admin clients, built once and shared by every reconcile.
#[derive(Clone, Debug)]
pub struct QueueAdmin {
    topics: TopicAdmin,
    subscriptions: SubscriptionAdmin,
}

impl QueueAdmin {
    /// Builds both admin clients for `endpoint`.
    pub async fn connect(endpoint: &PubSubEndpoint) -> Result<Self, QueueError> {
        Ok(Self {
            topics: endpoint.topic_admin().await?,
            subscriptions: endpoint.subscription_admin().await?,
        })
    }

    /// Brings the queue of `pw` into place; `Ok(Err(problem))` is a state to
    /// report, `Err` a failure to retry. A queue labelled for another fleet
    /// is always refused (see [`QueueAdmin::ensure_owned`]).
    pub async fn ensure(
        &self,
        pw: &PipelineWorker,
        default_project: &str,
    ) -> Result<Result<QueueNames, QueueProblem>, QueueError> {
        let ensured = self.ensure_owned(pw, default_project, &|_| true).await?;
        Ok(ensured.map(|ensured| ensured.names))
    }

    /// As [`QueueAdmin::ensure`], and what the operator creates carries
    /// labels naming `pw`; a topic or subscription labelled for another
    /// owner that `is_live` says exists is refused (`OwnedElsewhere`), one
    /// unlabelled or left by a gone owner is labelled for `pw` when
    /// `queue.create` is true.
    pub async fn ensure_owned(
        &self,
        pw: &PipelineWorker,
        default_project: &str,
        is_live: &(dyn Fn(&Owner) -> bool + Sync),
    ) -> Result<Result<Ensured, QueueProblem>, QueueError> {
        let names = QueueNames::of(pw, default_project);
        let create = pw.spec.queue.create;
        let me = Owner::of(pw);
        let owner = me.as_ref().map(|me| (me, is_live));

        match self
            .ensure_topic(&names.topic, create, owner, Judge::Ownership)
            .await?
        {
            TopicState::Missing => return Ok(Err(QueueProblem::TopicNotFound(names.topic))),
            TopicState::OwnedBy(other) => {
                return Ok(Err(QueueProblem::OwnedElsewhere {
                    resource: format!("topic {}", names.topic),
                    owner: other.to_string(),
                }));
            }
            TopicState::Ready => {}
        }
        if let Some(dead_letter) = &names.dead_letter_topic {
            // Fleets may share a dead-letter topic: labelled when made, never judged.
            if self
                .ensure_topic(dead_letter, create, owner, Judge::LabelWhenMade)
                .await?
                == TopicState::Missing
            {
                return Ok(Err(QueueProblem::DeadLetterTopicNotFound(
                    dead_letter.clone(),
                )));
            }
            if create {
                self.ensure_dead_letter_subscription(dead_letter).await?;
            }
        }
        Ok(self
            .ensure_subscription(pw, &names, create, owner)
            .await?
            .map(|created_subscription| Ensured {
                names,
                created_subscription,
            }))
    }

    async fn ensure_topic(
        &self,
        topic: &str,
        create: bool,
        owner: Option<OwnerCheck<'_>>,
        judge: Judge,
    ) -> Result<TopicState, QueueError> {
        match self.topics.get_topic().set_topic(topic).send().await {
            Ok(existing) => {
                let Some((me, is_live)) = owner.filter(|_| judge == Judge::Ownership) else {
                    return Ok(TopicState::Ready);
                };
                return match ownership::judge(&existing.labels, me, is_live) {
                    Claim::Ours => Ok(TopicState::Ready),
                    Claim::Elsewhere(other) => Ok(TopicState::OwnedBy(other)),
                    Claim::Free if !create => Ok(TopicState::Ready),
                    Claim::Free => {
                        let labelled = existing.set_labels(me.labels());
                        self.topics
                            .update_topic()
                            .set_topic(labelled)
                            .set_update_mask(labels_mask())
                            .send()
                            .await
                            .map_err(|source| rpc("label topic", topic, source))?;
                        Ok(TopicState::Ready)
                    }
                };
            }
            Err(e) if is(&e, Code::NotFound) => {}
            Err(source) => return Err(rpc("get topic", topic, source)),
        }
        if !create {
            return Ok(TopicState::Missing);
        }
        let mut request = self.topics.create_topic().set_name(topic);
        if let Some((me, _)) = owner {
            request = request.set_labels(me.labels());
        }
        match request.send().await {
            Ok(_) => Ok(TopicState::Ready),
            // Another operator replica or a person may have been quicker:
            // judge what is there now.
            Err(e) if is(&e, Code::AlreadyExists) => {
                Box::pin(self.ensure_topic(topic, false, owner, judge)).await
            }
            Err(source) => Err(rpc("create topic", topic, source)),
        }
    }

    /// The dead-letter topic's own subscription, which `kubectl drover dlq`
    /// reads; without one, Pub/Sub keeps nothing sent to that topic.
    async fn ensure_dead_letter_subscription(&self, topic: &str) -> Result<(), QueueError> {
        let Some(name) = crate::dead_letters::subscription_of(topic) else {
            return Ok(());
        };
        let created = self
            .subscriptions
            .create_subscription()
            .set_name(&name)
            .set_topic(topic)
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if is(&e, Code::AlreadyExists) => Ok(()),
            Err(source) => Err(rpc("create subscription", &name, source)),
        }
    }

    async fn ensure_subscription(
        &self,
        pw: &PipelineWorker,
        names: &QueueNames,
        create: bool,
        owner: Option<OwnerCheck<'_>>,
    ) -> Result<Result<bool, QueueProblem>, QueueError> {
        let name = &names.subscription;
        match self
            .subscriptions
            .get_subscription()
            .set_subscription(name)
            .send()
            .await
        {
            Ok(existing) => {
                if let Some((me, is_live)) = owner {
                    match ownership::judge(&existing.labels, me, is_live) {
                        Claim::Elsewhere(other) => {
                            return Ok(Err(QueueProblem::OwnedElsewhere {
                                resource: format!("subscription {name}"),
                                owner: other.to_string(),
                            }));
                        }
                        Claim::Free if create && existing.topic == names.topic => {
                            let labelled = existing.clone().set_labels(me.labels());
                            self.subscriptions
                                .update_subscription()
                                .set_subscription(labelled)
                                .set_update_mask(labels_mask())
                                .send()
                                .await
                                .map_err(|source| rpc("label subscription", name, source))?;
                        }
                        Claim::Free | Claim::Ours => {}
                    }
                }
                if existing.topic != names.topic {
                    return Ok(Err(QueueProblem::SubscriptionTopicMismatch {
                        subscription: name.clone(),
                        expected: names.topic.clone(),
                        actual: existing.topic,
                    }));
                }
                return Ok(Ok(false));
            }
            Err(e) if is(&e, Code::NotFound) => {}
            Err(source) => return Err(rpc("get subscription", name, source)),
        }
        if !create {
            return Ok(Err(QueueProblem::SubscriptionNotFound(name.clone())));
        }
        let retry = &pw.spec.retry;
        let backoff =
            |secs: i64| Duration::from_secs(secs.max(0).unsigned_abs()).min(MAX_PUBSUB_BACKOFF);
        let retry_policy = RetryPolicy::new()
            .set_minimum_backoff(wkt_duration(backoff(retry.initial_backoff_seconds)))
            .set_maximum_backoff(wkt_duration(backoff(retry.max_backoff_seconds)));
        let mut request = self
            .subscriptions
            .create_subscription()
            .set_name(name)
            .set_topic(&names.topic)
            .set_ack_deadline_seconds(pw.spec.queue.ack_deadline_seconds)
            .set_retry_policy(retry_policy);
        if let Some(policy) = dead_letter_policy(names) {
            request = request.set_dead_letter_policy(policy);
        }
        if let Some((me, _)) = owner {
            request = request.set_labels(me.labels());
        }
        match request.send().await {
            Ok(_) => Ok(Ok(true)),
            // Made meanwhile, perhaps by another fleet: judge what is there.
            Err(e) if is(&e, Code::AlreadyExists) => {
                Box::pin(self.ensure_subscription(pw, names, false, owner)).await
            }
            Err(source) => Err(rpc("create subscription", name, source)),
        }
    }
}

/// A fleet's queue in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensured {
    pub names: QueueNames,
    /// The subscription did not exist and was made now: no message published
    /// before this moment will ever be delivered through it.
    pub created_subscription: bool,
}

/// Whose queue this is, and how to tell whether another owner still exists.
type OwnerCheck<'a> = (&'a Owner, &'a (dyn Fn(&Owner) -> bool + Sync));

/// Whether an existing topic's owner labels are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judge {
    /// The fleet's own topic: refused when another fleet owns it.
    Ownership,
    /// A dead-letter topic, which fleets may share: only labelled when made.
    LabelWhenMade,
}

/// What a topic check found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TopicState {
    Ready,
    Missing,
    OwnedBy(Owner),
}

fn labels_mask() -> google_cloud_wkt::FieldMask {
    google_cloud_wkt::FieldMask::default().set_paths(["labels"])
}

fn wkt_duration(d: Duration) -> google_cloud_wkt::Duration {
    google_cloud_wkt::Duration::clamp(i64::try_from(d.as_secs()).unwrap_or(i64::MAX), 0)
}

fn is(error: &google_cloud_pubsub::Error, code: Code) -> bool {
    error.status().is_some_and(|s| s.code == code)
}

fn rpc(action: &'static str, name: &str, source: google_cloud_pubsub::Error) -> QueueError {
    QueueError::Rpc {
        action,
        name: name.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_with_a_dead_letter_topic_gets_a_bounded_delivery_policy() {
        let mut names = QueueNames {
            topic: "projects/p/topics/t".into(),
            subscription: "projects/p/subscriptions/s".into(),
            dead_letter_topic: Some("projects/p/topics/dead".into()),
        };
        let policy = dead_letter_policy(&names).expect("a policy");
        assert_eq!(policy.dead_letter_topic, "projects/p/topics/dead");
        assert!((5..=100).contains(&policy.max_delivery_attempts));
        names.dead_letter_topic = None;
        assert_eq!(dead_letter_policy(&names), None);
    }

    #[test]
    fn problems_have_condition_reasons() {
        assert_eq!(
            QueueProblem::TopicNotFound("t".into()).reason(),
            "TopicNotFound"
        );
        assert_eq!(
            QueueProblem::SubscriptionNotFound("s".into()).to_string(),
            "subscription s does not exist (queue.create is false)"
        );
    }
}
