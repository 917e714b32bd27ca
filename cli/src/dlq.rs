//! `dlq list` and `dlq replay`: the fleet's dead-letter subscription. A
//! dead letter that names a Job of this fleet is replayed by retrying that
//! Job; any other (a foreign message no worker could adopt) is published
//! again to the fleet's topic, where a worker adopts it. Only what was
//! replayed is acked; the rest goes back to the subscription.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use drover_crds::{Job, JobMessage, JobPhase, PipelineWorker};
use drover_queue::dead_letters::{self, DeadLetter};
use drover_queue::{PubSubEndpoint, QueueNames};
use google_cloud_pubsub::model::Message;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};

use crate::args::{DlqArgs, DlqOutput, ReplayArgs};
use crate::cluster::Target;
use crate::commands::retry_job;
use crate::render;

/// The most messages one read holds.
const MAX_READ: usize = 1000;

/// What a dead letter is, for listing and replaying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// It names Job `name` (uid `uid`) in this namespace.
    Job {
        name: String,
        uid: String,
        attempt: i32,
    },
    /// Anything else: replayed by publishing it to the fleet's topic again.
    Foreign,
}

/// Sorts a dead letter of `namespace`.
pub fn kind(letter: &DeadLetter, namespace: &str) -> Kind {
    match JobMessage::decode(&letter.data) {
        Ok(message) if message.namespace == namespace => Kind::Job {
            name: message.name,
            uid: message.uid,
            attempt: message.attempt,
        },
        _ => Kind::Foreign,
    }
}

/// The row of `dlq list`.
pub fn row(letter: &DeadLetter, namespace: &str, now: Timestamp) -> Vec<String> {
    let what = match kind(letter, namespace) {
        Kind::Job { name, attempt, .. } => format!("job {name} (attempt {attempt})"),
        Kind::Foreign => {
            let text = String::from_utf8_lossy(&letter.data);
            let short: String = text.chars().take(40).collect();
            format!("foreign {short:?}")
        }
    };
    let age = letter
        .published_at
        .and_then(|s| Timestamp::from_second(s).ok())
        .map(|t| render::age(t, now))
        .unwrap_or_default();
    vec![
        letter.id.clone(),
        what,
        letter.reason().to_owned(),
        age,
        letter.message().to_owned(),
    ]
}

struct Queue {
    endpoint: PubSubEndpoint,
    names: QueueNames,
    subscription: String,
}

async fn queue_of(target: &Target, args: &DlqArgs) -> anyhow::Result<Queue> {
    let fleets: Api<PipelineWorker> = target.api();
    let fleet = fleets
        .get(&args.worker)
        .await
        .with_context(|| format!("PipelineWorker {}", args.worker))?;
    let names = QueueNames::of(&fleet, &args.project);
    let Some(topic) = names.dead_letter_topic.clone() else {
        bail!(
            "PipelineWorker {} has no queue.deadLetterTopic",
            args.worker
        );
    };
    let subscription = dead_letters::subscription_of(&topic)
        .with_context(|| format!("{topic} is not a topic path"))?;
    Ok(Queue {
        endpoint: PubSubEndpoint::from_env(),
        names,
        subscription,
    })
}

/// How long a read waits for the messages it was asked for by id: a message
/// that another read just handed back may be out of sight until the ack
/// deadline of the stream it was on ([`dead_letters::LEASE_SECONDS`]).
const WAIT_FOR_IDS: Duration = Duration::from_secs(20);

async fn read(queue: &Queue, args: &DlqArgs, ids: &[String]) -> anyhow::Result<dead_letters::Held> {
    dead_letters::hold(
        &queue.endpoint,
        &queue.subscription,
        dead_letters::Until {
            quiet: Duration::from_secs(args.quiet_seconds.max(1)),
            ids: ids.to_vec(),
            ids_within: WAIT_FOR_IDS,
            max: MAX_READ,
        },
    )
    .await
    .with_context(|| format!("reading {}", queue.subscription))
}

