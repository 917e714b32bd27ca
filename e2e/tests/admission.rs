//! Admission end to end: the operator publishes only what a fleet can hold,
//! in priority and fair-share order, within per-key and rate limits, and
//! republishes a Queued Job only when its message is really lost. Worker
//! processes (run by the process kubelet) pull, claim and run the sleep
//! pipeline; a watch of the namespace records every phase the apiserver
//! shows, so "never more than" is checked on each change.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_crds::pipeline_worker::LimitsSpec;
use drover_crds::{Job, JobPhase};
use drover_e2e::drover::{DroverTest, PUBSUB_PROJECT, apply_fleet, create_job, drover_test};
use drover_e2e::observe::http_get;
use drover_e2e::wait;
use drover_queue::{PubSubEndpoint, subscription_path};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use futures::StreamExt;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

/// Tests that read the operator-wide republish counter run one at a time.
static REPUBLISH_COUNTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the watch saw.
#[derive(Default)]
struct Seen {
    phases: HashMap<String, JobPhase>,
    keys: HashMap<String, String>,
    /// Queued or Running at once, most seen.
    most_out: usize,
    /// The same, per concurrency key.
    most_out_per_key: HashMap<String, usize>,
    /// Names in the order they were first seen Running (or done).
    started: Vec<String>,
    /// When each Job was first seen past Pending.
    admitted_at: HashMap<String, Instant>,
    /// `Admitted=False` reasons seen on any Job.
    reasons: HashSet<String>,
}

impl Seen {
    fn apply(&mut self, job: &Job) {
        let name = job.name_any();
        let status = job.status.clone().unwrap_or_default();
        if let Some(key) = &job.spec.concurrency_key {
            self.keys.insert(name.clone(), key.clone());
        }
        for c in &status.conditions {
            if c.type_ == "Admitted" && c.status == "False" {
                self.reasons.insert(c.reason.clone());
            }
        }
        if status.phase != JobPhase::Pending {
            self.admitted_at
                .entry(name.clone())
                .or_insert_with(Instant::now);
        }
        if matches!(
            status.phase,
            JobPhase::Running | JobPhase::Succeeded | JobPhase::Failed
        ) && !self.started.contains(&name)
        {
            self.started.push(name.clone());
        }
        self.phases.insert(name, status.phase);
        let out: Vec<&String> = self
            .phases
            .iter()
            .filter(|(_, p)| matches!(p, JobPhase::Queued | JobPhase::Running))
            .map(|(n, _)| n)
            .collect();
        self.most_out = self.most_out.max(out.len());
        let mut per_key: HashMap<&str, usize> = HashMap::new();
        for name in out {
            if let Some(key) = self.keys.get(name) {
                *per_key.entry(key).or_default() += 1;
            }
        }
        for (key, n) in per_key {
            let most = self.most_out_per_key.entry(key.to_owned()).or_default();
            *most = (*most).max(n);
        }
    }

    fn succeeded(&self) -> usize {
        self.phases
            .values()
            .filter(|p| **p == JobPhase::Succeeded)
            .count()
    }
}

/// Watches the Jobs of `t`'s namespace into a [`Seen`] until the test ends.
fn record(t: &DroverTest) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let jobs: Api<Job> = t.api();
    let into = seen.clone();
    tokio::spawn(async move {
        let mut stream = watcher(jobs, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(event) = stream.next().await {
            if let Ok(job) = event {
                into.lock().expect("seen").apply(&job);
            }
        }
    });
    seen
}

fn sleeper(t: &DroverTest, name: &str) -> PipelineWorkerBuilder {
    PipelineWorkerBuilder::sleep(name)
        .queue(
            &t.unique(&format!("{name}-jobs")),
            &t.unique(&format!("{name}-sub")),
        )
        .ack_deadline_seconds(10)
        .scale_down_stabilization_seconds(60)
}

fn job(t: &DroverTest, name: &str, worker: &str, millis: u64) -> Job {
    let _ = t;
    JobBuilder::new(name, worker)
        .input(json!({"durationMillis": millis}))
        .build()
}

