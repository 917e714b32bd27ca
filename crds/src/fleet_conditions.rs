//! The condition types and reasons of a PipelineWorker's status: one closed
//! set, each spelled once, so the status, the Events and the tests agree.

use std::fmt;

/// The three conditions every fleet reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FleetCondition {
    /// The fleet can take Jobs: queue in place, no problem, pods ready.
    Ready,
    /// The topic and subscription exist and match.
    QueueReady,
    /// Something a person has to fix stops the fleet.
    Degraded,
}

impl FleetCondition {
    /// Every condition, in the order the status lists them.
    pub const ALL: [FleetCondition; 3] = [
        FleetCondition::Ready,
        FleetCondition::QueueReady,
        FleetCondition::Degraded,
    ];

    /// The condition's `type` as it appears in the status.
    pub const fn as_str(self) -> &'static str {
        match self {
            FleetCondition::Ready => "Ready",
            FleetCondition::QueueReady => "QueueReady",
            FleetCondition::Degraded => "Degraded",
        }
    }
}

impl fmt::Display for FleetCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a fleet is degraded: each names what a person has to fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DegradedReason {
    /// A Secret key the worker pods read does not exist.
    SecretNotFound,
    /// The topic is missing and `queue.create` is false.
    TopicNotFound,
    /// The subscription is missing and `queue.create` is false.
    SubscriptionNotFound,
    /// The dead-letter topic is missing and `queue.create` is false.
    DeadLetterTopicNotFound,
    /// The subscription reads another topic than the fleet's.
    SubscriptionTopicMismatch,
    /// Another PipelineWorker pulls from the same subscription, so each
    /// fleet would receive the other's Jobs.
    SubscriptionShared,
    /// The topic or subscription carries the labels of another live
    /// fleet: this one gets no workers until it names a queue of its own.
    QueueOwnedElsewhere,
    /// A worker image cannot be pulled.
    ImagePullBackOff,
    /// A worker container keeps crashing.
    CrashLoopBackOff,
    /// A worker container cannot be configured (a missing Secret or ConfigMap key).
    CreateContainerConfigError,
    /// A worker container was killed for using more memory than its limit.
    OOMKilled,
    /// The container runtime cannot create or start a worker container (a
    /// security context or a mount it refuses).
    ContainerCannotRun,
    /// A worker container did what its security context forbids: wrote to
    /// its read-only root filesystem, or opened or ran a file its non-root
    /// user may not.
    SecurityContextDenied,
}

impl DegradedReason {
    /// Every reason, for exhaustive tests and lookups.
    pub const ALL: [DegradedReason; 13] = [
        DegradedReason::SecretNotFound,
        DegradedReason::TopicNotFound,
        DegradedReason::SubscriptionNotFound,
        DegradedReason::DeadLetterTopicNotFound,
        DegradedReason::SubscriptionTopicMismatch,
        DegradedReason::SubscriptionShared,
        DegradedReason::QueueOwnedElsewhere,
        DegradedReason::ImagePullBackOff,
        DegradedReason::CrashLoopBackOff,
        DegradedReason::CreateContainerConfigError,
        DegradedReason::OOMKilled,
        DegradedReason::ContainerCannotRun,
        DegradedReason::SecurityContextDenied,
    ];

    /// The reason as a condition and an Event show it.
    pub const fn as_str(self) -> &'static str {
        match self {
            DegradedReason::SecretNotFound => "SecretNotFound",
            DegradedReason::TopicNotFound => "TopicNotFound",
            DegradedReason::SubscriptionNotFound => "SubscriptionNotFound",
            DegradedReason::DeadLetterTopicNotFound => "DeadLetterTopicNotFound",
            DegradedReason::SubscriptionTopicMismatch => "SubscriptionTopicMismatch",
            DegradedReason::SubscriptionShared => "SubscriptionShared",
            DegradedReason::QueueOwnedElsewhere => "QueueOwnedElsewhere",
            DegradedReason::ImagePullBackOff => "ImagePullBackOff",
            DegradedReason::CrashLoopBackOff => "CrashLoopBackOff",
            DegradedReason::CreateContainerConfigError => "CreateContainerConfigError",
            DegradedReason::OOMKilled => "OOMKilled",
            DegradedReason::ContainerCannotRun => "ContainerCannotRun",
            DegradedReason::SecurityContextDenied => "SecurityContextDenied",
        }
    }
}

/// Compares the spelling, so a test can say `reason == "SecretNotFound"`.
impl PartialEq<&str> for DegradedReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for DegradedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason a fleet condition carries: a problem, or one of the states
/// that need nobody's attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionReason {
    /// Topic and subscription exist (QueueReady).
    QueueInPlace,
    /// Every desired pod is ready (Ready).
    PodsReady,
    /// Fewer pods are ready than desired, with no problem found (Ready).
    PodsNotReady,
    /// No backlog and scaled to zero (Ready).
    Idle,
    /// Nothing needs attention (Degraded is False).
    AsExpected,
    /// A problem a person has to fix (any condition).
    Problem(DegradedReason),
}

impl ConditionReason {
    /// The reason as the condition shows it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionReason::QueueInPlace => "QueueInPlace",
            ConditionReason::PodsReady => "PodsReady",
            ConditionReason::PodsNotReady => "PodsNotReady",
            ConditionReason::Idle => "Idle",
            ConditionReason::AsExpected => "AsExpected",
            ConditionReason::Problem(reason) => reason.as_str(),
        }
    }
}

impl From<DegradedReason> for ConditionReason {
    fn from(reason: DegradedReason) -> Self {
        ConditionReason::Problem(reason)
    }
}

impl fmt::Display for ConditionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_degraded_reason_has_its_own_spelling() {
        let spelled: HashSet<_> = DegradedReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(spelled.len(), DegradedReason::ALL.len());
    }

    #[test]
    fn a_problem_reads_as_its_degraded_reason() {
        for reason in DegradedReason::ALL {
            assert_eq!(ConditionReason::from(reason).as_str(), reason.as_str());
        }
        assert_eq!(
            ConditionReason::Problem(DegradedReason::ImagePullBackOff).to_string(),
            "ImagePullBackOff"
        );
    }

    #[test]
    fn condition_types_are_listed_ready_first() {
        let types: Vec<_> = FleetCondition::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(types, ["Ready", "QueueReady", "Degraded"]);
    }
}
