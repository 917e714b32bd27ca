//! Drover as a user's cluster runs it, on the real node: the chart installed
//! with helm as the README says, the operator and every worker a real
//! container from the project's images, each as its own ServiceAccount. A
//! fleet's Jobs succeed; a busy worker deleted with `kubectl delete pod` gets
//! the real kubelet's SIGTERM and finishes its Job within the grace; a worker
//! whose Job needs more memory than the fleet's limit is OOM-killed by the
//! kernel, the fleet says `OOMKilled`, the Job's lost attempt says so, and
//! with enough memory its next attempt succeeds; an image that writes into
//! its read-only root filesystem crash-loops and the fleet says
//! `SecurityContextDenied`, quoting the kernel's refusal. No process is
//! refused anything by RBAC, at any log level.
//!
//! One test on purpose: it owns the node (one per test binary). It fails,
//! never skips, when the node cannot start.

use std::time::{Duration, Instant};

use drover_crds::{Job, JobPhase, PipelineWorker};
use drover_e2e::drover::{apply_fleet, create_job};
use drover_e2e::node::{NODE_PREFIX, Node, chart};
use drover_e2e::observe::{self, ReadmeShell};
use drover_e2e::refusals::{self, LogSince};
use drover_e2e::{ensure_built, error_chain, wait};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use k8s_openapi::api::core::v1::{Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

const OPERATOR_NAMESPACE: &str = chart::OPERATOR_NAMESPACE;
const TIMEOUT: Duration = Duration::from_secs(120);
/// Below what a Job holding `HOLD_MIB` needs, above the idle worker.
const TIGHT_MEMORY: &str = "96Mi";
const ENOUGH_MEMORY: &str = "512Mi";
const HOLD_MIB: u32 = 256;
/// A stand-in worker image whose program writes into its own filesystem.
const WRITES_ITS_HOME_IMAGE: &str = "drover.local/writes-its-home:e2e";
/// Owned by the image's user 65532, so only the read-only root refuses it.
const WRITTEN_FILE: &str = "/home/nonroot/state";

fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "node fleet test: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_drover_on_a_real_node() {
    let started = Instant::now();
    let mut progress = |line: &str| say(line);
    let bins = ensure_built(&mut progress)
        .unwrap_or_else(|e| panic!("the test environment binaries: {}", error_chain(&e)));
    let state_dir = std::env::temp_dir().join(format!("{NODE_PREFIX}{}", std::process::id()));
    let node = Node::start(&bins, &state_dir, &mut progress)
        .await
        .unwrap_or_else(|e| panic!("the real node could not be started: {}", error_chain(&e)));
    node.load_chart_images()
        .unwrap_or_else(|e| panic!("loading the chart's images: {}", error_chain(&e)));
    let emulator = node
        .start_pubsub_emulator(&bins.pubsub_emulator)
        .await
        .unwrap_or_else(|e| panic!("the Pub/Sub emulator: {}", error_chain(&e)));
    let client = node.control_plane().client().await.expect("admin client");
    let shell = ReadmeShell {
        kubeconfig: node.control_plane().kubeconfig_path().to_path_buf(),
        kubectl: bins.kubectl.clone(),
        helm: observe::helm(),
        pubsub_emulator_host: emulator.pod_host(),
        home: state_dir.join("readme-home"),
    };

    // The README's Helm block, as written: install, a sample Job, uninstall.
    let transcript = shell
        .run("helm-install")
        .await
        .unwrap_or_else(|failure| panic!("the README's helm-install block failed:\n{failure}"));
    assert!(transcript.contains("condition met"), "{transcript}");
    say("the README's helm-install block ran on the real node");

    // Installed again for the rest, the same way.
    chart::install(&shell.helm, &shell.kubeconfig, &shell.pubsub_emulator_host)
        .unwrap_or_else(|e| panic!("{e}"));
    let namespace = node
        .control_plane()
        .create_namespace("fleets")
        .await
        .expect("test namespace");
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);

    // A fleet's Jobs, through real worker containers.
    let sleeper = PipelineWorkerBuilder::sleep("sleeper")
        .queue("node-sleeper", "node-sleeper-workers")
        .manual_replicas(2)
        .concurrency(4)
        .build();
    apply_fleet(&client, &namespace, sleeper).await;
    let batch_started = Instant::now();
    for i in 0..20 {
        let job = JobBuilder::new(&format!("nap-{i}"), "sleeper")
            .input(json!({"durationMillis": 500}))
            .build();
        create_job(&client, &namespace, job).await;
    }
    for i in 0..20 {
        let status = wait::job_finished(&jobs, &format!("nap-{i}"), TIMEOUT).await;
        assert_eq!(status.phase, JobPhase::Succeeded, "nap-{i}: {status:?}");
    }
    say(&format!(
        "20 Jobs Succeeded on 2 real worker pods in {:.1} s",
        batch_started.elapsed().as_secs_f64()
    ));
    assert_real_containers(&client, &namespace, "drover-worker").await;
    assert_real_containers(&client, OPERATOR_NAMESPACE, "drover-operator").await;

    // `kubectl delete pod` of a busy worker: SIGTERM from the kubelet, and
    // the Job finishes within the grace, on its first attempt.
    let long = JobBuilder::new("long", "sleeper")
        .input(json!({"durationMillis": 8000}))
        .build();
    create_job(&client, &namespace, long).await;
    wait::job_in_phase(&jobs, "long", JobPhase::Running, TIMEOUT).await;
    let holder = jobs
        .get("long")
        .await
        .expect("the long Job")
        .status
        .and_then(|s| s.claim)
        .expect("a Running Job has a claim")
        .pod;
    let deleted = Instant::now();
    pods.delete(&holder, &DeleteParams::default())
        .await
        .expect("delete the busy worker pod");
    let status = wait::job_finished(&jobs, "long", TIMEOUT).await;
    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    assert_eq!(
        (status.attempt, status.releases),
        (1, 0),
        "the deleted pod should have finished its Job within the grace: {status:?}"
    );
    say(&format!(
        "the deleted pod {holder} finished its Job {:.1} s after the delete",
        deleted.elapsed().as_secs_f64()
    ));

    // A Job that needs more memory than its fleet allows.
    let tight = PipelineWorkerBuilder::sleep("tight")
        .queue("node-tight", "node-tight-workers")
        .manual_replicas(1)
        .concurrency(1)
        .max_attempts(6)
        .with(|spec| spec.resources = Some(memory_limit(TIGHT_MEMORY)))
        .build();
    apply_fleet(&client, &namespace, tight).await;
    let hog = JobBuilder::new("hog", "tight")
        .input(json!({"durationMillis": 3000, "holdMiB": HOLD_MIB}))
        .build();
    create_job(&client, &namespace, hog).await;
    let fleets: Api<PipelineWorker> = Api::namespaced(client.clone(), &namespace);
    let (degraded, lost) = wait::until(
        "the fleet to say OOMKilled and the Job's lost attempt to say why",
        TIMEOUT,
        || async {
            let fleet = fleets.get("tight").await.map_err(|e| e.to_string())?;
            let degraded = fleet
                .status
                .iter()
                .flat_map(|s| &s.conditions)
                .find(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == "OOMKilled")
                .map(|c| c.message.clone());
            let job = jobs.get("hog").await.map_err(|e| e.to_string())?;
            let phase = job.status.as_ref().map(|s| s.phase);
            assert!(
                !phase.is_some_and(JobPhase::is_terminal),
                "the hog finished before it was OOM-killed: {:?}",
                job.status
            );
            let lost = job
                .status
                .and_then(|s| s.error)
                .filter(|e| e.message.contains("OOM-killed"))
                .map(|e| e.message);
            match (degraded, lost) {
                (Some(d), Some(l)) => Ok((d, l)),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    say(&format!("Degraded: {degraded}"));
    say(&format!("lost attempt: {lost}"));
    assert!(lost.contains(TIGHT_MEMORY), "{lost}");
    fleets
        .patch(
            "tight",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": memory_limit(ENOUGH_MEMORY)}})),
        )
        .await
        .expect("raise the fleet's memory limit");
    let status = wait::job_finished(&jobs, "hog", TIMEOUT).await;
    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    assert!(status.attempt >= 2, "{status:?}");
    say(&format!(
        "with {ENOUGH_MEMORY}, attempt {} of the hog Succeeded",
        status.attempt
    ));

    // An image that writes into itself: the read-only root filesystem
    // refuses it, and the fleet says its security context did.
    let fixture = drover_e2e::drover::binary("probe-fixture").expect("the probe fixture");
    node.load_drover_image(&fixture, WRITES_ITS_HOME_IMAGE)
        .unwrap_or_else(|e| panic!("the fixture image: {}", error_chain(&e)));
    let writer = PipelineWorkerBuilder::sleep("writer")
        .queue("node-writer", "node-writer-workers")
        .manual_replicas(1)
        .image(WRITES_ITS_HOME_IMAGE)
        .with(|spec| {
            spec.env = Some(vec![k8s_openapi::api::core::v1::EnvVar {
                name: "WRITE_FILE".into(),
                value: Some(WRITTEN_FILE.into()),
                ..Default::default()
            }])
        })
        .build();
    apply_fleet(&client, &namespace, writer).await;
    let refused = wait::until(
        "the fleet to say its security context refused the container",
        TIMEOUT,
        || async {
            let fleet = fleets.get("writer").await.map_err(|e| e.to_string())?;
            let degraded = fleet
                .status
                .iter()
                .flat_map(|s| &s.conditions)
                .find(|c| c.type_ == "Degraded" && c.status == "True")
                .map(|c| (c.reason.clone(), c.message.clone()));
            match degraded {
                Some((reason, message)) if reason == "SecurityContextDenied" => Ok(message),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    say(&format!("Degraded: SecurityContextDenied: {refused}"));
    assert!(refused.contains("Read-only file system"), "{refused}");
    assert!(refused.contains(WRITTEN_FILE), "{refused}");
    assert!(refused.contains("read-only root filesystem"), "{refused}");

    // Nothing was refused, at any log level, in any container's log.
    let pods_dir = state_dir.join("var-log/pods");
    // (The kubelet removes a deleted pod's logs: these are the pods that
    // still exist, the operator of the second install among them.)
    let mut logs: Vec<LogSince> = refusals::pod_logs(&pods_dir, OPERATOR_NAMESPACE);
    let operator_logs = logs.len();
    logs.extend(refusals::pod_logs(&pods_dir, &namespace));
    assert!(
        operator_logs >= 1 && logs.len() > operator_logs,
        "container logs under {}: {operator_logs} of the operator, {} in all",
        pods_dir.display(),
        logs.len()
    );
    refusals::assert_none("Drover on the real node", &logs);

    drop(emulator);
    drop(client);
    let teardown = node
        .stop()
        .unwrap_or_else(|e| panic!("stopping the node: {}", error_chain(&e)));
    teardown.assert_clean();
    say(&format!(
        "whole test {:.1} s",
        started.elapsed().as_secs_f64()
    ));
}

/// Every pod of `namespace` runs in containerd from the chart's `image`.
async fn assert_real_containers(client: &Client, namespace: &str, image: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods.list(&ListParams::default()).await.expect("list pods");
    let mut seen = 0;
    for pod in list.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        for container in pod
            .status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
        {
            seen += 1;
            assert!(
                container
                    .container_id
                    .as_deref()
                    .is_some_and(|id| id.starts_with("containerd://")),
                "{name}: {container:?}"
            );
            let expected = format!("docker.io/library/{image}:{}", env!("CARGO_PKG_VERSION"));
            assert_eq!(container.image, expected, "{name}");
        }
    }
    assert!(seen > 0, "no containers in {namespace}");
}

fn memory_limit(limit: &str) -> ResourceRequirements {
    ResourceRequirements {
        limits: Some([("memory".to_owned(), Quantity(limit.to_owned()))].into()),
        requests: Some([("memory".to_owned(), Quantity("32Mi".to_owned()))].into()),
        ..ResourceRequirements::default()
    }
}
