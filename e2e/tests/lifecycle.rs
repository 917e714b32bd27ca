//! Jobs end to end: the operator publishes, worker processes (run by the
//! process kubelet) pull, claim, run the diagnostic sleep pipeline and report;
//! effects are counted in files, so "exactly once" is checked, not assumed.

use std::path::PathBuf;
use std::time::Duration;

use drover_crds::{Job, JobMessage, JobPhase};
use drover_e2e::drover::{
    DroverProcesses, DroverTest, PUBSUB_PROJECT, apply_fleet, create_job, drover_test,
};
use drover_e2e::observe::http_get;
use drover_e2e::{TestEnv, wait};
use drover_queue::{PubSubEndpoint, topic_path};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use google_cloud_pubsub::model::Message;
use k8s_openapi::api::core::v1::ResourceQuota;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

struct Fixture {
    env: &'static TestEnv,
    processes: &'static DroverProcesses,
    client: Client,
    ns: String,
    effects: PathBuf,
    /// Checks the logs for RBAC refusals when the fixture drops.
    _test: DroverTest,
}

impl Fixture {
    /// A namespace with the fleet `sleeper`, changed by `customize`.
    async fn new(
        prefix: &str,
        customize: impl FnOnce(PipelineWorkerBuilder) -> PipelineWorkerBuilder,
    ) -> Self {
        let test = drover_test(prefix).await;
        let (env, processes, client, ns) = test.parts();
        let effects = env.control_plane.state_dir().join("effects").join(&ns);
        std::fs::create_dir_all(&effects).expect("effects dir");
        let f = Self {
            env,
            processes,
            client,
            ns,
            effects,
            _test: test,
        };
        let fleet = PipelineWorkerBuilder::sleep("sleeper")
            // A short ack deadline: a message the streaming pull fails to surface
            // (seen rarely with the emulator) comes back within 10 s.
            .queue(&format!("{}-jobs", f.ns), &format!("{}-jobs-sub", f.ns))
            .dead_letter_topic(&format!("{}-dead", f.ns))
            .ack_deadline_seconds(10)
            .concurrency(4)
            .replicas(1, 3)
            .jobs_per_replica(4)
            .scale_down_stabilization_seconds(30)
            .max_attempts(3)
            .backoff(1, 2.0, 4);
        apply_fleet(&f.client, &f.ns, customize(fleet).build()).await;
        f
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn create(&self, name: &str, input: Value) -> Job {
        let mut input = input;
        input["effectsDir"] = json!(self.effects.display().to_string());
        let job = JobBuilder::new(name, "sleeper").input(input).build();
        create_job(&self.client, &self.ns, job).await
    }

    /// Waits for a Job adopted from a foreign message for which `wanted` holds.
    async fn adopted_job(&self, wanted: impl Fn(&Job) -> bool) -> Job {
        let jobs = self.jobs();
        wait::until("an adopted Job", MINUTE, || async {
            let list = jobs
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .find(|j| j.name_any().starts_with("adopted-") && wanted(j))
                .ok_or_else(|| "none yet".to_owned())
        })
        .await
    }

    async fn finished(&self, name: &str, within: Duration) -> drover_crds::JobStatus {
        wait::job_finished(&self.jobs(), name, within).await
    }

    fn effects(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.effects)
            .expect("effects dir")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names
    }

    async fn publish_raw(&self, data: Vec<u8>) {
        let pubsub = PubSubEndpoint::emulator(self.env.pubsub.host_port());
        let topic = topic_path(PUBSUB_PROJECT, &format!("{}-jobs", self.ns));
        let publisher = pubsub.publisher(&topic).await.expect("publisher");
        publisher
            .publish(Message::new().set_data(data))
            .await
            .expect("published");
    }

