//! The process kubelet against the real control plane: Deployments become
//! processes, their pods become Ready from real probes, and scale-down, crashes,
//! probes and deletion behave like on a node.
//!
//! Every test runs its own kubelet (its own Node) serving its own namespace, so
//! the tests run in parallel without seeing each other's pods.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::pin::pin;
use std::time::{Duration, Instant};

use drover_e2e::kubelet::{KubeletConfig, ProcessKubelet, RunningPod};
use drover_e2e::shared;
use futures::TryStreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ContainerStatus, Node, Pod, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::runtime::watcher::watch_object;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The fixture is mapped without a tag, so every tag below resolves to it.
const IMAGE_REPOSITORY: &str = "drover.test/probe-fixture";
const IMAGE: &str = "drover.test/probe-fixture:dev";
const TIMEOUT: Duration = Duration::from_secs(30);

struct Setup {
    client: Client,
    namespace: String,
    kubelet: ProcessKubelet,
    /// Where fixtures write their SIGTERM markers.
    markers: PathBuf,
}

impl Setup {
    async fn new(prefix: &str) -> Self {
        let env = shared().await;
        let client = env
            .control_plane
            .client()
            .await
            .expect("client for the test apiserver");
        let namespace = env
            .control_plane
            .create_namespace(prefix)
            .await
            .expect("test namespace");
        let state = env
            .control_plane
            .state_dir()
            .join("kubelets")
            .join(&namespace);
        let markers = state.join("markers");
        std::fs::create_dir_all(&markers).expect("markers directory");
        let config = KubeletConfig::new(format!("node-{namespace}"), &state)
            .image(IMAGE_REPOSITORY, env!("CARGO_BIN_EXE_probe-fixture"))
            .namespace(&namespace);
        let kubelet = ProcessKubelet::start(client.clone(), config)
            .await
            .expect("process kubelet starts");
        Self {
            client,
            namespace,
            kubelet,
            markers,
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn marker(&self, pod: &str) -> PathBuf {
        self.markers.join(format!("{pod}.sigterm"))
    }

    /// The fixture's container: serves on `$(POD_IP):8080`, marks SIGTERM, and
    /// gets `extra_env` on top.
    fn container(&self, image: &str, extra_env: Value) -> Value {
        let mut env = vec![
            json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
            json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
            json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
            json!({"name": "LISTEN_ADDR", "value": "$(POD_IP):8080"}),
            json!({"name": "SIGTERM_MARKER", "value": format!("{}/$(POD_NAME).sigterm", self.markers.display())}),
        ];
        env.extend(extra_env.as_array().into_iter().flatten().cloned());
        json!({
            "name": "fixture",
            "image": image,
            "ports": [{"name": "http", "containerPort": 8080}],
            "env": env,
        })
    }

    async fn create_pod(&self, name: &str, container: Value, spec: Value) -> Pod {
        let mut spec_object = json!({"containers": [container]});
        if let (Some(target), Some(extra)) = (spec_object.as_object_mut(), spec.as_object()) {
            target.extend(extra.clone());
        }
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": spec_object,
        }))
        .expect("test pod");
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod")
    }

    async fn wait_for_pod(
        &self,
        name: &str,
        what: &str,
        condition: impl Fn(&Pod) -> bool + Send + 'static,
    ) -> Pod {
        let waited = tokio::time::timeout(
            TIMEOUT,
            await_condition(self.pods(), name, move |pod: Option<&Pod>| {
                pod.is_some_and(&condition)
            }),
        )
        .await;
        match waited {
            Ok(Ok(Some(pod))) => pod,
            Ok(Ok(None)) => panic!("pod {name} disappeared while waiting until {what}"),
            Ok(Err(error)) => panic!("watching pod {name} failed: {error}"),
            Err(_) => {
                let now = self.pods().get_opt(name).await.ok().flatten();
                panic!(
                    "pod {name} did not reach \"{what}\" within {TIMEOUT:?}; its status: {}\nkubelet: {:?}",
                    serde_json::to_string_pretty(&now.and_then(|p| p.status)).unwrap_or_default(),
                    self.kubelet
                );
            }
        }
    }

    async fn wait_for_running(
        &self,
        what: &str,
        done: impl FnMut(&[RunningPod]) -> bool,
    ) -> Vec<RunningPod> {
        self.kubelet
            .wait_for_pods(what, TIMEOUT, done)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Deletes the pod with its default grace period and follows it until it is
    /// gone: how long that took, and the last version of it that was seen.
    async fn delete_and_follow(&self, name: &str) -> (Duration, Pod) {
        let mut updates = pin!(watch_object(self.pods(), name));
        let mut last = match updates.try_next().await {
            Ok(Some(Some(pod))) => pod,
            other => panic!("cannot watch pod {name}: {other:?}"),
        };
        let started = Instant::now();
        self.pods()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete pod");
        loop {
            match tokio::time::timeout(TIMEOUT, updates.try_next()).await {
                Ok(Ok(Some(Some(pod)))) => last = pod,
                Ok(Ok(Some(None))) => return (started.elapsed(), last),
                Ok(other) => panic!("watching pod {name} ended: {other:?}"),
                Err(_) => panic!(
                    "pod {name} was not removed within {TIMEOUT:?}; last seen: {}",
                    serde_json::to_string_pretty(&last.status).unwrap_or_default()
                ),
            }
        }
    }
}