async fn all_succeed(seen: &Arc<Mutex<Seen>>, count: usize, within: Duration) {
    wait::until("every Job to succeed", within, || async {
        let done = seen.lock().expect("seen").succeeded();
        if done == count {
            Ok(())
        } else {
            Err(format!("{done} of {count} succeeded"))
        }
    })
    .await;
}

/// The operator's `drover_operator_jobs_published_total` of `kind`.
async fn published(metrics_url: &str, kind: &str) -> f64 {
    let addr = metrics_url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    // The operator may still be starting when the first test asks.
    let text = wait::until(
        "the operator's metrics",
        Duration::from_secs(30),
        || async {
            match http_get(addr, "/metrics").await {
                Ok((200, text)) => Ok(text),
                Ok((code, text)) => Err(format!("{code}: {text}")),
                Err(e) => Err(e),
            }
        },
    )
    .await;
    let prefix = format!("drover_operator_jobs_published_total{{kind=\"{kind}\"}}");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn two_hundred_jobs_on_a_fleet_of_eight_never_have_more_than_its_capacity_out() {
    let _alone = REPUBLISH_COUNTER.lock().await;
    let t = drover_test("admit-cap").await;
    // 2 replicas x 4 slots; capacity 8 plus a prefetch of 2.
    let fleet = sleeper(&t, "eight").concurrency(4).replicas(2, 2).build();
    apply_fleet(&t.client, &t.namespace, fleet).await;
    let seen = record(&t);
    let republished_before = published(&t.drover.operator_metrics, "republish").await;
    for i in 0..200 {
        create_job(
            &t.client,
            &t.namespace,
            job(&t, &format!("j{i:03}"), "eight", 200),
        )
        .await;
    }
    all_succeed(&seen, 200, Duration::from_secs(300)).await;
    let republished = published(&t.drover.operator_metrics, "republish").await;

    let seen = seen.lock().expect("seen");
    assert!(
        seen.most_out <= 10,
        "{} Jobs were published and unfinished at once",
        seen.most_out
    );
    assert!(
        seen.reasons.contains("FleetAtCapacity"),
        "no waiting Job said why: {:?}",
        seen.reasons
    );
    assert_eq!(
        republished - republished_before,
        0.0,
        "Jobs waiting in line were republished"
    );
}

#[tokio::test]
async fn fair_share_alternates_tenants_and_priority_takes_the_next_free_slot() {
    let t = drover_test("admit-order").await;
    // One slot plus one prefetched message: the start order is the admission order.
    let fleet = sleeper(&t, "one").concurrency(1).replicas(1, 1).build();
    apply_fleet(&t.client, &t.namespace, fleet).await;
    let seen = record(&t);
    for tenant in ["a", "b"] {
        for i in 0..50 {
            let mut j = job(&t, &format!("{tenant}{i:02}"), "one", 50);
            j.spec.fairness_key = Some(tenant.into());
            create_job(&t.client, &t.namespace, j).await;
        }
    }
    let started_before = seen.lock().expect("seen").started.len();
    let mut urgent = job(&t, "urgent", "one", 50);
    urgent.spec.priority = Some(10);
    urgent.spec.fairness_key = Some("a".into());
    create_job(&t.client, &t.namespace, urgent).await;
    all_succeed(&seen, 101, Duration::from_secs(300)).await;

    let seen = seen.lock().expect("seen");
    let at = seen
        .started
        .iter()
        .position(|n| n == "urgent")
        .expect("urgent started");
    // The slot that frees next is its: at most the one running and the one
    // prefetched start before it.
    assert!(
        at <= started_before + 2,
        "urgent started {at}th, {started_before} had started when it was created"
    );
    // Once b has Jobs, the tenants take turns: in every 10 starts while both
    // have work, neither gets more than 6.
    let first_b = seen
        .started
        .iter()
        .position(|n| n.starts_with('b'))
        .expect("b started");
    let both: Vec<&String> = seen.started[first_b..]
        .iter()
        .filter(|n| *n != "urgent")
        .take(60)
        .collect();
    for window in both.windows(10) {
        let a = window.iter().filter(|n| n.starts_with('a')).count();
        assert!(
            (4..=6).contains(&a),
            "tenant a took {a} of 10 starts in a row: {window:?}"
        );
    }
}

#[tokio::test]
async fn per_key_concurrency_is_never_exceeded() {
    let t = drover_test("admit-key").await;
    let fleet = sleeper(&t, "keyed")
        .concurrency(4)
        .replicas(2, 2)
        .with(|spec| {
            spec.limits = Some(LimitsSpec {
                per_key_concurrency: Some(2),
                ..LimitsSpec::default()
            })
        })
        .build();
    apply_fleet(&t.client, &t.namespace, fleet).await;
    let seen = record(&t);
    for i in 0..30 {
        let mut j = job(&t, &format!("k{i:02}"), "keyed", 300);
        // Two of every three share one downstream account.
        if i % 3 != 0 {
            j.spec.concurrency_key = Some("llm-account".into());
        }
        create_job(&t.client, &t.namespace, j).await;
    }
    all_succeed(&seen, 30, Duration::from_secs(240)).await;
    let seen = seen.lock().expect("seen");
    let most = seen.most_out_per_key.get("llm-account").copied();
    assert_eq!(most, Some(2), "at most 2 of one key at once, saw {most:?}");
    assert!(
        seen.reasons.contains("KeyConcurrencyLimit"),
        "{:?}",
        seen.reasons
    );
}

#[tokio::test]
async fn a_rate_of_thirty_a_minute_holds_within_ten_percent_over_two_minutes() {
    let t = drover_test("admit-rate").await;
    let fleet = sleeper(&t, "metered")
        .concurrency(8)
        .replicas(1, 2)
        .with(|spec| {
            spec.limits = Some(LimitsSpec {
                jobs_per_minute: Some(30),
                ..LimitsSpec::default()
            })
        })
        .build();
    apply_fleet(&t.client, &t.namespace, fleet).await;
    let seen = record(&t);
    for i in 0..75 {
        create_job(
            &t.client,
            &t.namespace,
            job(&t, &format!("r{i:02}"), "metered", 10),
        )
        .await;
    }
    let first = wait::until("a first admission", Duration::from_secs(30), || async {
        seen.lock()
            .expect("seen")
            .admitted_at
            .values()
            .min()
            .copied()
            .ok_or_else(|| "none yet".to_owned())
    })
    .await;
    let window = Duration::from_secs(120);
    tokio::time::sleep_until((first + window).into()).await;
    let seen = seen.lock().expect("seen");
    let admitted = seen
        .admitted_at
        .values()
        .filter(|at| **at < first + window)
        .count();
    // 60 in two minutes (one token at first, then one every 2 s), within 10 %.
    assert!(
        (54..=66).contains(&admitted),
        "{admitted} Jobs admitted in two minutes at 30/min"
    );
    assert!(seen.reasons.contains("RateLimited"), "{:?}", seen.reasons);
}

#[tokio::test]
async fn a_lost_message_is_republished_once_the_fleet_was_idle_for_the_bound() {
    let _alone = REPUBLISH_COUNTER.lock().await;
    let t = drover_test("admit-lost").await;
    // No worker yet: the message waits in the subscription.
    let parked = sleeper(&t, "lossy").concurrency(1).manual_replicas(0);
    apply_fleet(&t.client, &t.namespace, parked.build()).await;
    let jobs: Api<Job> = t.api();
    create_job(&t.client, &t.namespace, job(&t, "lost", "lossy", 10)).await;
    wait::job_in_phase(&jobs, "lost", JobPhase::Queued, Duration::from_secs(30)).await;
    let republished_before = published(&t.drover.operator_metrics, "republish").await;

    // Take the message off the subscription: pulled and acked by the test.
    let pubsub = PubSubEndpoint::emulator(t.env.pubsub.host_port());
    let subscription = subscription_path(PUBSUB_PROJECT, &t.unique("lossy-sub"));
    let mut stream = pubsub
        .subscriber()
        .await
        .expect("subscriber")
        .subscribe(&subscription)
        .build();
    let (_, handler) = tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("the Job's message within 15 s")
        .expect("stream open")
        .expect("message");
    handler.ack();
    drop(stream);

    // Past the bound with no worker: the Job waits in line, it is not lost.
    tokio::time::sleep(Duration::from_secs(35)).await;
    let waited = published(&t.drover.operator_metrics, "republish").await;
    assert_eq!(
        waited - republished_before,
        0.0,
        "a Job waiting for a worker was republished"
    );

    // An idle worker now: it never sees the message, which is gone.
    let idle = sleeper(&t, "lossy").concurrency(1).manual_replicas(1);
    apply_fleet(&t.client, &t.namespace, idle.build()).await;
    let ready_at = wait::until("a ready worker", Duration::from_secs(60), || async {
        let fleet = t
            .api::<drover_crds::PipelineWorker>()
            .get("lossy")
            .await
            .map_err(|e| e.to_string())?;
        let ready = fleet.status.map_or(0, |s| s.ready_replicas);
        if ready >= 1 {
            Ok(Instant::now())
        } else {
            Err(format!("{ready} ready"))
        }
    })
    .await;
    // The bound is three ack deadlines (30 s) of idle capacity.
    let status = wait::job_finished(&jobs, "lost", Duration::from_secs(60)).await;
    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    let took = ready_at.elapsed();
    assert!(
        took >= Duration::from_secs(25),
        "republished after only {took:?} of idle workers"
    );
    let republished = published(&t.drover.operator_metrics, "republish").await;
    assert_eq!(
        republished - republished_before,
        1.0,
        "one republish for one lost message"
    );
}

#[tokio::test]
async fn a_subscription_the_fleet_brings_back_gets_its_queued_jobs_again() {
    let _alone = REPUBLISH_COUNTER.lock().await;
    let t = drover_test("admit-resub").await;
    // No worker: the idle rule alone would never republish.
    let parked = sleeper(&t, "resub").concurrency(1).manual_replicas(0);
    apply_fleet(&t.client, &t.namespace, parked.clone().build()).await;
    let jobs: Api<Job> = t.api();
    create_job(&t.client, &t.namespace, job(&t, "orphan", "resub", 10)).await;
    wait::job_in_phase(&jobs, "orphan", JobPhase::Queued, Duration::from_secs(30)).await;
    let republished_before = published(&t.drover.operator_metrics, "republish").await;

    // Job times are whole seconds: a queue made again within the second of
    // the publish cannot tell the message was lost, so step out of it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The subscription is deleted by hand, and with it the Job's message.
    let pubsub = PubSubEndpoint::emulator(t.env.pubsub.host_port());
    let subscription = subscription_path(PUBSUB_PROJECT, &t.unique("resub-sub"));
    pubsub
        .subscription_admin()
        .await
        .expect("subscription admin")
        .delete_subscription()
        .set_subscription(&subscription)
        .send()
        .await
        .expect("subscription deleted");
    // A spec change makes the fleet controller check its queue at once.
    let changed = parked.scale_down_stabilization_seconds(61);
    apply_fleet(&t.client, &t.namespace, changed.build()).await;

    // The fleet controller makes a new, empty subscription; the Job's
    // message must come through it again within the republish bound.
    let mut stream = wait::until("the subscription back", Duration::from_secs(30), || async {
        let subscriber = pubsub.subscriber().await.map_err(|e| e.to_string())?;
        let admin = pubsub
            .subscription_admin()
            .await
            .map_err(|e| e.to_string())?;
        admin
            .get_subscription()
            .set_subscription(&subscription)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        Ok(subscriber.subscribe(&subscription).build())
    })
    .await;
    let (message, handler) = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("the Job's message again within 60 s")
        .expect("stream open")
        .expect("message");
    handler.nack();
    let body: drover_crds::JobMessage =
        serde_json::from_slice(&message.data).expect("a Job message");
    assert_eq!((body.name.as_str(), body.attempt), ("orphan", 1));
    let republished = published(&t.drover.operator_metrics, "republish").await;
    assert_eq!(
        republished - republished_before,
        1.0,
        "one republish for the one message the old subscription took with it"
    );
}
