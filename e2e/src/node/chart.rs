//! Drover on the node the way a user installs it: the Helm chart, with the
//! images [`super::Node::load_chart_images`] loaded, and what the kubelet
//! then reports about each container.

use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

/// The namespace the README's helm block installs the operator into.
pub const OPERATOR_NAMESPACE: &str = "drover-system";
/// The release name of the README's helm block.
pub const RELEASE: &str = "drover";

/// `helm install drover charts/drover` into [`OPERATOR_NAMESPACE`] with the
/// values the README's `helm-install` block sets: the emulator at
/// `pubsub_emulator_host` (an address pods on the node reach), and `--wait`
/// for the operator's pod to be Ready. Returns helm's output.
pub fn install(
    helm: &Path,
    kubeconfig: &Path,
    pubsub_emulator_host: &str,
) -> Result<String, String> {
    let kubeconfig = kubeconfig.display().to_string();
    let emulator = format!("pubsub.emulatorHost={pubsub_emulator_host}");
    let project = format!("pubsub.projectId={}", crate::drover::PUBSUB_PROJECT);
    crate::observe::run(
        helm,
        &[
            "install",
            RELEASE,
            "charts/drover",
            "--kubeconfig",
            &kubeconfig,
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            "--set",
            &project,
            "--set",
            &emulator,
            "--wait",
            "--timeout",
            "2m",
        ],
    )
}

/// One container of a pod, as its kubelet reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerReport {
    pub pod: String,
    pub container: String,
    /// The image as the runtime resolved it (`docker.io/library/...`).
    pub image: String,
    /// `containerd://<id>` on the real node; empty until it started.
    pub container_id: String,
    pub pod_ip: String,
    pub node: String,
}

impl std::fmt::Display for ContainerReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} on {} at {}: {} {}",
            self.pod, self.container, self.node, self.pod_ip, self.image, self.container_id
        )
    }
}

/// Every container of every pod in `namespace`.
pub async fn containers(
    client: &kube::Client,
    namespace: &str,
) -> Result<Vec<ContainerReport>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut reports = Vec::new();
    for pod in pods.list(&ListParams::default()).await?.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let Some(status) = pod.status else { continue };
        let pod_ip = status.pod_ip.clone().unwrap_or_default();
        for container in status.container_statuses.into_iter().flatten() {
            reports.push(ContainerReport {
                pod: name.clone(),
                container: container.name,
                image: container.image,
                container_id: container.container_id.unwrap_or_default(),
                pod_ip: pod_ip.clone(),
                node: node.clone(),
            });
        }
    }
    Ok(reports)
}

/// The name containerd gives the chart's image `name` (`drover-worker`):
/// `docker.io/library/drover-worker:<appVersion>`.
pub fn chart_image(name: &str) -> String {
    super::full_reference(&format!("{name}:{}", env!("CARGO_PKG_VERSION")))
}
