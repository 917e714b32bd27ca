//! How fast a backlog turns into replicas: 50 bursts of Jobs, each timed from
//! the last Job create to the moment a watch sees the worker Deployment's new
//! replica count. The baseline is the same watch seeing a replica change
//! written straight to the Deployment, so the ratio is what Drover adds on
//! top of the apiserver's own write-to-watch latency.
//!
//! `cargo bench -p drover-e2e --bench scale_latency`

use std::time::{Duration, Instant};

use drover_crds::{Job, PipelineWorker};
use drover_e2e::drover::{OperatorOptions, start_operator};
use drover_e2e::latency::{ms, quantile};
use drover_e2e::{TestEnv, error_chain, ports};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::watch;

const BURSTS: usize = 50;
const JOBS_PER_BURST: usize = 2;

#[tokio::main]
async fn main() {
    let state = std::env::temp_dir().join(format!("drover-bench-{}", std::process::id()));
    let mut progress = |line: &str| eprintln!("bench: {line}");
    let env = TestEnv::start(&state, &mut progress)
        .await
        .unwrap_or_else(|e| panic!("cannot start the test environment: {}", error_chain(&e)));
    let client = env.control_plane.client().await.expect("client");
    let ns = env
        .control_plane
        .create_namespace("bench")
        .await
        .expect("namespace");
    let port = ports::free_loopback_ports(1).expect("port")[0];
    let kubeconfig = drover_e2e::identity::operator_kubeconfig(&env)
        .await
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let _operator = start_operator(
        &env,
        &OperatorOptions {
            identity: "bench".into(),
            lease_seconds: 15,
            metrics_port: port,
            kubeconfig,
            failpoints: None,
        },
    )
    .unwrap_or_else(|e| panic!("cannot start the operator: {}", error_chain(&e)));

    // Drover: Job creates -> replicas.
    let fleets: Api<PipelineWorker> = Api::namespaced(client.clone(), &ns);
    let fleet = json!({
        "apiVersion": "drover.dev/v1alpha1", "kind": "PipelineWorker",
        "metadata": {"name": "bench"},
        "spec": {
            "pipeline": "sleep",
            "queue": {"topic": "bench-topic", "subscription": "bench-sub"},
            "scaling": {"maxReplicas": 1000, "jobsPerReplica": 1},
        },
    });
    fleets
        .patch(
            "bench",
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&fleet),
        )
        .await
        .expect("fleet");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let replicas = watch_replicas(deployments.clone(), "bench-worker");
    wait_for(&replicas, 0, Duration::from_secs(30)).await;

    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let mut drover = Vec::with_capacity(BURSTS);
    for burst in 0..BURSTS {
        for i in 0..JOBS_PER_BURST {
            let job: Job = serde_json::from_value(json!({
                "apiVersion": "drover.dev/v1alpha1", "kind": "Job",
                "metadata": {"name": format!("b{burst}-{i}")},
                "spec": {"worker": "bench", "input": {"durationMillis": 10}},
            }))
            .expect("job");
            jobs.create(&PostParams::default(), &job)
                .await
                .expect("job");
        }
        let last_create = Instant::now();
        let expected = i32::try_from((burst + 1) * JOBS_PER_BURST).unwrap_or(i32::MAX);
        wait_for(&replicas, expected, Duration::from_secs(10)).await;
        drover.push(last_create.elapsed());
    }

    // Baseline: the same watch, a replica change written directly.
    let direct: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let plain = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "plain"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "plain"}},
            "template": {"metadata": {"labels": {"app": "plain"}}, "spec": {"containers": [{"name": "c", "image": "none:1"}]}},
        },
    });
    direct
        .patch(
            "plain",
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&plain),
        )
        .await
        .expect("plain deployment");
    let plain_replicas = watch_replicas(direct.clone(), "plain");
    wait_for(&plain_replicas, 0, Duration::from_secs(10)).await;
    let mut baseline = Vec::with_capacity(BURSTS);
    for burst in 0..BURSTS {
        let expected = i32::try_from(burst + 1).unwrap_or(i32::MAX);
        let started = Instant::now();
        let patch = json!({"spec": {"replicas": expected}});
        direct
            .patch("plain", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("direct scale");
        wait_for(&plain_replicas, expected, Duration::from_secs(10)).await;
        baseline.push(started.elapsed());
    }

    let (d50, d99) = percentiles(&mut drover);
    let (b50, b99) = percentiles(&mut baseline);
    println!(
        "scale latency over {BURSTS} bursts of {JOBS_PER_BURST} Jobs (last Job create -> Deployment replicas seen by a watch)"
    );
    println!(
        "  drover:   p50 {:>7.1} ms   p99 {:>7.1} ms",
        ms(d50),
        ms(d99)
    );
    println!(
        "  baseline: p50 {:>7.1} ms   p99 {:>7.1} ms   (direct Deployment write -> watch)",
        ms(b50),
        ms(b99)
    );
    println!(
        "  ratio drover/baseline: p50 {:.1}x   p99 {:.1}x",
        ms(d50) / ms(b50).max(0.001),
        ms(d99) / ms(b99).max(0.001)
    );
    println!(
        "  goal p99 <= 250 ms: {}",
        if d99 <= Duration::from_millis(250) {
            "met"
        } else {
            "MISSED"
        }
    );
}

fn watch_replicas(api: Api<Deployment>, name: &str) -> watch::Receiver<Option<i32>> {
    let (sender, receiver) = watch::channel(None);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    tokio::spawn(async move {
        let mut stream = watcher(api, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(deployment)) = stream.next().await {
            if sender.send(deployment.spec.replicas).is_err() {
                break;
            }
        }
    });
    receiver
}

async fn wait_for(replicas: &watch::Receiver<Option<i32>>, expected: i32, timeout: Duration) {
    let mut replicas = replicas.clone();
    let reached = tokio::time::timeout(timeout, replicas.wait_for(|r| *r == Some(expected)))
        .await
        .is_ok_and(|r| r.is_ok());
    if !reached {
        let last = *replicas.borrow();
        panic!("replicas did not reach {expected} within {timeout:?} (last {last:?})");
    }
}

fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    (quantile(samples, 0.50), quantile(samples, 0.99))
}