fn main_status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()
}

fn waiting_reason(pod: &Pod) -> Option<&str> {
    main_status(pod)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .as_deref()
}

fn condition<'a>(pod: &'a Pod, type_: &str) -> Option<(&'a str, Option<&'a str>)> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.as_str(), c.message.as_deref()))
}

fn is_ready(pod: &Pod) -> bool {
    condition(pod, "Ready").is_some_and(|(status, _)| status == "True")
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks whether the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// A plain HTTP GET; returns the status code and body.
async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("malformed response from {addr}: {response:?}"));
    (code, body.to_owned())
}

/// The fixture's environment, from its `/env` endpoint.
async fn fixture_env(pod_ip: std::net::Ipv4Addr) -> Vec<(String, String)> {
    let (code, body) = http_get(&format!("{pod_ip}:8080"), "/env").await;
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn env_value<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn deployment_pods_run_as_processes_and_scale_down_stops_them() {
    let t = Setup::new("kubelet-deploy").await;
    let secrets: Api<Secret> = Api::namespaced(t.client.clone(), &t.namespace);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "fixture-secret"},
        "stringData": {"token": "s3cret"},
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");

    let mut container = t.container(
        IMAGE,
        json!([{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "fixture-secret", "key": "token"}}}]),
    );
    container["readinessProbe"] =
        json!({"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1});
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "fixture"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "fixture"}},
            "template": {
                "metadata": {"labels": {"app": "fixture"}},
                "spec": {"terminationGracePeriodSeconds": 20, "containers": [container]},
            },
        },
    }))
    .expect("deployment");
    let deployments: Api<Deployment> = Api::namespaced(t.client.clone(), &t.namespace);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");

    // Two processes, on distinct loopback IPs.
    let running = t
        .wait_for_running("2 fixture processes", |p| p.len() == 2)
        .await;
    let ips: BTreeSet<_> = running.iter().map(|p| p.pod_ip).collect();
    assert_eq!(ips.len(), 2, "pod IPs must differ: {running:?}");

    // The Deployment is available because both pods became Ready from their probes.
    let ready = |replicas: i32| {
        move |d: Option<&Deployment>| {
            d.and_then(|d| d.status.as_ref()).is_some_and(|s| {
                s.replicas == Some(replicas)
                    && s.ready_replicas.unwrap_or(0) == replicas
                    && s.available_replicas.unwrap_or(0) == replicas
            })
        }
    };
    tokio::time::timeout(
        TIMEOUT,
        await_condition(deployments.clone(), "fixture", ready(2)),
    )
    .await
    .expect("deployment has 2 ready replicas in time")
    .expect("watch deployment");
    for pod in &running {
        let api_pod = t.pods().get(&pod.name).await.expect("get pod");
        assert!(
            is_ready(&api_pod),
            "pod {} not Ready: {:?}",
            pod.name,
            api_pod.status
        );
        assert_eq!(phase(&api_pod), Some("Running"));
        let status = api_pod.status.as_ref().expect("status");
        assert_eq!(
            status.pod_ip.as_deref(),
            Some(pod.pod_ip.to_string().as_str())
        );
        assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(
            api_pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some(t.kubelet.node_name())
        );
        let container = main_status(&api_pod).expect("container status");
        assert!(container.ready && container.started == Some(true));
        assert!(
            container
                .state
                .as_ref()
                .is_some_and(|s| s.running.is_some())
        );

        // The environment was resolved like a kubelet does, and nothing leaked in.
        let env = fixture_env(pod.pod_ip).await;
        assert_eq!(env_value(&env, "POD_NAME"), Some(pod.name.as_str()));
        assert_eq!(env_value(&env, "POD_NAMESPACE"), Some(t.namespace.as_str()));
        assert_eq!(
            env_value(&env, "POD_IP"),
            Some(pod.pod_ip.to_string().as_str())
        );
        assert_eq!(
            env_value(&env, "LISTEN_ADDR"),
            Some(format!("{}:8080", pod.pod_ip).as_str())
        );
        assert_eq!(env_value(&env, "TOKEN"), Some("s3cret"));
        assert_eq!(
            env_value(&env, "HOME"),
            Some(pod.workdir.to_string_lossy().as_ref())
        );
        let names: BTreeSet<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        let expected = BTreeSet::from([
            "HOME",
            "LISTEN_ADDR",
            "PATH",
            "POD_IP",
            "POD_NAME",
            "POD_NAMESPACE",
            "SIGTERM_MARKER",
            "TOKEN",
        ]);
        assert_eq!(
            names, expected,
            "the process environment must be exactly the pod's"
        );
        let log = std::fs::read_to_string(&pod.log_path).unwrap_or_default();
        assert!(
            log.contains("probe-fixture: listening on"),
            "stdout goes to {}: {log:?}",
            pod.log_path.display()
        );
    }

    // Scale to 1: one process gets SIGTERM, exits, and its pod goes away.
    let scale = |replicas: i32| Patch::Merge(json!({"spec": {"replicas": replicas}}));
    deployments
        .patch("fixture", &PatchParams::default(), &scale(1))
        .await
        .expect("scale to 1");
    let started = Instant::now();
    let remaining = t
        .wait_for_running("1 fixture process", |p| p.len() == 1)
        .await;
    let stopped: Vec<&RunningPod> = running.iter().filter(|p| !remaining.contains(p)).collect();
    let [stopped] = stopped.as_slice() else {
        panic!("expected exactly one stopped pod: before {running:?}, after {remaining:?}");
    };
    let marker = t.marker(&stopped.name);
    assert_eq!(
        std::fs::read_to_string(&marker).ok().as_deref(),
        Some("SIGTERM\n"),
        "{} must have been stopped with SIGTERM ({})",
        stopped.name,
        marker.display()
    );
    assert!(
        !pid_alive(stopped.pid),
        "process {} still alive",
        stopped.pid
    );
    assert!(
        !t.marker(&remaining[0].name).exists(),
        "the remaining pod must not have been signalled"
    );
    tokio::time::timeout(
        TIMEOUT,
        await_condition(
            t.pods(),
            &stopped.name,
            kube::runtime::conditions::is_deleted(&stopped.uid),
        ),
    )
    .await
    .expect("the stopped pod is removed in time")
    .expect("watch pod");
    // It stopped at once: the fixture exits on SIGTERM, long before its 20 s grace period.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "scale-down took {:?}",
        started.elapsed()
    );
    tokio::time::timeout(
        TIMEOUT,
        await_condition(deployments.clone(), "fixture", ready(1)),
    )
    .await
    .expect("deployment settles at 1 replica")
    .expect("watch deployment");
    let replica_sets: Api<ReplicaSet> = Api::namespaced(t.client.clone(), &t.namespace);
    let sets = replica_sets
        .list(&ListParams::default())
        .await
        .expect("list replica sets");
    let [set] = sets.items.as_slice() else {
        panic!("expected one ReplicaSet, got {}", sets.items.len());
    };
    let set_status = set.status.as_ref().expect("replica set status");
    assert_eq!(
        (set_status.replicas, set_status.ready_replicas),
        (1, Some(1))
    );

    // Scale to 0: no process, no pod.
    deployments
        .patch("fixture", &PatchParams::default(), &scale(0))
        .await
        .expect("scale to 0");
    t.wait_for_running("no fixture process", <[RunningPod]>::is_empty)
        .await;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let pods = t
            .pods()
            .list(&ListParams::default())
            .await
            .expect("list pods");
        if pods.items.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pods left after scaling to 0: {}",
            pods.items.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!pid_alive(remaining[0].pid));

    // The Node stayed healthy in kube-controller-manager's eyes.
    let node = Api::<Node>::all(t.client.clone())
        .get(t.kubelet.node_name())
        .await
        .expect("node");
    let ready_condition = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    assert_eq!(ready_condition.as_deref(), Some("True"));
    let no_execute: Vec<_> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoExecute")
        .collect();
    assert!(no_execute.is_empty(), "node tainted: {no_execute:?}");
}

