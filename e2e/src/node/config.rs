//! The node's configuration files: containerd's, the CNI network's, the
//! kubelet's and kube-proxy's. Every path is under the node's state
//! directory or its private /run, every address on loopback or inside the
//! node's network namespace.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::namespaces::NODE_IP;

/// The pod network: a bridge inside the node's network namespace, with a
/// subnet that exists nowhere else.
pub const POD_CIDR: &str = "10.202.0.0/24";
/// containerd's socket, inside the node's private /run.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// The kubelet's API port on [`NODE_IP`].
pub const KUBELET_PORT: u16 = 10250;
/// The kubelet's /healthz, on the namespace's loopback.
pub const KUBELET_HEALTHZ_PORT: u16 = 10248;
/// The sandbox image, built by [`super::images::pause_image`].
pub const PAUSE_IMAGE: &str = "drover.local/pause:1";
/// Where Debian's containernetworking-plugins keeps the plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// Where each file of the node goes.
#[derive(Debug, Clone)]
pub struct NodePaths {
    pub state_dir: PathBuf,
}

impl NodePaths {
    pub fn containerd_config(&self) -> PathBuf {
        self.state_dir.join("containerd.toml")
    }
    pub fn containerd_root(&self) -> PathBuf {
        self.state_dir.join("containerd")
    }
    pub fn cni_dir(&self) -> PathBuf {
        self.state_dir.join("cni")
    }
    pub fn kubelet_dir(&self) -> PathBuf {
        self.state_dir.join("kubelet")
    }
    pub fn kubelet_config(&self) -> PathBuf {
        self.state_dir.join("kubelet.json")
    }
    pub fn kube_proxy_config(&self) -> PathBuf {
        self.state_dir.join("kube-proxy.json")
    }
    pub fn resolv_conf(&self) -> PathBuf {
        self.state_dir.join("resolv.conf")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }
}

/// containerd 1.6's configuration (version 2). `restrict_oom_score_adj`:
/// root here lacks CAP_SYS_RESOURCE, so runc cannot lower a container's
/// `oom_score_adj`, and without it every sandbox fails with "can't get final
/// child's PID from pipe: EOF".
pub fn containerd_toml(paths: &NodePaths) -> String {
    let root = paths.containerd_root();
    let cni = paths.cni_dir();
    format!(
        r#"version = 2
root = "{root}"
state = "/run/containerd"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{CONTAINERD_SOCKET}"

[plugins."io.containerd.internal.v1.opt"]
  path = "/run/containerd-opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni}"
    max_conf_num = 1
"#,
        root = root.display(),
        cni = cni.display(),
    )
}

/// The pod network: bridge + host-local + portmap. IPAM state lives in the
/// node's /run, so it goes with the namespace.
pub fn cni_conflist() -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "drover-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "drover0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": POD_CIDR }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": "/run/cni-ipam",
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    })
}

/// The kubelet's KubeletConfiguration.
pub fn kubelet_config(paths: &NodePaths, cgroup_root: &str, client_ca: &Path) -> serde_json::Value {
    json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        // The machine is cgroup v1 (hybrid); the kubelet then only warns.
        "failCgroupV1": false,
        // containerd 1.6 has no cgroup driver to report; the kubelet uses this one.
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "containerRuntimeEndpoint": format!("unix://{CONTAINERD_SOCKET}"),
        "address": NODE_IP.to_string(),
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": Ipv4Addr::LOCALHOST.to_string(),
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "enabled": true },
            "x509": { "clientCAFile": client_ca },
        },
        "authorization": { "mode": "Webhook" },
        "clusterDomain": "cluster.local",
        "resolvConf": paths.resolv_conf(),
        "failSwapOn": false,
        // The kubelet's three global sysctls are files of the node's own
        // (see namespaces::KUBELET_SYSCTLS); with `true` it would refuse to start.
        "protectKernelDefaults": false,
        // The machine's disk is shared: never evict or collect images for it.
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": false,
        "rotateCertificates": false,
        "shutdownGracePeriod": "0s",
        "volumePluginDir": paths.kubelet_dir().join("volume-plugins"),
        "nodeStatusUpdateFrequency": "2s",
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
    })
}

/// kube-proxy's configuration: iptables mode, its rules only in the node's
/// network namespace, and no conntrack sysctls (global, and read-only outside
/// the machine's first network namespace).
pub fn kube_proxy_config(kubeconfig: &Path, node_name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": { "kubeconfig": kubeconfig },
        "hostnameOverride": node_name,
        "clusterCIDR": POD_CIDR,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": { "minSyncPeriod": "0s", "syncPeriod": "30s" },
    })
}

/// Pods get no DNS server: nothing may leave the node's network namespace,
/// and in-cluster clients find the apiserver by the Service IP in their env.
pub const RESOLV_CONF: &str = "# drover-e2e node: no DNS server\nnameserver 127.0.0.1\n";
