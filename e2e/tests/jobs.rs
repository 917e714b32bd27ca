//! The operator's half of the life of a Job, against the real control plane
//! and the Pub/Sub emulator: publish then Queued, InvalidInput and
//! WorkerNotFound, retries with backoff, dead-lettering after the last
//! attempt, WorkerLost requeue, cancel and TTL. The fleets run no worker
//! pods; the test plays the worker's part by writing the status a worker
//! would write.

use std::time::Duration;

use drover_crds::job::JobError;
use drover_crds::job_state::TransitionError;
use drover_crds::job_transition::NewClaim;
use drover_crds::{Job, JobMessage, JobPhase, JobStatus, JobTransition};
use drover_e2e::drover::{DroverTest, PUBSUB_PROJECT, drover_test};
use drover_e2e::wait;
use drover_queue::{PubSubEndpoint, subscription_path, topic_path};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use google_cloud_pubsub::subscriber::MessageStream;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

struct Fixture {
    t: DroverTest,
}

impl Fixture {
    async fn new(prefix: &str) -> Self {
        Self {
            t: drover_test(prefix).await,
        }
    }

    fn jobs(&self) -> Api<Job> {
        self.t.api()
    }

    fn topic(&self, suffix: &str) -> String {
        self.t.unique(suffix)
    }

    /// A sleep fleet with two attempts and no worker pods (the test plays
    /// the worker), changed by `customize`.
    async fn fleet(
        &self,
        name: &str,
        customize: impl FnOnce(PipelineWorkerBuilder) -> PipelineWorkerBuilder,
    ) {
        let fleet = PipelineWorkerBuilder::sleep(name)
            .queue(&self.topic("jobs"), &self.topic("jobs-sub"))
            .dead_letter_topic(&self.topic("dead"))
            .max_attempts(2)
            .backoff(1, 2.0, 5)
            .manual_replicas(0);
        self.t.apply_fleet(customize(fleet).build()).await;
    }

    async fn create(&self, name: &str, worker: &str, input: Value) -> Job {
        self.t
            .create_job(JobBuilder::new(name, worker).input(input).build())
            .await
    }

    async fn wait_for(
        &self,
        name: &str,
        what: &str,
        within: Duration,
        done: impl Fn(&JobStatus) -> bool,
    ) -> JobStatus {
        let jobs = self.jobs();
        wait::until(&format!("{name}: {what}"), within, || async {
            let job = jobs.get(name).await.map_err(|e| e.to_string())?;
            let status = job.status.unwrap_or_default();
            if done(&status) {
                Ok(status)
            } else {
                Err(format!("{status:?}"))
            }
        })
        .await
    }

    /// What a worker writes when an attempt fails.
    /// Sends `write`'s patch as a worker would, but with no claim to fence on.
    async fn worker_reports(&self, name: &str, write: Result<JobTransition, TransitionError>) {
        let status = write.expect("a legal transition").status;
        self.jobs()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
            .expect("status write");
    }

    fn pubsub(&self) -> PubSubEndpoint {
        PubSubEndpoint::emulator(self.t.env.pubsub.host_port())
    }

    /// A subscription of our own on `topic`, made before anything is published to it.
    async fn tap(&self, topic: &str) -> MessageStream {
        let pubsub = self.pubsub();
        let topic_path = topic_path(PUBSUB_PROJECT, topic);
        let topics = pubsub.topic_admin().await.expect("client");
        // The operator creates topics too; whoever is first wins.
        let _ = topics.create_topic().set_name(&topic_path).send().await;
        let tap = subscription_path(PUBSUB_PROJECT, &format!("{topic}-tap"));
        pubsub
            .subscription_admin()
            .await
            .expect("client")
            .create_subscription()
            .set_name(&tap)
            .set_topic(&topic_path)
            .send()
            .await
            .expect("tap subscription");
        pubsub
            .subscriber()
            .await
            .expect("subscriber")
            .subscribe(&tap)
            .build()
    }
}

async fn next_message(
    stream: &mut MessageStream,
) -> (JobMessage, std::collections::HashMap<String, String>) {
    let next = tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("a message within 15 s")
        .expect("stream open")
        .expect("message");
    let (message, handler) = next;
    handler.ack();
    let body = JobMessage::decode(&message.data).expect("a Job message");
    (body, message.attributes.into_iter().collect())
}

const SOON: Duration = Duration::from_secs(15);

#[tokio::test]
async fn valid_job_is_published_then_marked_queued() {
    let f = Fixture::new("publish").await;
    let mut tap = f.tap(&f.topic("jobs")).await;
    f.fleet("sleeper", |pw| pw).await;
    let job = f
        .create("nap", "sleeper", json!({"durationMillis": 10}))
        .await;

    let status = f
        .wait_for("nap", "Queued", SOON, |s| s.phase == JobPhase::Queued)
        .await;
    assert_eq!(status.attempt, 1);
    assert!(
        status.queued_at.is_some() && status.message_id.is_some(),
        "{status:?}"
    );

    let (message, attributes) = next_message(&mut tap).await;
    assert_eq!(
        message,
        JobMessage {
            namespace: f.t.namespace.clone(),
            name: "nap".into(),
            uid: job.uid().unwrap_or_default(),
            attempt: 1
        }
    );
    assert_eq!(attributes.get("attempt").map(String::as_str), Some("1"));
}