#[tokio::test]
async fn unmapped_image_reports_image_pull_back_off() {
    let t = Setup::new("kubelet-image").await;
    let image = "drover.test/not-built:1.0";
    t.create_pod("no-image", t.container(image, json!([])), json!({}))
        .await;
    let pod = t
        .wait_for_pod("no-image", "ImagePullBackOff", |p| {
            waiting_reason(p) == Some("ImagePullBackOff")
        })
        .await;
    let message = main_status(&pod)
        .and_then(|s| s.state.as_ref()?.waiting.as_ref()?.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains(image),
        "message must name the image: {message}"
    );
    assert_eq!(phase(&pod), Some("Pending"));
    assert!(!is_ready(&pod));
    assert!(t.kubelet.running_pods().is_empty());

    // Nothing runs, so deletion removes it at once.
    let (took, _) = t.delete_and_follow("no-image").await;
    assert!(took < Duration::from_secs(5), "deletion took {took:?}");
}

#[tokio::test]
async fn crashing_process_reports_crash_loop_back_off() {
    let t = Setup::new("kubelet-crash").await;
    t.create_pod(
        "crasher",
        t.container(IMAGE, json!([{"name": "FIXTURE_EXIT_CODE", "value": "1"}])),
        json!({}),
    )
    .await;
    let pod = t
        .wait_for_pod("crasher", "CrashLoopBackOff after 2 restarts", |p| {
            waiting_reason(p) == Some("CrashLoopBackOff")
                && main_status(p).is_some_and(|s| s.restart_count >= 2)
        })
        .await;
    let status = main_status(&pod).expect("container status");
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("last termination");
    assert_eq!(last.exit_code, 1);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    assert!(!status.ready);
    // Restarting, not finished: the pod stays Running, as on a node.
    assert_eq!(phase(&pod), Some("Running"));
    assert!(!is_ready(&pod));

    let (took, _) = t.delete_and_follow("crasher").await;
    assert!(took < Duration::from_secs(5), "deletion took {took:?}");
}

