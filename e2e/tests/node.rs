//! The real node: containerd 1.6 + runc + CNI under a real kubelet, in
//! namespaces of the harness's own. The project's worker image runs as a
//! real container under its own ServiceAccount, proves who it is from
//! inside, answers its readiness probe over pod networking, gets SIGTERM
//! when deleted, and the node leaves nothing behind when it stops.
//!
//! One test on purpose: it owns the node (one per test binary) and stops it
//! at the end to check the teardown. It fails, never skips, when the node
//! cannot start.

use std::time::{Duration, Instant};

use drover_e2e::node::{NODE_NAME, NODE_PREFIX, Node, namespaces::NODE_IP};
use drover_e2e::{ensure_built, error_chain, wait};
use drover_queue::{PubSubEndpoint, QueueAdmin};
use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node as NodeObject, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{DeleteParams, LogParams, PostParams};
use serde_json::json;

const WORKER_IMAGE: &str = "drover-worker:0.1.0";
const KUBECTL_IMAGE: &str = "drover.local/kubectl:e2e";
const SERVICE_ACCOUNT: &str = "node-test-worker";
const FLEET: &str = "sleeper";
const TIMEOUT: Duration = Duration::from_secs(60);

fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "node test: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_image_runs_on_a_real_node_and_the_node_leaves_nothing_behind() {
    let mut progress = |line: &str| say(line);
    let bins = ensure_built(&mut progress)
        .unwrap_or_else(|e| panic!("the test environment binaries: {}", error_chain(&e)));
    let state_dir = std::env::temp_dir().join(format!("{NODE_PREFIX}{}", std::process::id()));
    let machine_sysctls = read_sysctls();
    let node = Node::start(&bins, &state_dir, &mut progress)
        .await
        .unwrap_or_else(|e| panic!("the real node could not be started: {}", error_chain(&e)));
    let client = node.control_plane().client().await.expect("admin client");

    // The node: Ready, on containerd 1.6.
    let nodes: Api<NodeObject> = Api::all(client.clone());
    let object = nodes.get(NODE_NAME).await.expect("the Node object");
    let info = object
        .status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .expect("the node reports its system info");
    assert!(
        info.container_runtime_version
            .starts_with("containerd://1.6."),
        "runtime: {}",
        info.container_runtime_version
    );
    assert_eq!(info.kubelet_version, "v1.37.2");
    // The kubelet set its sysctls (vm.overcommit_memory=1 among them) on the
    // node's own files; the machine's values are unchanged.
    let overcommit = std::fs::read_to_string(state_dir.join("sysctl/vm.overcommit_memory"))
        .expect("the node's vm.overcommit_memory");
    assert_eq!(overcommit.trim(), "1");
    assert_eq!(read_sysctls(), machine_sysctls);

    // What a user's shell sees over the machine's loopback.
    let wide = std::process::Command::new(&bins.kubectl)
        .arg("--kubeconfig")
        .arg(node.control_plane().kubeconfig_path())
        .args(["get", "nodes", "-o", "wide"])
        .output()
        .expect("kubectl get nodes");
    let wide = String::from_utf8_lossy(&wide.stdout);
    say(&format!("kubectl get nodes -o wide:\n{}", wide.trim_end()));
    assert!(
        wide.lines().any(|l| l.starts_with(NODE_NAME)
            && l.contains(" Ready ")
            && l.contains(&NODE_IP.to_string())
            && l.contains("containerd://1.6.")),
        "{wide}"
    );

    let images_started = Instant::now();
    let chart_images = node.load_chart_images().unwrap_or_else(|e| {
        panic!(
            "loading the operator and worker images: {}",
            error_chain(&e)
        )
    });
    assert_eq!(chart_images[1], WORKER_IMAGE);
    node.load_drover_image(&bins.kubectl, KUBECTL_IMAGE)
        .unwrap_or_else(|e| panic!("loading the kubectl image: {}", error_chain(&e)));
    say(&format!(
        "images built and loaded in {:.1} s",
        images_started.elapsed().as_secs_f64()
    ));
    let images = node
        .ctr(&["images", "list", "-q"])
        .expect("ctr images list");
    for image in [
        "docker.io/library/drover-operator:0.1.0",
        "docker.io/library/drover-worker:0.1.0",
    ] {
        assert!(
            images.contains(image),
            "{image} is not on the node:\n{images}"
        );
    }

    // The worker pulls from an emulator inside the node's network namespace
    // (nothing it does leaves that namespace); the test reaches it over loopback.
    let emulator = node
        .start_pubsub_emulator(&bins.pubsub_emulator)
        .await
        .unwrap_or_else(|e| panic!("the Pub/Sub emulator: {}", error_chain(&e)));
    let emulator_port = emulator.port;

    node.control_plane()
        .install_crds(&drover_e2e::crds_dir())
        .await
        .expect("Drover's CRDs");
    let namespace = node
        .control_plane()
        .create_namespace("node")
        .await
        .expect("test namespace");
    create_worker_identity(&client, &namespace).await;
    let fleets: Api<drover_crds::PipelineWorker> = Api::namespaced(client.clone(), &namespace);
    let fleet: drover_crds::PipelineWorker = serde_json::from_value(json!({
        "apiVersion": "drover.dev/v1alpha1",
        "kind": "PipelineWorker",
        "metadata": { "name": FLEET, "namespace": namespace },
        "spec": {
            "pipeline": "sleep",
            "queue": { "topic": "node-sleeper", "subscription": "node-sleeper-workers", "create": true },
            "concurrency": 1,
        },
    }))
    .expect("a PipelineWorker");
    fleets
        .create(&PostParams::default(), &fleet)
        .await
        .expect("create the PipelineWorker");
    // No operator runs here: the test puts the fleet's queue in place itself.
    let queue = QueueAdmin::connect(&PubSubEndpoint::emulator(format!(
        "127.0.0.1:{emulator_port}"
    )))
    .await
    .expect("queue admin");
    queue
        .ensure(&fleet, "drover-local")
        .await
        .expect("the emulator answers")
        .expect("the fleet's topic and subscription");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pod_started = Instant::now();
    pods.create(&PostParams::default(), &worker_pod(emulator_port))
        .await
        .expect("create the worker pod");
    let pod = wait::until("the worker pod to be Ready", TIMEOUT, || async {
        let pod = pods.get("worker").await.map_err(|e| e.to_string())?;
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            Ok(pod)
        } else {
            Err(serde_json::to_string(&pod.status).unwrap_or_default())
        }
    })
    .await;
    say(&format!(
        "worker pod Ready {:.1} s after it was created",
        pod_started.elapsed().as_secs_f64()
    ));
    let status = pod.status.expect("pod status");
    let pod_ip = status.pod_ip.clone().unwrap_or_default();
    assert!(pod_ip.starts_with("10.202.0."), "pod IP {pod_ip}");
    let worker = status
        .container_statuses
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == "worker")
        .expect("the worker container's status");
    assert!(
        worker
            .container_id
            .as_deref()
            .is_some_and(|id| id.starts_with("containerd://")),
        "{worker:?}"
    );
    assert_eq!(worker.image, "docker.io/library/drover-worker:0.1.0");

    // From inside the pod, with the mounted token and CA, through the
    // `kubernetes` Service (kube-proxy's rules): a SelfSubjectReview.
    let whoami = pods
        .logs(
            "worker",
            &LogParams {
                container: Some("whoami".into()),
                ..LogParams::default()
            },
        )
        .await
        .expect("the whoami container's log, through the kubelet");
    assert_eq!(
        whoami.trim(),
        format!("system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}")
    );

    // Deleting the pod: the kubelet sends SIGTERM and the worker drains.
    let log = pods
        .log_stream(
            "worker",
            &LogParams {
                container: Some("worker".into()),
                follow: true,
                ..LogParams::default()
            },
        )
        .await
        .expect("follow the worker's log");
    let deleted = Instant::now();
    pods.delete("worker", &DeleteParams::default())
        .await
        .expect("delete the worker pod");
    let lines: Vec<String> = tokio::time::timeout(TIMEOUT, log.lines().try_collect())
        .await
        .expect("the worker's log ends when it exits")
        .expect("the worker's log");
    assert!(
        lines.iter().any(|l| l.contains("SIGTERM: stop pulling")),
        "the worker never logged SIGTERM:\n{}",
        lines.join("\n")
    );
    wait::until("the worker pod to be gone", TIMEOUT, || async {
        match pods.get_opt("worker").await {
            Ok(None) => Ok(()),
            Ok(Some(pod)) => Err(serde_json::to_string(&pod.status).unwrap_or_default()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    say(&format!(
        "worker pod stopped by SIGTERM and gone {:.1} s after the delete",
        deleted.elapsed().as_secs_f64()
    ));

    drop(emulator);
    drop(client);
    let teardown = node
        .stop()
        .unwrap_or_else(|e| panic!("stopping the node: {}", error_chain(&e)));
    say(&format!(
        "node stopped in {:.1} s",
        teardown.duration.as_secs_f64()
    ));
    teardown.assert_clean();
}

/// The machine's values of the sysctls the kubelet writes.
fn read_sysctls() -> Vec<String> {
    drover_e2e::node::namespaces::KUBELET_SYSCTLS
        .iter()
        .map(|name| std::fs::read_to_string(format!("/proc/sys/{name}")).expect("a sysctl"))
        .collect()
}

/// The worker's own ServiceAccount, allowed to read PipelineWorkers only:
/// it cannot be Ready without authenticating as itself.
async fn create_worker_identity(client: &kube::Client, namespace: &str) {
    let post = PostParams::default();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    accounts
        .create(
            &post,
            &serde_json::from_value(json!({ "metadata": { "name": SERVICE_ACCOUNT } }))
                .expect("a ServiceAccount"),
        )
        .await
        .expect("create the ServiceAccount");
    let roles: Api<Role> = Api::namespaced(client.clone(), namespace);
    roles
        .create(
            &post,
            &serde_json::from_value(json!({
                "metadata": { "name": SERVICE_ACCOUNT },
                "rules": [{
                    "apiGroups": ["drover.dev"],
                    "resources": ["pipelineworkers"],
                    "verbs": ["get", "list", "watch"],
                }],
            }))
            .expect("a Role"),
        )
        .await
        .expect("create the Role");
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), namespace);
    bindings
        .create(
            &post,
            &serde_json::from_value(json!({
                "metadata": { "name": SERVICE_ACCOUNT },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": SERVICE_ACCOUNT },
                "subjects": [{ "kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": namespace }],
            }))
            .expect("a RoleBinding"),
        )
        .await
        .expect("create the RoleBinding");
}

/// The worker as the operator runs it, plus an init container that asks
/// the apiserver who the pod's token is.
fn worker_pod(emulator_port: u16) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "worker" },
        "spec": {
            "serviceAccountName": SERVICE_ACCOUNT,
            "terminationGracePeriodSeconds": 30,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "seccompProfile": { "type": "RuntimeDefault" },
            },
            "initContainers": [{
                "name": "whoami",
                "image": KUBECTL_IMAGE,
                "imagePullPolicy": "Never",
                "args": ["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
                "env": [{ "name": "HOME", "value": "/tmp" }],
            }],
            "containers": [{
                "name": "worker",
                "image": WORKER_IMAGE,
                "imagePullPolicy": "Never",
                "env": [
                    { "name": "DROVER_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
                    { "name": "DROVER_POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                    { "name": "DROVER_WORKER_NAME", "value": FLEET },
                    { "name": "PUBSUB_EMULATOR_HOST", "value": format!("{NODE_IP}:{emulator_port}") },
                    { "name": "DROVER_DRAIN_SECONDS", "value": "5" },
                ],
                "ports": [{ "name": "http", "containerPort": 8080 }],
                "readinessProbe": {
                    "httpGet": { "path": "/readyz", "port": "http" },
                    "periodSeconds": 1,
                },
                "resources": { "limits": { "memory": "256Mi" }, "requests": { "cpu": "10m", "memory": "32Mi" } },
                "securityContext": {
                    "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false,
                    "capabilities": { "drop": ["ALL"] },
                },
            }],
        },
    }))
    .expect("the worker pod")
}
