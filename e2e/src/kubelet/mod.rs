//! The process kubelet: makes Deployments real without containers.
//!
//! The test control plane has kube-apiserver and kube-controller-manager but no
//! scheduler and no kubelet, so a Deployment's pods would stay Pending forever.
//! A [`ProcessKubelet`] plays both missing parts for the namespaces it serves:
//!
//! * it registers a Node and keeps it alive with Lease and status heartbeats
//!   (`node.rs`), so kube-controller-manager's node lifecycle controller never
//!   taints it or evicts its pods;
//! * it binds every unscheduled pod to that Node (`scheduler.rs`);
//! * for each pod bound to the Node (`supervisor.rs`, `pod_worker.rs`) it runs the
//!   first container's image as a local process: the image maps to an executable
//!   (`images.rs`), the environment is resolved like a kubelet does it (`env.rs`),
//!   each pod gets its own loopback IP (`ips.rs`), readiness and liveness come
//!   from the container's probes (`probe.rs`), crashes restart with back-off
//!   (`backoff.rs`), and the Pod's status says all of it (`status.rs`);
//! * a deleted pod's process gets SIGTERM, its grace period, then SIGKILL, and
//!   its Pod object is then removed for good, so a scale-down really stops a
//!   process and the ReplicaSet controller sees the pod go.
//!
//! What it does not do: init and sidecar containers (only the first container
//! runs; the others are reported waiting), volumes, resource limits, exec/gRPC
//! probes, Service environment variables (use [`KubeletConfig::extra_env`] for
//! what a pod needs from "the node", such as `KUBECONFIG`), and placement
//! constraints (one node takes every pod).

mod backoff;
mod container;
mod env;
mod expansion;
mod images;
mod ips;
mod log_server;
mod node;
mod pod_worker;
mod probe;
mod quantity;
mod scheduler;
mod status;
mod supervisor;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::process::ManagedProcess;

/// Field manager of everything the kubelet writes, and the reporting controller
/// of its Events.
pub const FIELD_MANAGER: &str = "drover-process-kubelet";

/// How a [`ProcessKubelet`] is set up.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// The Node's name; unique per kubelet.
    pub node_name: String,
    /// Per-pod working directories and logs go to `<state_dir>/pods/`.
    pub state_dir: PathBuf,
    /// Container image -> local executable. A pod's image is looked up as
    /// written first, then without its tag and digest.
    pub images: BTreeMap<String, PathBuf>,
    /// The namespaces whose unscheduled pods this kubelet binds; `None` for all.
    /// (Pods bound to its Node by anyone else run whatever their namespace.)
    pub namespaces: Option<BTreeSet<String>>,
    /// Variables every process gets before the pod's own (which win), standing in
    /// for what a real node provides, such as the Service variables or a
    /// `KUBECONFIG` in place of the mounted service account token. The pod's
    /// `$(VAR)` references can use them.
    pub extra_env: BTreeMap<String, String>,
    /// Stands in for the mounted service account token: with `Some(admin)`,
    /// each pod's process gets `KUBECONFIG` pointing at a kubeconfig with the
    /// `admin` one's apiserver and CA and a real token of the pod's
    /// ServiceAccount (TokenRequest, bound to the pod), so the apiserver
    /// authenticates and authorizes it as exactly that account.
    pub service_account_kubeconfig: Option<PathBuf>,
}

