//! The pull loop: a streaming pull from the fleet's subscription with flow
//! control bounded by `concurrency` (the client extends each message's lease
//! while it is held), one task per message, and a drain on shutdown.
//!
//! The bound is enforced here, with a semaphore taken before the next message
//! is read: `max_outstanding_messages` is only a request to the server, and
//! the emulator ignores it.

use std::sync::Arc;
use std::time::Duration;

use drover_crds::message::{ATTRIBUTE_CALLBACK_URL, ATTRIBUTE_RESUMES};
use drover_crds::{Job, JobMessage, JobPhase, JobTransition, PipelineWorker};
use drover_queue::{PubSubEndpoint, QueueNames};
use drover_runtime::job_status;
use futures::FutureExt;
use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::ShutdownBehavior;
use google_cloud_pubsub::subscriber::handler::Handler;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::claims::HeldClaim;
use crate::fleet_config::FleetConfig;
use crate::foreign;
use crate::job_run::{self, Answer, Worker};

/// Where the loop pulls from and how much it may hold.
pub struct PullSettings {
    pub endpoint: PubSubEndpoint,
    pub default_project: String,
    /// How long in-flight Jobs may run on after SIGTERM before they are
    /// handed back.
    pub drain_grace: Duration,
}

/// Pulls and runs Jobs until `stop` turns true, then drains.
pub async fn run(
    worker: Arc<Worker>,
    mut fleet: FleetConfig,
    settings: PullSettings,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let pw = loop {
        if let Some(pw) = fleet.borrow_and_update().clone() {
            break pw;
        }
        tokio::select! {
            changed = fleet.changed() => changed?,
            _ = stop.changed() => return Ok(()),
        }
    };
    let names = QueueNames::of(&pw, &settings.default_project);
    let dead_letter = match &names.dead_letter_topic {
        Some(topic) => Some(settings.endpoint.publisher(topic).await?),
        None => None,
    };
    let subscriber = settings.endpoint.subscriber().await?;
    let max_lease = Duration::from_secs(pw.spec.timeouts.job_seconds.max(1).unsigned_abs())
        + Duration::from_secs(60);
    let mut stream = subscriber
        .subscribe(&names.subscription)
        .set_max_outstanding_messages(i64::from(pw.spec.concurrency.max(1)))
        .set_max_lease(max_lease)
        .set_shutdown_behavior(ShutdownBehavior::WaitForProcessing)
        .build();
    let shutdown = stream.shutdown_token();
    tracing::info!(subscription = %names.subscription, concurrency = pw.spec.concurrency, "pulling");

    let slots = Arc::new(Semaphore::new(
        usize::try_from(pw.spec.concurrency.max(1)).unwrap_or(1),
    ));
    let mut tasks = JoinSet::new();
    loop {
        let next_in_a_free_slot = async {
            let slot = slots.clone().acquire_owned().await;
            (slot, stream.next().await)
        };
        tokio::select! {
            (slot, next) = next_in_a_free_slot => match next {
                Some(Ok((message, handler))) => {
                    let slot = slot.expect("the semaphore is never closed");
                    let fleet_now = fleet.borrow().clone().unwrap_or_else(|| pw.clone());
                    tasks.spawn(answer_one(worker.clone(), fleet_now, message, handler, dead_letter.clone(), slot));
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, "streaming pull failed; the client retries");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => break,
            },
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(error) = joined {
                    tracing::error!(%error, "a message task panicked; its message will be redelivered");
                }
            }
            _ = stop.changed() => break,
        }
    }

    tracing::info!(in_flight = tasks.len(), grace = ?settings.drain_grace, "stopped pulling; draining");
    let drained = tokio::time::timeout(settings.drain_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !drained {
        // Aborting drops each task's hold on its claim: take the list first,
        // and hand the Jobs back only once their tasks no longer write.
        let unfinished = worker.claims.all();
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        release(&worker, unfinished).await;
    }
    // Sends the outstanding acks and nacks before the process exits.
    shutdown.shutdown().await;
    Ok(())
}

async fn answer_one(
    worker: Arc<Worker>,
    fleet: Arc<PipelineWorker>,
    message: Message,
    handler: Handler,
    dead_letter: Option<Publisher>,
    _slot: OwnedSemaphorePermit,
) {
    let answer = match JobMessage::decode(&message.data) {
        // A panic in one Job must not take the worker down; the message is
        // handed back.
        Ok(job) => {
            log_received(&message, &job);
            let hints = job_run::Hints {
                callback_url: message.attributes.get(ATTRIBUTE_CALLBACK_URL).cloned(),
                resumes: message.attributes.get(ATTRIBUTE_RESUMES).cloned(),
            };
            std::panic::AssertUnwindSafe(job_run::handle(&worker, &fleet, job, hints))
                .catch_unwind()
                .await
                .unwrap_or(Answer::Nack)
        }
        Err(error) => {
            foreign::answer(
                &worker,
                &fleet,
                &message,
                dead_letter.as_ref(),
                &error.to_string(),
            )
            .await
        }
    };
    match answer {
        Answer::Ack => handler.ack(),
        Answer::Nack => handler.nack(),
    }
}

/// Which message arrived, when Pub/Sub accepted it and which operator
/// replica sent it: what tells a duplicate's story.
fn log_received(message: &Message, job: &JobMessage) {
    let published_at = message
        .publish_time
        .and_then(|t| Timestamp::new(t.seconds(), t.nanos()).ok())
        .map(|t| t.to_string())
        .unwrap_or_default();
    let publisher = message.attributes.get("publisher").map(String::as_str);
    tracing::debug!(
        event = "received",
        job = %job.name,
        namespace = %job.namespace,
        attempt = job.attempt,
        message_id = %message.message_id,
        %published_at,
        publisher = publisher.unwrap_or(""),
        "message received"
    );
}

/// Hands Jobs that did not finish within the grace back to the queue, so
/// another worker takes them at once instead of after the claim expires.
async fn release(worker: &Worker, unfinished: Vec<HeldClaim>) {
    for held in unfinished {
        let api: Api<Job> = Api::namespaced(worker.client.clone(), &held.namespace);
        let Ok(Some(job)) = api.get_opt(&held.name).await else {
            continue;
        };
        if !job_run::still_held(&job, &held) {
            continue;
        }
        let version = job.metadata.resource_version.clone().unwrap_or_default();
        let released_before = job.status.as_ref().map_or(0, |s| s.releases);
        let released = match JobTransition::release(
            JobPhase::Running,
            released_before,
            Timestamp::now(),
        ) {
            Ok(released) => released,
            Err(refused) => {
                tracing::warn!(job = %held.name, %refused, "cannot hand the Job back; its claim will expire");
                continue;
            }
        };
        match job_status::write(&api, &held.name, &version, &released).await {
            Ok(_) => {
                tracing::info!(event = "released", job = %held.name, attempt = held.attempt, "handed back on shutdown")
            }
            Err(error) => {
                tracing::warn!(job = %held.name, %error, "cannot hand the Job back; its claim will expire")
            }
        }
    }
}