    /// Sums a counter over every worker pod of this namespace.
    async fn worker_metric(&self, name: &str) -> f64 {
        let mut total = 0.0;
        for pod in self
            .processes
            .kubelet
            .running_pods()
            .iter()
            .filter(|p| p.namespace == self.ns)
        {
            let Ok((_, body)) = http_get(&format!("{}:8080", pod.pod_ip), "/metrics").await else {
                continue;
            };
            total += body
                .lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
        total
    }
}

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn two_hundred_sleep_jobs_succeed_through_three_worker_pods_each_effect_once() {
    let f = Fixture::new("many", |pw| pw).await;
    let count = 200;
    let mut uids = Vec::with_capacity(count);
    for i in 0..count {
        let job = f
            .create(&format!("nap-{i}"), json!({"durationMillis": 100}))
            .await;
        uids.push(job.metadata.uid.unwrap_or_default());
    }
    for (i, uid) in uids.iter().enumerate() {
        let status = f.finished(&format!("nap-{i}"), MINUTE).await;
        assert_eq!(status.phase, JobPhase::Succeeded, "nap-{i}: {status:?}");
        // Each result is its own Job's: it names that Job's uid.
        assert_eq!(
            status.result,
            Some(json!({"sleptMillis": 100, "jobUid": uid}))
        );
        assert_eq!(status.progress, 100);
        assert!(status.claim.is_none());
    }
    let expected: Vec<String> = {
        let mut names: Vec<String> = (0..count).map(|i| format!("{}_nap-{i}_1", f.ns)).collect();
        names.sort();
        names
    };
    assert_eq!(f.effects(), expected, "each Job ran exactly once");
}

#[tokio::test]
async fn retryable_failure_then_success_and_permanent_failure_at_once() {
    let f = Fixture::new("fail", |pw| pw).await;
    f.create(
        "flaky",
        json!({"durationMillis": 10, "failOnAttempts": [1]}),
    )
    .await;
    f.create(
        "broken",
        json!({"durationMillis": 10, "failOnAttempts": [1], "failRetryable": false}),
    )
    .await;

    let flaky = f.finished("flaky", MINUTE).await;
    assert_eq!(
        (flaky.phase, flaky.attempt),
        (JobPhase::Succeeded, 2),
        "{flaky:?}"
    );
    let broken = f.finished("broken", MINUTE).await;
    assert_eq!(
        (broken.phase, broken.attempt),
        (JobPhase::Failed, 1),
        "{broken:?}"
    );
    assert_eq!(broken.error.expect("error").reason, "Told");
    assert_eq!(f.effects(), vec![format!("{}_flaky_2", f.ns)]);
}

#[tokio::test]
async fn duplicate_message_and_garbage_are_handled_without_running_twice() {
    let f = Fixture::new("dupes", |pw| pw).await;
    let job = f.create("once", json!({"durationMillis": 10})).await;
    assert_eq!(f.finished("once", MINUTE).await.phase, JobPhase::Succeeded);

    // The same message again, not JSON, a foreign JSON payload, and a message
    // for a Job that does not exist.
    let again = JobMessage {
        namespace: f.ns.clone(),
        name: "once".into(),
        uid: job.uid().unwrap_or_default(),
        attempt: 1,
    };
    f.publish_raw(again.encode()).await;
    f.publish_raw(b"\xff not json at all".to_vec()).await;
    f.publish_raw(br#"{"durationMillis": 5}"#.to_vec()).await;
    let ghost = JobMessage {
        namespace: f.ns.clone(),
        name: "ghost".into(),
        uid: "none".into(),
        attempt: 1,
    };
    f.publish_raw(ghost.encode()).await;

    wait::until(
        "the duplicate and the ghost to be skipped",
        MINUTE,
        || async {
            let skips = f
                .worker_metric("drover_worker_idempotent_skips_total")
                .await;
            if skips >= 2.0 {
                Ok(())
            } else {
                Err(format!("{skips} skips"))
            }
        },
    )
    .await;
    // The foreign JSON object became a Job of its own, which then ran.
    let adopted = f.adopted_job(|_| true).await;
    assert_eq!(adopted.spec.input, json!({"durationMillis": 5}));
    wait::until(
        "the not-JSON message to be dead-lettered",
        MINUTE,
        || async {
            let dead = f
                .worker_metric("drover_worker_foreign_messages_total{action=\"dead_lettered\"")
                .await;
            if dead >= 1.0 {
                Ok(())
            } else {
                Err(format!("{dead}"))
            }
        },
    )
    .await;

    assert_eq!(
        f.effects(),
        vec![format!("{}_once_1", f.ns)],
        "the duplicate did not run again"
    );
    let pods = f.processes.kubelet.running_pods();
    let pod = pods
        .iter()
        .find(|p| p.namespace == f.ns)
        .expect("a worker pod");
    assert_eq!(pod.restart_count, 0, "a bad message crashed the worker");
    let (code, body) = http_get(&format!("{}:8080", pod.pod_ip), "/healthz")
        .await
        .expect("healthz");
    assert_eq!(code, 200, "{body}");
}

#[tokio::test]
async fn cancelling_a_running_job_stops_it() {
    let f = Fixture::new("cancel", |pw| pw).await;
    f.create("long", json!({"durationMillis": 600000})).await;
    let jobs = f.jobs();
    wait::until("long to run", MINUTE, || async {
        let status = jobs
            .get("long")
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        if status.phase == JobPhase::Running {
            Ok(())
        } else {
            Err(format!("{:?}", status.phase))
        }
    })
    .await;
    jobs.patch(
        "long",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"cancel": true}})),
    )
    .await
    .expect("cancel");
    let status = f.finished("long", Duration::from_secs(20)).await;
    assert_eq!(status.phase, JobPhase::Cancelled, "{status:?}");
    assert!(f.effects().is_empty(), "a cancelled Job left an effect");
}