impl KubeletConfig {
    pub fn new(node_name: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_name: node_name.into(),
            state_dir: state_dir.into(),
            images: BTreeMap::new(),
            namespaces: None,
            extra_env: BTreeMap::new(),
            service_account_kubeconfig: None,
        }
    }

    /// Runs every pod as its ServiceAccount (see [`Self::service_account_kubeconfig`]).
    pub fn run_as_service_accounts(mut self, admin_kubeconfig: impl Into<PathBuf>) -> Self {
        self.service_account_kubeconfig = Some(admin_kubeconfig.into());
        self
    }

    /// Maps `image` (with or without a tag) to the executable at `program`.
    pub fn image(mut self, image: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        self.images.insert(image.into(), program.into());
        self
    }

    /// Serves `namespace` (call once per namespace; without any call, all are served).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespaces
            .get_or_insert_with(BTreeSet::new)
            .insert(namespace.into());
        self
    }

    /// Adds a variable to every process's environment (see [`Self::extra_env`]).
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_env.insert(name.into(), value.into());
        self
    }

    fn validate(&self) -> Result<(), KubeletError> {
        if self.node_name.is_empty()
            || self.node_name.len() > 253
            || !self
                .node_name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return Err(KubeletError::InvalidConfig(format!(
                "node name {:?} is not a DNS subdomain (lowercase letters, digits, '-' and '.')",
                self.node_name
            )));
        }
        // A typo in the image map must fail here, not as a mysterious pod error.
        for (image, program) in &self.images {
            let executable = std::fs::metadata(program)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            if !executable {
                return Err(KubeletError::InvalidConfig(format!(
                    "image {image:?} maps to {}, which is not an executable file",
                    program.display()
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("invalid process kubelet configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot create the process kubelet's state directory {}", path.display())]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot register Node {node}: cannot {action}")]
    RegisterNode {
        node: String,
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("cannot start the kubelet's log endpoint: {0}")]
    LogServer(String),
    #[error("timed out after {timeout:?} waiting for {what}; the kubelet runs: {running}")]
    Timeout {
        what: String,
        timeout: Duration,
        running: String,
    },
}

/// A pod whose container process is running right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub pod_ip: Ipv4Addr,
    /// The process (and process group) id: `kill(pid, SIGKILL)` is a crash.
    pub pid: u32,
    /// How often the container was restarted, as in its status.
    pub restart_count: u32,
    /// The process's working directory and HOME.
    pub workdir: PathBuf,
    /// Its stdout and stderr, across restarts.
    pub log_path: PathBuf,
}

/// A running process kubelet. Dropping it stops its tasks and kills (SIGKILL)
/// every process it runs; the Node and the Pod objects stay behind, like after
/// a kubelet crash.
pub struct ProcessKubelet {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for ProcessKubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessKubelet")
            .field("node", &self.shared.config.node_name)
            .field("running", &self.running_pods())
            .finish()
    }
}

impl ProcessKubelet {
    /// Registers the Node and starts binding and running pods. Returns once the
    /// Node is registered and Ready; pods are picked up in the background.
    pub async fn start(client: Client, config: KubeletConfig) -> Result<Self, KubeletError> {
        config.validate()?;
        let pods_dir = config.state_dir.join("pods");
        std::fs::create_dir_all(&pods_dir).map_err(|source| KubeletError::StateDir {
            path: pods_dir.clone(),
            source,
        })?;
        let log_server = log_server::LogServer::bind().await?;
        let node = node::register(&client, &config.node_name, log_server.port()).await?;
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.to_owned(),
                instance: Some(config.node_name.clone()),
            },
        );
        let shared = Arc::new(Shared {
            config,
            registry: Mutex::default(),
            changes: watch::Sender::new(0),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(node.heartbeat());
        tasks.spawn(log_server.serve(shared.clone()));
        tasks.spawn(scheduler::run(
            shared.clone(),
            client.clone(),
            recorder.clone(),
        ));
        tasks.spawn(supervisor::run(pod_worker::Context {
            shared: shared.clone(),
            client,
            recorder,
        }));
        tracing::info!(node = %shared.config.node_name, "process kubelet started");
        Ok(Self { shared, tasks })
    }

    pub fn node_name(&self) -> &str {
        &self.shared.config.node_name
    }

    /// The pods whose process is alive right now, by namespace and name.
    pub fn running_pods(&self) -> Vec<RunningPod> {
        let registry = self.shared.registry();
        let mut pods: Vec<RunningPod> = registry
            .pods
            .values()
            .filter_map(|record| {
                let process = record.process.as_ref().filter(|p| p.is_running())?;
                Some(RunningPod {
                    namespace: record.namespace.clone(),
                    name: record.name.clone(),
                    uid: record.uid.clone(),
                    pod_ip: record.pod_ip,
                    pid: process.pid(),
                    restart_count: record.restart_count,
                    workdir: record.workdir.clone(),
                    log_path: record.log_path.clone(),
                })
            })
            .collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        pods
    }

    /// Waits until `done` holds for [`Self::running_pods`], re-checking on every
    /// change (a process started, exited or was restarted) rather than polling.
    /// `what` describes the wait in the timeout error.
    pub async fn wait_for_pods(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[RunningPod]) -> bool,
    ) -> Result<Vec<RunningPod>, KubeletError> {
        let mut changes = self.shared.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Mark the current version seen before looking, so no change is missed.
            changes.borrow_and_update();
            let pods = self.running_pods();
            if done(&pods) {
                return Ok(pods);
            }
            // The sender lives in `self.shared`, so `changed` cannot fail here;
            // a process that exits is noticed by its pod worker, which notifies.
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return Err(KubeletError::Timeout {
                    what: what.to_owned(),
                    timeout,
                    running: describe(&self.running_pods()),
                });
            }
        }
    }

    /// Where every pod's directory (with its container logs) is kept.
    pub fn pods_dir(&self) -> PathBuf {
        self.shared.config.state_dir.join("pods")
    }

    /// Where the pod's process runs and logs (whether or not it runs now).
    pub fn pod_dir(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        container::PodDirs::new(&self.shared.config.state_dir, namespace, name, uid, "").workdir
    }
}

