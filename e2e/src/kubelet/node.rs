//! The kubelet's Node: registration, and the heartbeats that keep
//! kube-controller-manager's node lifecycle controller from tainting it
//! (`node.kubernetes.io/unreachable:NoExecute`) and evicting its pods.
//!
//! Like a kubelet, it renews its Lease in `kube-node-lease` every 10 s (the node
//! lifecycle controller treats a renewed Lease as a heartbeat) and re-posts the
//! Node's status with fresh heartbeat times on the same period.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

use super::{FIELD_MANAGER, KubeletError};

pub(crate) const HOST_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;
const LEASE_NAMESPACE: &str = "kube-node-lease";
/// As the kubelet: a 40 s lease renewed every 10 s.
const LEASE_DURATION_SECONDS: i32 = 40;
pub(crate) const HEARTBEAT_PERIOD: Duration = Duration::from_secs(10);
/// The version this kubelet claims; it speaks the v1.37 API.
const KUBELET_VERSION: &str = "v1.37.0-drover-process-kubelet";

/// Generous, so that no resource request ever keeps a pod off the node.
pub(crate) fn allocatable() -> BTreeMap<String, Quantity> {
    [
        ("cpu", "64"),
        ("memory", "256Gi"),
        ("ephemeral-storage", "1Ti"),
        ("pods", "1000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
    .collect()
}

/// A registered Node and what its heartbeats need.
pub(crate) struct NodeHandle {
    client: Client,
    name: String,
    uid: String,
    registered_at: Timestamp,
    /// Where the apiserver reaches this kubelet's log endpoint.
    kubelet_port: u16,
}

/// Creates (or takes over) the Node, posts its Ready status and creates its Lease.
pub(crate) async fn register(
    client: &Client,
    name: &str,
    kubelet_port: u16,
) -> Result<NodeHandle, KubeletError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_owned(), name.to_owned()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        ("kubernetes.io/arch".to_owned(), go_arch().to_owned()),
        ("drover.dev/process-kubelet".to_owned(), "true".to_owned()),
    ]);
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    let registered = nodes
        .patch(name, &apply, &Patch::Apply(&node))
        .await
        .map_err(|source| KubeletError::RegisterNode {
            node: name.to_owned(),
            action: "create the Node",
            source,
        })?;
    let uid = registered.metadata.uid.ok_or_else(|| {
        KubeletError::InvalidConfig(format!("the apiserver returned Node {name} without a uid"))
    })?;
    let handle = NodeHandle {
        client: client.clone(),
        name: name.to_owned(),
        uid,
        registered_at: Timestamp::now(),
        kubelet_port,
    };
    handle
        .post_status()
        .await
        .map_err(|source| KubeletError::RegisterNode {
            node: name.to_owned(),
            action: "post the Node's status",
            source,
        })?;
    handle
        .renew_lease()
        .await
        .map_err(|source| KubeletError::RegisterNode {
            node: name.to_owned(),
            action: "create the Node's Lease",
            source,
        })?;
    Ok(handle)
}

impl NodeHandle {
    /// Heartbeats until the task is aborted. Failures are logged and retried on
    /// the next beat: one missed beat is harmless (the grace period is 40 s+).
    pub(crate) async fn heartbeat(self) {
        let mut ticks = tokio::time::interval(HEARTBEAT_PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate, and registration just did the work.
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if let Err(error) = self.renew_lease().await {
                tracing::warn!(node = %self.name, %error, "cannot renew the node Lease");
            }
            if let Err(error) = self.post_status().await {
                tracing::warn!(node = %self.name, %error, "cannot post the node status");
            }
        }
    }

    async fn renew_lease(&self) -> Result<Lease, kube::Error> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(LEASE_NAMESPACE.to_owned()),
                // As the kubelet does: the Lease goes when the Node goes.
                owner_references: Some(vec![OwnerReference {
                    api_version: "v1".to_owned(),
                    kind: "Node".to_owned(),
                    name: self.name.clone(),
                    uid: self.uid.clone(),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.name.clone()),
                lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..LeaseSpec::default()
            }),
        };
        leases
            .patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await
    }

    async fn post_status(&self) -> Result<Node, kube::Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let now = Time(Timestamp::now());
        let since = Time(self.registered_at);
        let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(since.clone()),
        };
        let status = NodeStatus {
            capacity: Some(allocatable()),
            allocatable: Some(allocatable()),
            conditions: Some(vec![
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                condition(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                condition(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
                condition(
                    "Ready",
                    "True",
                    "KubeletReady",
                    "the drover process kubelet is posting ready status",
                ),
            ]),
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".to_owned(),
                    address: HOST_IP.to_string(),
                },
                NodeAddress {
                    type_: "Hostname".to_owned(),
                    address: self.name.clone(),
                },
            ]),
            node_info: Some(system_info()),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint {
                    port: i32::from(self.kubelet_port),
                }),
            }),
            ..NodeStatus::default()
        };
        let body = Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            status: Some(status),
            ..Node::default()
        };
        nodes
            .patch_status(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
    }
}

fn system_info() -> NodeSystemInfo {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    NodeSystemInfo {
        architecture: go_arch().to_owned(),
        operating_system: "linux".to_owned(),
        kernel_version: read("/proc/sys/kernel/osrelease"),
        boot_id: read("/proc/sys/kernel/random/boot_id"),
        machine_id: read("/etc/machine-id"),
        os_image: "drover process kubelet (host processes)".to_owned(),
        container_runtime_version: "process://drover-e2e".to_owned(),
        kubelet_version: KUBELET_VERSION.to_owned(),
        ..NodeSystemInfo::default()
    }
}

/// Kubernetes names architectures the Go way.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}