#[tokio::test]
async fn killed_worker_loses_its_claim_and_the_job_still_succeeds_once() {
    let f = Fixture::new("sigkill", |pw| pw.concurrency(1).replicas(1, 1)).await;
    f.create("survivor", json!({"durationMillis": 3000})).await;
    let jobs = f.jobs();
    let claimed_by = wait::until("survivor to be claimed", MINUTE, || async {
        let status = jobs
            .get("survivor")
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        match (status.phase, status.claim) {
            (JobPhase::Running, Some(claim)) => Ok(claim.pod),
            (phase, _) => Err(format!("{phase:?}")),
        }
    })
    .await;
    let pod = f
        .processes
        .kubelet
        .running_pods()
        .into_iter()
        .find(|p| p.namespace == f.ns && p.name == claimed_by)
        .expect("the claiming pod runs");
    // SAFETY: kill(2) on a pid this test's kubelet started; no memory involved.
    let killed = unsafe { libc::kill(pod.pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(killed, 0, "SIGKILL failed");

    let status = f.finished("survivor", Duration::from_secs(90)).await;
    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    assert!(
        status.attempt >= 2,
        "the killed attempt was not counted: {status:?}"
    );
    let effects = f.effects();
    assert_eq!(effects.len(), 1, "ran more than once: {effects:?}");
}

#[tokio::test]
async fn a_foreign_message_that_cannot_become_a_job_yet_shows_on_the_fleet_and_is_kept() {
    let f = Fixture::new("adopt", |pw| pw).await;
    // One Job first, so the subscription exists and a worker pulls from it
    // before the foreign message is published.
    f.create("first", json!({"durationMillis": 10})).await;
    assert_eq!(f.finished("first", MINUTE).await.phase, JobPhase::Succeeded);
    // A quota of no Jobs: the worker's adoption is refused, for a reason
    // that may pass.
    let quotas: Api<ResourceQuota> = Api::namespaced(f.client.clone(), &f.ns);
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "no-jobs"},
        "spec": {"hard": {"count/jobs.drover.dev": "0"}},
    }))
    .expect("quota");
    quotas
        .create(&PostParams::default(), &quota)
        .await
        .expect("the quota is created");
    wait::until("the quota to be counted", MINUTE, || async {
        let quota = quotas.get("no-jobs").await.map_err(|e| e.to_string())?;
        quota
            .status
            .and_then(|s| s.hard)
            .map(drop)
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;

    f.publish_raw(br#"{"durationMillis": 5}"#.to_vec()).await;
    let events: Api<Event> = Api::namespaced(f.client.clone(), &f.ns);
    let shown = wait::until(
        "an AdoptionFailed event on the fleet",
        Duration::from_secs(30),
        || async {
            let list = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("AdoptionFailed")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("sleeper")
                })
                .and_then(|e| e.note)
                .ok_or_else(|| "none yet".to_owned())
        },
    )
    .await;
    assert!(
        shown.contains("quota"),
        "the event does not say why: {shown}"
    );

    // The message was handed back, not lost: once the quota is gone it
    // becomes a Job, which runs.
    quotas
        .delete("no-jobs", &Default::default())
        .await
        .expect("the quota is deleted");
    let adopted = f
        .adopted_job(|j| j.status.as_ref().map(|s| s.phase) == Some(JobPhase::Succeeded))
        .await;
    assert_eq!(adopted.spec.input, json!({"durationMillis": 5}));
}
