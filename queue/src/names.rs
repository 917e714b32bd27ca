//! The fully qualified Pub/Sub names of a fleet's queue.

use drover_crds::PipelineWorker;

/// The fully qualified names of a fleet's queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueNames {
    /// Where Jobs are published.
    pub topic: String,
    /// Where the fleet's workers pull from.
    pub subscription: String,
    /// Where Jobs that gave up (and foreign messages) go, when the fleet has one.
    pub dead_letter_topic: Option<String>,
}

impl QueueNames {
    /// The names `pw` asks for; a queue without a project lives in `default_project`.
    pub fn of(pw: &PipelineWorker, default_project: &str) -> Self {
        let queue = &pw.spec.queue;
        let project = queue.project.as_deref().unwrap_or(default_project);
        Self {
            topic: topic_path(project, &queue.topic),
            subscription: subscription_path(project, &queue.subscription),
            dead_letter_topic: queue
                .dead_letter_topic
                .as_deref()
                .map(|t| topic_path(project, t)),
        }
    }
}

/// `projects/<project>/topics/<topic>`.
pub fn topic_path(project: &str, topic: &str) -> String {
    format!("projects/{project}/topics/{topic}")
}

/// `projects/<project>/subscriptions/<subscription>`.
pub fn subscription_path(project: &str, subscription: &str) -> String {
    format!("projects/{project}/subscriptions/{subscription}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_use_the_queue_project_or_the_default() {
        let mut pw = PipelineWorker::new(
            "w",
            serde_json::from_value(serde_json::json!({
                "pipeline": "sleep",
                "queue": {"topic": "t", "subscription": "s", "deadLetterTopic": "dead"},
            }))
            .unwrap(),
        );
        assert_eq!(
            QueueNames::of(&pw, "fallback"),
            QueueNames {
                topic: "projects/fallback/topics/t".into(),
                subscription: "projects/fallback/subscriptions/s".into(),
                dead_letter_topic: Some("projects/fallback/topics/dead".into()),
            }
        );
        pw.spec.queue.project = Some("team-project".into());
        assert_eq!(
            QueueNames::of(&pw, "fallback").topic,
            "projects/team-project/topics/t"
        );
    }
}