#[tokio::test]
async fn deletion_waits_the_grace_period_then_sigkills() {
    let t = Setup::new("kubelet-grace").await;
    let probe = json!({"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1});
    // Ignores SIGTERM far longer than its 1 s grace period.
    let mut stubborn = t.container(
        IMAGE,
        json!([{"name": "SIGTERM_DELAY_MS", "value": "60000"}]),
    );
    stubborn["readinessProbe"] = probe.clone();
    t.create_pod(
        "stubborn",
        stubborn,
        json!({"terminationGracePeriodSeconds": 1}),
    )
    .await;
    // Takes 300 ms to stop, well within its 30 s.
    let mut polite = t.container(IMAGE, json!([{"name": "SIGTERM_DELAY_MS", "value": "300"}]));
    polite["readinessProbe"] = probe;
    t.create_pod(
        "polite",
        polite,
        json!({"terminationGracePeriodSeconds": 30}),
    )
    .await;
    t.wait_for_pod("stubborn", "Ready", is_ready).await;
    t.wait_for_pod("polite", "Ready", is_ready).await;
    let running = t.kubelet.running_pods();
    let pid_of = |name: &str| {
        running
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.pid)
            .unwrap_or_else(|| panic!("{name} not running: {running:?}"))
    };
    let (stubborn_pid, polite_pid) = (pid_of("stubborn"), pid_of("polite"));

    let ((stubborn_took, stubborn_last), (polite_took, polite_last)) = tokio::join!(
        t.delete_and_follow("stubborn"),
        t.delete_and_follow("polite")
    );

    // SIGTERM first, SIGKILL only once the 1 s grace period was over.
    assert!(t.marker("stubborn").exists(), "stubborn never got SIGTERM");
    assert!(
        stubborn_took >= Duration::from_millis(900),
        "killed before its grace period: {stubborn_took:?}"
    );
    assert!(
        stubborn_took < Duration::from_secs(5),
        "grace period overrun: {stubborn_took:?}"
    );
    let killed = main_status(&stubborn_last)
        .and_then(|s| s.state.as_ref()?.terminated.clone())
        .expect("stubborn's final state is terminated");
    assert_eq!(
        (killed.exit_code, killed.signal),
        (137, Some(9)),
        "{killed:?}"
    );
    assert_eq!(phase(&stubborn_last), Some("Failed"));
    assert!(!pid_alive(stubborn_pid));

    // A process that stops by itself is not waited for beyond that.
    assert!(t.marker("polite").exists(), "polite never got SIGTERM");
    assert!(
        polite_took < Duration::from_secs(5),
        "polite took {polite_took:?}"
    );
    let exited = main_status(&polite_last)
        .and_then(|s| s.state.as_ref()?.terminated.clone())
        .expect("polite's final state is terminated");
    assert_eq!(
        (exited.exit_code, exited.reason.as_deref()),
        (0, Some("Completed"))
    );
    assert_eq!(phase(&polite_last), Some("Succeeded"));
    assert!(!pid_alive(polite_pid));
    assert!(t.kubelet.running_pods().is_empty());
}

#[tokio::test]
async fn missing_secret_is_a_config_error_until_it_exists() {
    let t = Setup::new("kubelet-config").await;
    let env = json!([
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late-secret", "key": "token"}}},
        {"name": "OPTIONAL", "valueFrom": {"secretKeyRef": {"name": "never-created", "key": "x", "optional": true}}},
        {"name": "MEMORY_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
    ]);
    let mut container = t.container(IMAGE, env);
    container["resources"] = json!({"limits": {"memory": "64Mi"}});
    t.create_pod("waits-for-secret", container, json!({})).await;
    let pod = t
        .wait_for_pod("waits-for-secret", "CreateContainerConfigError", |p| {
            waiting_reason(p) == Some("CreateContainerConfigError")
        })
        .await;
    let message = main_status(&pod)
        .and_then(|s| s.state.as_ref()?.waiting.as_ref()?.message.clone())
        .unwrap_or_default();
    assert_eq!(message, "secret \"late-secret\" not found");
    assert!(t.kubelet.running_pods().is_empty());

    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "late-secret"},
        "stringData": {"token": "finally"},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(t.client.clone(), &t.namespace)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    let running = t
        .wait_for_running("the pod to start", |p| p.len() == 1)
        .await;
    let env = fixture_env_when_listening(running[0].pod_ip).await;
    assert_eq!(env_value(&env, "TOKEN"), Some("finally"));
    assert_eq!(env_value(&env, "OPTIONAL"), None);
    assert_eq!(env_value(&env, "MEMORY_MI"), Some("64"));
    // Configuration errors are not restarts.
    assert_eq!(running[0].restart_count, 0);
}

/// The fixture's environment, once it listens (there is no readiness probe to wait for).
async fn fixture_env_when_listening(pod_ip: std::net::Ipv4Addr) -> Vec<(String, String)> {
    let deadline = Instant::now() + TIMEOUT;
    while tokio::net::TcpStream::connect((pod_ip, 8080))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "{pod_ip}:8080 never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fixture_env(pod_ip).await
}

#[tokio::test]
async fn killed_process_is_restarted() {
    let t = Setup::new("kubelet-kill").await;
    let mut container = t.container(IMAGE, json!([]));
    container["readinessProbe"] = json!({"tcpSocket": {"port": "http"}, "periodSeconds": 1});
    t.create_pod("victim", container, json!({})).await;
    t.wait_for_pod("victim", "Ready", is_ready).await;
    let before = t.kubelet.running_pods();
    let [victim] = before.as_slice() else {
        panic!("expected one running pod: {before:?}");
    };
    let pid = libc::pid_t::try_from(victim.pid).expect("pid");
    // SAFETY: plain kill(2) of the fixture process the kubelet started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);

    let after = t
        .wait_for_running("the killed process to be restarted", |p| {
            p.len() == 1 && p[0].pid != victim.pid && p[0].restart_count == 1
        })
        .await;
    assert_eq!(after[0].pod_ip, victim.pod_ip, "a restart keeps the pod IP");
    let pod = t
        .wait_for_pod("victim", "Ready after the restart", |p| {
            is_ready(p) && main_status(p).is_some_and(|s| s.restart_count == 1)
        })
        .await;
    let last = main_status(&pod)
        .and_then(|s| s.last_state.as_ref()?.terminated.clone())
        .expect("last termination");
    assert_eq!((last.exit_code, last.signal), (137, Some(9)));
    // The restart count survives into the kubelet's view and the pod's status alike.
    assert_eq!(t.kubelet.running_pods()[0].restart_count, 1);

    // Dropping the kubelet kills what it runs, at once.
    let pid = after[0].pid;
    drop(t);
    assert!(!pid_alive(pid), "process {pid} outlived its kubelet");
}

#[tokio::test]
async fn probes_drive_readiness_and_liveness_restarts() {
    let t = Setup::new("kubelet-probes").await;
    // exec probes cannot run without a container: never ready, and it says why.
    let mut exec = t.container(IMAGE, json!([]));
    exec["readinessProbe"] = json!({"exec": {"command": ["true"]}, "periodSeconds": 1});
    t.create_pod("exec-probe", exec, json!({})).await;
    // A liveness probe on a path that 404s: killed and restarted.
    let mut unhealthy = t.container(IMAGE, json!([]));
    unhealthy["livenessProbe"] = json!({"httpGet": {"path": "/missing", "port": "http"}, "periodSeconds": 1, "failureThreshold": 2});
    t.create_pod(
        "unhealthy",
        unhealthy,
        json!({"terminationGracePeriodSeconds": 5}),
    )
    .await;

    let pod = t
        .wait_for_pod("exec-probe", "not ready because of the exec probe", |p| {
            condition(p, "Ready").is_some_and(|(_, m)| {
                m.is_some_and(|m| m.contains("exec probes are not supported"))
            })
        })
        .await;
    assert_eq!(condition(&pod, "Ready").map(|c| c.0), Some("False"));
    assert_eq!(
        condition(&pod, "ContainersReady").map(|c| c.0),
        Some("False")
    );
    assert_eq!(phase(&pod), Some("Running"));

    let pod = t
        .wait_for_pod("unhealthy", "restarted by its liveness probe", |p| {
            main_status(p).is_some_and(|s| s.restart_count >= 1)
        })
        .await;
    let last = main_status(&pod)
        .and_then(|s| s.last_state.as_ref()?.terminated.clone())
        .expect("last termination");
    // Stopped politely: SIGTERM, and the fixture exits 0 on it.
    assert_eq!(last.exit_code, 0, "{last:?}");
    assert!(t.marker("unhealthy").exists());
    // Without a readiness probe a started container is ready.
    let pod = t.wait_for_pod("unhealthy", "Ready again", is_ready).await;
    assert!(main_status(&pod).is_some_and(|s| s.ready));
}