#[tokio::test]
async fn invalid_input_and_unknown_worker_fail_at_once_with_reasons() {
    let f = Fixture::new("reject").await;
    f.fleet("sleeper", |pw| pw).await;
    f.create("typo", "sleeper", json!({"durationMilis": 10}))
        .await;
    f.create("orphan", "nobody", json!({"durationMillis": 10}))
        .await;

    let typo = f
        .wait_for("typo", "Failed", SOON, |s| s.phase == JobPhase::Failed)
        .await;
    let error = typo.error.expect("error");
    assert_eq!(
        (error.reason.as_str(), error.retryable),
        ("InvalidInput", false)
    );
    assert!(
        error.message.contains("unknown field `durationMilis`"),
        "{}",
        error.message
    );
    assert!(typo.message_id.is_none(), "an invalid Job was published");

    let orphan = f
        .wait_for("orphan", "Failed", SOON, |s| s.phase == JobPhase::Failed)
        .await;
    assert_eq!(orphan.error.expect("error").reason, "WorkerNotFound");
    assert!(
        orphan
            .conditions
            .iter()
            .any(|c| c.type_ == "Failed" && c.status == "True")
    );
}

#[tokio::test]
async fn retryable_failure_is_retried_then_dead_lettered_after_the_last_attempt() {
    let f = Fixture::new("retry").await;
    let mut jobs_tap = f.tap(&f.topic("jobs")).await;
    let mut dead_tap = f.tap(&f.topic("dead")).await;
    f.fleet("sleeper", |pw| pw).await;
    f.create("flaky", "sleeper", json!({"durationMillis": 10}))
        .await;
    f.wait_for("flaky", "Queued", SOON, |s| s.phase == JobPhase::Queued)
        .await;
    assert_eq!(next_message(&mut jobs_tap).await.0.attempt, 1);

    let failed_attempt = || {
        let error = JobError {
            reason: "StepFailed".into(),
            message: "boom".into(),
            retryable: true,
        };
        JobTransition::fail(JobPhase::Running, error, Vec::new(), Timestamp::now())
    };
    f.worker_reports("flaky", failed_attempt()).await;
    let retried = f
        .wait_for("flaky", "attempt 2 queued", SOON, |s| {
            s.phase == JobPhase::Queued && s.attempt == 2
        })
        .await;
    assert!(retried.retry_at.is_none());
    assert_eq!(next_message(&mut jobs_tap).await.0.attempt, 2);

    f.worker_reports("flaky", failed_attempt()).await;
    let failed = f
        .wait_for("flaky", "Failed", SOON, |s| s.phase == JobPhase::Failed)
        .await;
    let error = failed.error.expect("error");
    assert_eq!(error.reason, "MaxAttemptsExceeded");
    assert_eq!(error.message, "all 2 attempts failed: boom (StepFailed)");

    let (dead, attributes) = next_message(&mut dead_tap).await;
    assert_eq!((dead.name.as_str(), dead.attempt), ("flaky", 2));
    assert_eq!(
        attributes.get("reason").map(String::as_str),
        Some("MaxAttemptsExceeded")
    );
}

#[tokio::test]
async fn expired_claim_is_requeued_as_worker_lost() {
    let f = Fixture::new("lost").await;
    f.fleet("sleeper", |pw| pw).await;
    f.create("orphaned", "sleeper", json!({"durationMillis": 10}))
        .await;
    f.wait_for("orphaned", "Queued", SOON, |s| s.phase == JobPhase::Queued)
        .await;
    // A worker that claimed the Job and died at once. Its `renewTime` is
    // years old, but the operator trusts no other machine's clock: the claim
    // expires its lease after the operator itself first saw it.
    let claim = NewClaim {
        id: "c-1".into(),
        attempt: 1,
        pod: "gone-pod".into(),
        lease_seconds: 3,
        steps: Vec::new(),
    };
    let years_ago = "2020-01-01T00:00:00Z".parse().expect("a timestamp");
    f.worker_reports(
        "orphaned",
        JobTransition::claim(JobPhase::Queued, claim, years_ago),
    )
    .await;
    let requeued = f
        .wait_for("orphaned", "attempt 2 queued", SOON, |s| {
            s.phase == JobPhase::Queued && s.attempt == 2
        })
        .await;
    let error = requeued.error.expect("the lost attempt's error is kept");
    assert_eq!(error.reason, "WorkerLost");
    assert!(error.message.contains("gone-pod"), "{}", error.message);
}

#[tokio::test]
async fn cancelled_job_is_finished_and_deleted_after_its_ttl() {
    let f = Fixture::new("cancel").await;
    // A TTL long enough that the Cancelled phase is seen before the Job goes.
    f.fleet("sleeper", |pw| pw.ttl_seconds_after_finished(4))
        .await;
    f.create("unwanted", "sleeper", json!({"durationMillis": 60000}))
        .await;
    f.wait_for("unwanted", "Queued", SOON, |s| s.phase == JobPhase::Queued)
        .await;
    f.jobs()
        .patch(
            "unwanted",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"cancel": true}})),
        )
        .await
        .expect("cancel");
    let cancelled = f
        .wait_for("unwanted", "Cancelled", SOON, |s| {
            s.phase == JobPhase::Cancelled
        })
        .await;
    assert!(cancelled.finished_at.is_some());

    let jobs = f.jobs();
    wait::until("TTL deletion", SOON, || async {
        match jobs.get_opt("unwanted").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(job) => Err(format!("{:?}", job.status.map(|s| s.phase))),
        }
    })
    .await;
}