pub async fn list(target: &Target, args: &DlqArgs) -> anyhow::Result<ExitCode> {
    let queue = queue_of(target, args).await?;
    let held = read(&queue, args, &[]).await?;
    let now = Timestamp::now();
    let rows: Vec<Vec<String>> = held
        .letters
        .iter()
        .map(|l| row(l, &target.namespace, now))
        .collect();
    let json: Vec<serde_json::Value> = held
        .letters
        .iter()
        .map(|l| {
            serde_json::json!({
                "id": l.id, "reason": l.reason(), "message": l.message(),
                "data": String::from_utf8_lossy(&l.data), "publishedAt": l.published_at,
            })
        })
        .collect();
    let held_ids: Vec<String> = held.letters.iter().map(|l| l.id.clone()).collect();
    held.finish(&[]).await;
    match args.output {
        DlqOutput::Json => println!("{}", serde_json::to_string_pretty(&json)?),
        DlqOutput::Name => held_ids.iter().for_each(|id| println!("{id}")),
        DlqOutput::Text if rows.is_empty() => {
            println!("No dead letters in {}.", queue.subscription)
        }
        DlqOutput::Text => println!(
            "{}",
            render::table(&["ID", "WHAT", "REASON", "AGE", "MESSAGE"], &rows)
        ),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn replay(target: &Target, args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    if !args.all && args.ids.is_empty() {
        bail!("name the message ids to replay (from `dlq list`), or --all");
    }
    let queue = queue_of(target, &args.dlq).await?;
    let held = read(&queue, &args.dlq, &args.ids).await?;
    let jobs: Api<Job> = target.api();
    let publisher = queue
        .endpoint
        .publisher(&queue.names.topic)
        .await
        .context("a publisher for the fleet's topic")?;
    let mut replayed = Vec::new();
    let mut failed = 0;
    for letter in held
        .letters
        .iter()
        .filter(|l| args.all || args.ids.contains(&l.id))
    {
        let outcome = match kind(letter, &target.namespace) {
            Kind::Job { name, uid, .. } => replay_job(&jobs, &name, &uid).await,
            Kind::Foreign => {
                let message = Message::new()
                    .set_data(letter.data.clone())
                    .set_attributes(letter.original_attributes());
                publisher
                    .publish(message)
                    .await
                    .map(|id| format!("republished to {} as {id}", queue.names.topic))
                    .map_err(|e| anyhow::anyhow!("cannot republish: {e}"))
            }
        };
        match outcome {
            Ok(what) => {
                println!("{}: {what}", letter.id);
                replayed.push(letter.id.clone());
            }
            Err(error) => {
                eprintln!("{}: not replayed: {error:#}", letter.id);
                failed += 1;
            }
        }
    }
    let missing: Vec<&String> = args
        .ids
        .iter()
        .filter(|id| !held.letters.iter().any(|l| &l.id == *id))
        .collect();
    for id in &missing {
        eprintln!("{id}: not in {}", queue.subscription);
    }
    held.finish(&replayed).await;
    println!(
        "replayed {} of {} dead letters",
        replayed.len(),
        held_len(&replayed, failed, missing.len())
    );
    Ok(if failed == 0 && missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn held_len(replayed: &[String], failed: usize, missing: usize) -> usize {
    replayed.len() + failed + missing
}

/// A dead-lettered Job runs again, when it is still the Job that was dead-lettered.
async fn replay_job(jobs: &Api<Job>, name: &str, uid: &str) -> anyhow::Result<String> {
    let job = jobs
        .get(name)
        .await
        .with_context(|| format!("Job {name}"))?;
    if job.uid().as_deref() != Some(uid) {
        bail!("Job {name} was deleted and created again since it was dead-lettered");
    }
    match job.phase() {
        JobPhase::Failed | JobPhase::Cancelled => {
            let retried = retry_job(jobs, name).await?;
            Ok(format!(
                "job {name} retried (retry {})",
                retried.spec.retries
            ))
        }
        // Retried already (by hand or an earlier replay): nothing left to do.
        phase => Ok(format!("job {name} is {phase:?} already")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn letter(data: &[u8]) -> DeadLetter {
        DeadLetter {
            id: "7".into(),
            data: data.to_vec(),
            attributes: BTreeMap::from([("reason".to_owned(), "MaxAttemptsExceeded".to_owned())]),
            published_at: Some(1_800_000_000 - 90),
        }
    }

    #[test]
    fn a_job_message_of_this_namespace_is_a_job_and_anything_else_is_foreign() {
        let body = br#"{"namespace":"ns","name":"mix","uid":"u","attempt":3}"#;
        assert_eq!(
            kind(&letter(body), "ns"),
            Kind::Job {
                name: "mix".into(),
                uid: "u".into(),
                attempt: 3
            }
        );
        assert_eq!(kind(&letter(body), "other"), Kind::Foreign);
        assert_eq!(kind(&letter(b"{\"episode\": 1}"), "ns"), Kind::Foreign);
    }

    #[test]
    fn a_listed_dead_letter_shows_id_what_reason_and_age() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let body = br#"{"namespace":"ns","name":"mix","uid":"u","attempt":3}"#;
        assert_eq!(
            row(&letter(body), "ns", now),
            ["7", "job mix (attempt 3)", "MaxAttemptsExceeded", "90s", ""]
        );
        assert_eq!(row(&letter(b"hello"), "ns", now)[1], "foreign \"hello\"");
    }
}
