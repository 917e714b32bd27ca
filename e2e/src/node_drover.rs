//! Drover on the real node, as the sandbox and the node's pipeline tests run
//! it: the node ([`crate::node::Node`]), the chart's images built from this
//! build's binaries and loaded into its containerd, the Pub/Sub emulator
//! inside its network namespace, the chart installed with helm as the
//! README's block does (the operator a real container), optionally a real
//! Prometheus scraping pod IPs, and services of this machine's loopback
//! (a model server, a media server) made reachable from pods.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::node::chart;
use crate::node::namespaces::{Forwarder, NODE_IP};
use crate::node::prometheus::{NodePrometheus, NodePrometheusError};
use crate::node::{Node, NodeEmulator, NodeError, Teardown};
use crate::testenv::TestEnvBinaries;

/// What to start besides the node and the emulator.
#[derive(Debug, Clone, Copy)]
pub struct NodeDroverOptions {
    /// `helm install` the chart (off: a node ready for a user's own install).
    pub install_chart: bool,
    /// Start Prometheus on the node.
    pub prometheus: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeDroverError {
    #[error("the real node")]
    Node(#[from] NodeError),
    #[error("cannot build helm")]
    Helm(#[from] crate::TestEnvError),
    #[error("helm install of the chart failed: {0}")]
    Install(String),
    #[error("Prometheus on the node")]
    Prometheus(#[from] NodePrometheusError),
}

/// The running stack. Dropping it stops everything, the node last.
#[derive(Debug)]
pub struct NodeDrover {
    pub emulator: NodeEmulator,
    pub prometheus: Option<NodePrometheus>,
    pub helm: PathBuf,
    exposed: Vec<Forwarder>,
    // Last, so it is dropped last: everything above runs on it.
    pub node: Node,
}

impl NodeDrover {
    /// Starts the node with its state in `state_dir`, loads the chart's
    /// images, starts the emulator, and, as `options` say, installs the
    /// chart and starts Prometheus. Every step is reported to `progress`.
    pub async fn start(
        bins: &TestEnvBinaries,
        state_dir: &Path,
        options: NodeDroverOptions,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Self, NodeDroverError> {
        let node = Node::start(bins, state_dir, progress).await?;
        let started = std::time::Instant::now();
        let images = node.load_chart_images()?;
        progress(&format!(
            "node: loaded {} into containerd in {:.1} s",
            images.join(" and "),
            started.elapsed().as_secs_f64()
        ));
        let emulator = node.start_pubsub_emulator(&bins.pubsub_emulator).await?;
        progress(&format!(
            "node: Pub/Sub emulator at {} (pods) and {} (this machine)",
            emulator.pod_host(),
            emulator.local_host()
        ));
        let helm = crate::testenv::ensure_helm(progress)?;
        if options.install_chart {
            let started = std::time::Instant::now();
            chart::install(
                &helm,
                node.control_plane().kubeconfig_path(),
                &emulator.pod_host(),
            )
            .map_err(NodeDroverError::Install)?;
            progress(&format!(
                "node: helm installed the chart (release {} in {}) in {:.1} s",
                chart::RELEASE,
                chart::OPERATOR_NAMESPACE,
                started.elapsed().as_secs_f64()
            ));
        }
        let prometheus = if options.prometheus {
            let client = node
                .control_plane()
                .client()
                .await
                .map_err(NodeError::from)?;
            let prometheus = NodePrometheus::start(
                &node,
                &crate::observe::prometheus(),
                client,
                &state_dir.join("prometheus"),
            )
            .await?;
            progress(&format!(
                "node: Prometheus at http://{}, scraping Drover's pods at their pod IPs",
                prometheus.address()
            ));
            Some(prometheus)
        } else {
            None
        };
        Ok(Self {
            emulator,
            prometheus,
            helm,
            exposed: Vec::new(),
            node,
        })
    }

    /// An admin client, over this machine's loopback.
    pub async fn client(&self) -> Result<kube::Client, crate::ControlPlaneError> {
        self.node.control_plane().client().await
    }

    /// Makes `127.0.0.1:port` of this machine reachable from pods, for as
    /// long as this stack runs; returns the address pods use.
    pub fn expose(&mut self, port: u16) -> std::io::Result<SocketAddr> {
        let forward = self.node.expose_loopback_port(port)?;
        self.exposed.push(forward);
        Ok(SocketAddr::from((NODE_IP, port)))
    }

    /// Stops everything, the node last, and says what it left behind.
    pub fn stop(self) -> Result<Teardown, NodeError> {
        let Self {
            emulator,
            prometheus,
            exposed,
            node,
            ..
        } = self;
        drop(prometheus);
        drop(exposed);
        drop(emulator);
        node.stop()
    }
}

/// `url` (an http URL on this machine's loopback) as pods reach it once its
/// port is exposed with [`NodeDrover::expose`]: the same URL at [`NODE_IP`],
/// and the port. `None` for a URL not on loopback, which pods reach as it is.
pub fn pod_url_for_loopback(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let default_port = if scheme == "https" { 443 } else { 80 };
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, rest) = v6.split_once(']')?;
            let port = match rest.strip_prefix(':') {
                Some(port) => port.parse::<u16>().ok()?,
                None => default_port,
            };
            (host, port)
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse::<u16>().ok()?),
            None => (authority, default_port),
        },
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback.then(|| (format!("{scheme}://{NODE_IP}:{port}{path}"), port))
}

/// The range a fleet's `spec.egress.allowedCidrs` names for what pods reach
/// at [`NODE_IP`] (the node's address is in the private ranges workers
/// refuse unless allowed).
pub fn node_ip_range() -> String {
    format!("{NODE_IP}/32")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_url_moves_to_the_node_address_with_its_port() {
        assert_eq!(
            pod_url_for_loopback("http://127.0.0.1:41234/v1"),
            Some(("http://10.201.0.1:41234/v1".to_owned(), 41234))
        );
        assert_eq!(
            pod_url_for_loopback("http://localhost:11434/v1"),
            Some(("http://10.201.0.1:11434/v1".to_owned(), 11434))
        );
        assert_eq!(
            pod_url_for_loopback("http://[::1]:8000"),
            Some(("http://10.201.0.1:8000".to_owned(), 8000))
        );
        assert_eq!(
            pod_url_for_loopback("http://127.0.0.1/v1"),
            Some(("http://10.201.0.1:80/v1".to_owned(), 80))
        );
    }

    #[test]
    fn a_url_elsewhere_is_left_alone() {
        assert_eq!(pod_url_for_loopback("https://api.openai.com/v1"), None);
        assert_eq!(pod_url_for_loopback("http://10.0.0.5:8000/v1"), None);
        assert_eq!(pod_url_for_loopback("not a url"), None);
    }
}
