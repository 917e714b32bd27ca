//! Messages that name no Job. A JSON object is adopted as the input of a new
//! Job on this fleet; anything else, and an object the apiserver refuses as
//! a Job, goes to the dead-letter topic (or is dropped with a log line when
//! the fleet has none). An adoption that fails for a reason that may pass
//! (a quota, an apiserver away) hands the message back. Whatever stops a
//! message is a Warning Event on the fleet, so it shows in `kubectl describe`.

use drover_crds::{Job, PipelineWorker};
use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::model::Message;
use kube::Resource;
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType};
use serde_json::{Value, json};

use crate::job_run::{Answer, Worker};

/// Answers a message that is not a Job message; `why` says why it is not.
pub async fn answer(
    worker: &Worker,
    fleet: &PipelineWorker,
    message: &Message,
    dead_letter: Option<&Publisher>,
    why: &str,
) -> Answer {
    let Some(job) = adoptable(fleet, message) else {
        return dead_letter_or_drop(worker, message, dead_letter, Unusable::NotJson, why).await;
    };
    let namespace = fleet.metadata.namespace.clone().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(worker.client.clone(), &namespace);
    match jobs.create(&PostParams::default(), &job).await {
        Ok(created) => {
            tracing::info!(event = "adopted", message_id = %message.message_id, job = ?created.metadata.name, "made a Job from a foreign message");
            worker.stats.foreign("adopted", "not_a_job_message");
            Answer::Ack
        }
        Err(error) if refused_for_good(&error) => {
            let note = format!(
                "message {}: the apiserver refused a Job made from it ({error}); it is not retried",
                message.message_id
            );
            warn_on_fleet(worker, fleet, "AdoptionRefused", note).await;
            let why = error.to_string();
            dead_letter_or_drop(worker, message, dead_letter, Unusable::Refused, &why).await
        }
        Err(error) => {
            tracing::warn!(message_id = %message.message_id, %error, "cannot adopt a foreign message; handing it back");
            let note = format!(
                "message {}: cannot make a Job from it yet ({error}); it is handed back and tried again",
                message.message_id
            );
            warn_on_fleet(worker, fleet, "AdoptionFailed", note).await;
            Answer::Nack
        }
    }
}

/// The Job a JSON object becomes, on this fleet.
fn adoptable(fleet: &PipelineWorker, message: &Message) -> Option<Job> {
    let payload @ Value::Object(_) = serde_json::from_slice::<Value>(&message.data).ok()? else {
        return None;
    };
    serde_json::from_value(json!({
        "apiVersion": "drover.dev/v1alpha1", "kind": "Job",
        "metadata": {
            "generateName": "adopted-",
            "annotations": {"drover.dev/adopted-message-id": message.message_id},
        },
        "spec": {"worker": fleet.metadata.name, "input": payload},
    }))
    .ok()
}

/// A request the apiserver found invalid: the same message will never pass.
fn refused_for_good(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if matches!(status.code, 400 | 422))
}

#[derive(Clone, Copy)]
enum Unusable {
    NotJson,
    Refused,
}

impl Unusable {
    fn reason(self) -> &'static str {
        match self {
            Unusable::NotJson => "NotAJobMessage",
            Unusable::Refused => "AdoptionRefused",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Unusable::NotJson => "not_json",
            Unusable::Refused => "adoption_refused",
        }
    }
}

/// Acks a message nothing can use, after forwarding it to the dead-letter
/// topic when there is one; a failed forward hands it back instead.
async fn dead_letter_or_drop(
    worker: &Worker,
    message: &Message,
    dead_letter: Option<&Publisher>,
    unusable: Unusable,
    why: &str,
) -> Answer {
    let reason = unusable.reason();
    match dead_letter {
        Some(publisher) => {
            let forwarded = Message::new()
                .set_data(message.data.clone())
                .set_attributes([
                    ("reason", reason.to_owned()),
                    // Pub/Sub refuses an attribute value over 1,024 bytes.
                    ("message", drover_crds::bounds::message(why)),
                    ("original-message-id", message.message_id.clone()),
                ]);
            if let Err(error) = publisher.publish(forwarded).await {
                tracing::warn!(message_id = %message.message_id, %error, "cannot dead-letter a foreign message; handing it back");
                return Answer::Nack;
            }
            tracing::warn!(event = "dead_lettered", message_id = %message.message_id, reason, why, "foreign message sent to the dead-letter topic");
            worker.stats.foreign("dead_lettered", unusable.label());
        }
        None => {
            tracing::warn!(event = "dropped", message_id = %message.message_id, reason, why, "foreign message dropped: the fleet has no dead-letter topic");
            worker.stats.foreign("dropped", unusable.label());
        }
    }
    Answer::Ack
}

async fn warn_on_fleet(worker: &Worker, fleet: &PipelineWorker, reason: &str, note: String) {
    let event = Event {
        type_: EventType::Warning,
        reason: reason.to_owned(),
        note: Some(drover_crds::bounds::message(&note)),
        action: "Adopt".into(),
        secondary: None,
    };
    if let Err(error) = worker
        .recorder
        .publish(&event, &fleet.object_ref(&()))
        .await
    {
        tracing::debug!(%error, "cannot record an event on the fleet");
    }
}