impl Drop for ProcessKubelet {
    fn drop(&mut self) {
        self.tasks.abort_all();
        // Aborted tasks are dropped later, on the runtime; the processes must not
        // wait for that (or outlive a runtime that is shutting down).
        self.shared.kill_all();
    }
}

fn describe(pods: &[RunningPod]) -> String {
    if pods.is_empty() {
        return "no pods".to_owned();
    }
    let mut text = String::new();
    for pod in pods {
        let _ = write!(
            text,
            "{}{}/{} (ip {}, pid {}, restarts {})",
            if text.is_empty() { "" } else { ", " },
            pod.namespace,
            pod.name,
            pod.pod_ip,
            pod.pid,
            pod.restart_count
        );
    }
    text
}

/// State shared by the kubelet's tasks and its handle.
pub(crate) struct Shared {
    pub(crate) config: KubeletConfig,
    registry: Mutex<Registry>,
    /// Bumped whenever a pod's process starts or stops.
    changes: watch::Sender<u64>,
}

#[derive(Default)]
struct Registry {
    /// Set once the kubelet is dropped: no process may be added after that.
    stopping: bool,
    pods: BTreeMap<String, PodRecord>,
}

struct PodRecord {
    namespace: String,
    name: String,
    uid: String,
    pod_ip: Ipv4Addr,
    workdir: PathBuf,
    log_path: PathBuf,
    restart_count: u32,
    process: Option<Arc<ManagedProcess>>,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // Every update leaves the registry consistent, so a poisoned lock is fine.
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The output file of pod `namespace/name`, while the kubelet knows it.
    fn log_path_of(&self, namespace: &str, name: &str) -> Option<PathBuf> {
        self.registry()
            .pods
            .values()
            .find(|r| r.namespace == namespace && r.name == name)
            .map(|r| r.log_path.clone())
    }

    fn notify(&self) {
        self.changes.send_modify(|version| *version += 1);
    }

    fn kill_all(&self) {
        let mut registry = self.registry();
        registry.stopping = true;
        for record in registry.pods.values() {
            if let Some(process) = &record.process {
                process.kill_hard();
            }
        }
    }

    /// Adds a pod (without a process yet); it is removed when the entry drops.
    pub(crate) fn register_pod(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
        uid: &str,
        pod_ip: Ipv4Addr,
        workdir: &Path,
        log_path: &Path,
    ) -> RegistryEntry {
        self.registry().pods.insert(
            uid.to_owned(),
            PodRecord {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                uid: uid.to_owned(),
                pod_ip,
                workdir: workdir.to_path_buf(),
                log_path: log_path.to_path_buf(),
                restart_count: 0,
                process: None,
            },
        );
        RegistryEntry {
            shared: self.clone(),
            uid: uid.to_owned(),
        }
    }
}

/// A pod worker's record in the registry.
pub(crate) struct RegistryEntry {
    shared: Arc<Shared>,
    uid: String,
}

impl RegistryEntry {
    /// Records the pod's current process (or none) and restart count. Returns
    /// `false` if the kubelet is being dropped: the caller must then kill the
    /// process itself, since the drop may already have swept the registry.
    pub(crate) fn set_process(
        &self,
        process: Option<Arc<ManagedProcess>>,
        restart_count: u32,
    ) -> bool {
        let accepted = {
            let mut registry = self.shared.registry();
            let stopping = registry.stopping;
            if let Some(record) = registry.pods.get_mut(&self.uid) {
                record.restart_count = restart_count;
                record.process = if stopping { None } else { process };
            }
            !stopping
        };
        self.shared.notify();
        accepted
    }
}

impl Drop for RegistryEntry {
    fn drop(&mut self) {
        self.shared.registry().pods.remove(&self.uid);
        self.shared.notify();
    }
}
