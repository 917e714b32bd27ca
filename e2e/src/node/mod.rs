//! A real node for the tests: Debian's containerd 1.6, runc and CNI plugins
//! with kubelet, kube-scheduler and kube-proxy v1.37 (built with the rest of
//! the test environment), pods in real containers on a real pod network.
//!
//! Everything runs in namespaces the harness creates ([`namespaces`]):
//! * a network namespace of its own, holding the node's address
//!   ([`namespaces::NODE_IP`], on its loopback device), the pod bridge and
//!   kube-proxy's iptables rules; nothing is reachable from it but itself;
//! * a private mount and PID namespace for containerd, the kubelet and
//!   kube-proxy: their /run, the kubelet's three global sysctls and every
//!   container mount are private, and the kernel kills every process left
//!   when the namespace goes.
//!
//! The control plane ([`ControlPlane::start_in`]) runs in the node's network
//! namespace too, not on the machine's loopback: the apiserver must reach the
//! kubelet (logs, exec, port-forward) and pods at addresses that exist only
//! inside it, and pods must reach the apiserver through the `kubernetes`
//! Service at an advertised, non-loopback address. Keeping it outside would
//! need forwarders both ways and an address for the node outside the
//! namespace. The test process and the user's shell reach it over loopback,
//! at the same `https://127.0.0.1:<port>`, through one forwarder.
//!
//! One node per test binary: names (cgroups, directories) carry the pid.

pub mod cgroups;
pub mod chart;
pub mod config;
pub mod images;
pub mod namespaces;
pub mod prometheus;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::Api;

use crate::certs::{self, CertAndKey};
use crate::control_plane::{ControlPlane, ControlPlaneError, write_kubeconfig};
use crate::process::{self, LogTail, ManagedProcess, ProcessError};
use crate::testenv::TestEnvBinaries;
use cgroups::CgroupRoot;
use config::NodePaths;
use images::{ImageError, ImageSpec};
use namespaces::{NamespaceError, NodeNamespaces};

/// The node's name (and the kubelet's `--hostname-override`).
pub const NODE_NAME: &str = "drover-node";
/// Prefix of the node's state directory and cgroup root; the pid follows.
pub const NODE_PREFIX: &str = "drover-node-";

const CONTAINERD_READY: &str = "containerd successfully booted";
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(30);
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(60);
const KUBELET_GRACE: Duration = Duration::from_secs(5);
const PROCESSES_GONE_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_TAIL_LINES: usize = 40;

/// A Pub/Sub emulator inside the node's network namespace; stops on drop.
#[derive(Debug)]
pub struct NodeEmulator {
    pub process: ManagedProcess,
    pub port: u16,
    _forward: namespaces::Forwarder,
}

impl NodeEmulator {
    /// `PUBSUB_EMULATOR_HOST` for pods on the node.
    pub fn pod_host(&self) -> String {
        format!("{}:{}", namespaces::NODE_IP, self.port)
    }

    /// `PUBSUB_EMULATOR_HOST` for the test process.
    pub fn local_host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{context} {}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the node's cgroup root")]
    Cgroups(#[source] io::Error),
    #[error(transparent)]
    Namespaces(#[from] NamespaceError),
    #[error("cannot start the control plane in the node's network namespace")]
    ControlPlane(#[from] ControlPlaneError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("cannot create the node's certificates")]
    Certs(#[from] certs::CertError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Binary(#[from] crate::drover::DroverBinaryError),
    #[error("the node did not become Ready within {timeout:?} (last: {last})\n{log}")]
    NotReady {
        timeout: Duration,
        last: String,
        log: LogTail,
    },
    #[error("{component} exited ({status}) while the node was starting\n{log}")]
    Exited {
        component: String,
        status: String,
        log: LogTail,
    },
    #[error(
        "the real node needs {}, which this machine lacks: `cargo xtask test` installs \
         them (apt-get install -y containerd runc containernetworking-plugins iptables \
         conntrack), and the node runs as root",
        .0.join(", ")
    )]
    Missing(Vec<String>),
    #[error("cgroups left behind after the node stopped: {0:?}")]
    CgroupsLeft(Vec<PathBuf>),
}

fn io_err(context: &'static str, path: &Path) -> impl FnOnce(io::Error) -> NodeError + use<> {
    let path = path.to_path_buf();
    move |source| NodeError::Io {
        context,
        path,
        source,
    }
}

/// A running node and its control plane. Dropping it stops everything;
/// [`Node::stop`] does the same and says how long it took.
#[derive(Debug)]
pub struct Node {
    parts: Option<Parts>,
    cgroups: CgroupRoot,
    paths: NodePaths,
    startup: Duration,
    /// Inodes of the node's namespaces, to look for leftovers after it stopped.
    namespace_ids: Vec<String>,
}

#[derive(Debug)]
struct Parts {
    kube_proxy: ManagedProcess,
    scheduler: ManagedProcess,
    kubelet: ManagedProcess,
    containerd: ManagedProcess,
    control_plane: ControlPlane,
    namespaces: NodeNamespaces,
}

/// What [`Node::stop`] measured and found.
#[derive(Debug)]
pub struct Teardown {
    pub duration: Duration,
    /// Anything of the node still there afterwards (processes, mounts,
    /// namespaces, cgroups), described; empty when it left nothing.
    pub leftovers: Vec<String>,
}

impl Teardown {
    /// Panics, naming what is left, unless the node left nothing behind.
    pub fn assert_clean(&self) {
        assert!(
            self.leftovers.is_empty(),
            "the node left things behind:\n{}",
            self.leftovers.join("\n")
        );
    }
}

impl Node {
    /// Starts the node with its state in `state_dir` (recreated): the
    /// namespaces, the control plane, containerd with the pause image, the
    /// kubelet, kube-scheduler and kube-proxy; returns once the node is Ready.
    pub async fn start(
        bins: &TestEnvBinaries,
        state_dir: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Self, NodeError> {
        let started = Instant::now();
        let missing = missing_prerequisites();
        if !missing.is_empty() {
            return Err(NodeError::Missing(missing));
        }
        // Logs only, by then: the janitor removed the container storage.
        crate::remove_stale_state_dirs(NODE_PREFIX);
        if state_dir.exists() {
            fs::remove_dir_all(state_dir).map_err(io_err("cannot remove the old", state_dir))?;
        }
        fs::create_dir_all(state_dir).map_err(io_err("cannot create", state_dir))?;
        let paths = NodePaths {
            state_dir: state_dir.to_path_buf(),
        };
        let cgroup_name = format!("{NODE_PREFIX}{}", std::process::id());
        let cgroups = CgroupRoot::create(&cgroup_name, &paths.containerd_root())
            .map_err(NodeError::Cgroups)?;
        let namespaces = NodeNamespaces::start(state_dir).await?;
        let namespace_ids = namespace_ids(namespaces.holder_pid());

        write_configs(&paths)?;
        let containerd = ManagedProcess::spawn(
            "containerd",
            {
                let mut cmd = namespaces.node_command("containerd");
                cmd.arg("--config").arg(paths.containerd_config());
                cmd
            },
            &state_dir.join("containerd.log"),
        )?;
        let images_dir = paths.images_dir();
        let pause = tokio::task::spawn_blocking(move || {
            fs::create_dir_all(&images_dir)
                .map_err(io_err("cannot create", &images_dir))
                .and_then(|()| images::pause_image(&images_dir).map_err(NodeError::from))
        });
        // The control plane and containerd start side by side.
        let control_plane =
            ControlPlane::start_in(bins, &state_dir.join("control-plane"), Some(&namespaces))
                .await?;
        progress(&format!(
            "node: control plane ready in the node's network namespace after {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        containerd
            .wait_for_line(CONTAINERD_READY, CONTAINERD_TIMEOUT)
            .await?;
        let pause = pause.await.map_err(|e| {
            io_err("the pause image build panicked in", state_dir)(io::Error::other(e))
        })??;
        import_image(&namespaces, &pause)?;

        let pki = control_plane.pki();
        let kubelet_identity = certs::issue_client(
            pki,
            "kubelet",
            &format!("system:node:{NODE_NAME}"),
            Some("system:nodes"),
        )?;
        let proxy_identity = certs::issue_client(pki, "kube-proxy", "system:kube-proxy", None)?;
        let scheduler_identity =
            certs::issue_client(pki, "kube-scheduler", "system:kube-scheduler", None)?;
        let server = control_plane.server_url().to_owned();
        let kubeconfig = |name: &str, identity: &CertAndKey, user: &str| {
            let path = state_dir.join(format!("{name}.kubeconfig"));
            write_kubeconfig(&path, &server, &pki.ca, identity, user).map(|()| path)
        };
        let kubelet_kubeconfig = kubeconfig(
            "kubelet",
            &kubelet_identity,
            &format!("system:node:{NODE_NAME}"),
        )?;
        let proxy_kubeconfig = kubeconfig("kube-proxy", &proxy_identity, "system:kube-proxy")?;
        let scheduler_kubeconfig = kubeconfig(
            "kube-scheduler",
            &scheduler_identity,
            "system:kube-scheduler",
        )?;

        write_json(
            &paths.kubelet_config(),
            &config::kubelet_config(&paths, cgroups.name(), &pki.ca.cert),
        )?;
        write_json(
            &paths.kube_proxy_config(),
            &config::kube_proxy_config(&proxy_kubeconfig, NODE_NAME),
        )?;
        let kubelet_dir = paths.kubelet_dir();
        let mut cmd = namespaces.node_command(&bins.kubelet);
        cmd.arg(format!("--config={}", paths.kubelet_config().display()))
            .arg(format!("--kubeconfig={}", kubelet_kubeconfig.display()))
            .arg(format!("--root-dir={}", kubelet_dir.display()))
            .arg(format!("--cert-dir={}", kubelet_dir.join("pki").display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--node-ip={}", namespaces::NODE_IP))
            .arg("--v=1");
        let kubelet = ManagedProcess::spawn("kubelet", cmd, &state_dir.join("kubelet.log"))?;

        let mut cmd = namespaces.net_command(&bins.kube_scheduler);
        cmd.arg(format!("--kubeconfig={}", scheduler_kubeconfig.display()))
            .arg(format!(
                "--authentication-kubeconfig={}",
                scheduler_kubeconfig.display()
            ))
            .arg(format!(
                "--authorization-kubeconfig={}",
                scheduler_kubeconfig.display()
            ))
            .arg("--secure-port=0")
            .arg("--leader-elect=false");
        let scheduler =
            ManagedProcess::spawn("kube-scheduler", cmd, &state_dir.join("kube-scheduler.log"))?;

        // In the mount namespace too: its iptables lock is the node's /run.
        let mut cmd = namespaces.node_command(&bins.kube_proxy);
        cmd.arg(format!("--config={}", paths.kube_proxy_config().display()));
        let kube_proxy =
            ManagedProcess::spawn("kube-proxy", cmd, &state_dir.join("kube-proxy.log"))?;

        let parts = Parts {
            kube_proxy,
            scheduler,
            kubelet,
            containerd,
            control_plane,
            namespaces,
        };
        wait_until_ready(&parts).await?;
        let startup = started.elapsed();
        progress(&format!(
            "node: {NODE_NAME} Ready in {:.1} s; state and logs in {}",
            startup.as_secs_f64(),
            state_dir.display()
        ));
        Ok(Self {
            parts: Some(parts),
            cgroups,
            paths,
            startup,
            namespace_ids,
        })
    }

    /// The control plane the node is registered with.
    pub fn control_plane(&self) -> &ControlPlane {
        &self.parts().control_plane
    }

    /// How long [`Node::start`] took.
    pub fn startup_duration(&self) -> Duration {
        self.startup
    }

    pub fn state_dir(&self) -> &Path {
        &self.paths.state_dir
    }

    /// The kubelet's process, for its log.
    pub fn kubelet(&self) -> &ManagedProcess {
        &self.parts().kubelet
    }

    /// Loads an image archive into the node's containerd (the `k8s.io`
    /// namespace, where the kubelet looks).
    pub fn load_image(&self, archive: &Path) -> Result<(), NodeError> {
        import_image(&self.parts().namespaces, archive)
    }

    /// Builds the image of a Drover binary of this workspace (see
    /// [`images::drover_image`]) under `reference` and loads it.
    pub fn load_drover_image(&self, binary: &Path, reference: &str) -> Result<(), NodeError> {
        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let spec = ImageSpec {
            reference: full_reference(reference),
            user: "65532:65532".to_owned(),
            entrypoint: vec![format!("/usr/local/bin/{name}")],
            labels: vec![
                ("org.opencontainers.image.title".to_owned(), name.clone()),
                (
                    "org.opencontainers.image.version".to_owned(),
                    env!("CARGO_PKG_VERSION").to_owned(),
                ),
            ],
        };
        let cache = crate::workspace_root()
            .join("target")
            .join("drover-node-images");
        let archive = images::drover_image(binary, &spec, &cache)?;
        self.load_image(&archive)
    }

    /// `program` in the node's network namespace (a helper a test needs
    /// next to the control plane, e.g. the Pub/Sub emulator on [`namespaces::NODE_IP`]).
    pub fn net_command(&self, program: &Path) -> Command {
        self.parts().namespaces.net_command(program)
    }

    /// Forwards `127.0.0.1:port` of the test process to the same port in the
    /// node's network namespace, until the returned value is dropped.
    pub fn forward_loopback_port(&self, port: u16) -> io::Result<namespaces::Forwarder> {
        self.parts().namespaces.forward_loopback_port(port)
    }

    /// Makes `127.0.0.1:port` of this machine (a model server, a media
    /// server) reachable from pods at `NODE_IP:port`, until the returned
    /// value is dropped.
    pub fn expose_loopback_port(&self, port: u16) -> io::Result<namespaces::Forwarder> {
        self.parts().namespaces.expose_loopback_port(port)
    }

    /// A Pub/Sub emulator in the node's network namespace on a free port:
    /// pods reach it at `NODE_IP:port`, the test at `127.0.0.1:port`.
    pub async fn start_pubsub_emulator(&self, bin: &Path) -> Result<NodeEmulator, NodeError> {
        let port = crate::ports::free_loopback_ports(1)
            .ok()
            .and_then(|ports| ports.first().copied())
            .ok_or_else(|| NodeError::Io {
                context: "cannot find a free port for the emulator in",
                path: self.state_dir().to_path_buf(),
                source: io::Error::other("no free loopback port"),
            })?;
        let mut command = self.net_command(bin);
        command.arg("--listen").arg(format!("0.0.0.0:{port}"));
        let process = ManagedProcess::spawn(
            "pubsub-emulator",
            command,
            &self.state_dir().join("pubsub.log"),
        )?;
        process
            .wait_for_line(
                crate::pubsub_emulator::READY_LINE,
                crate::pubsub_emulator::START_TIMEOUT,
            )
            .await?;
        let forward = self
            .forward_loopback_port(port)
            .map_err(|source| NodeError::Io {
                context: "cannot forward the emulator's port into",
                path: self.state_dir().to_path_buf(),
                source,
            })?;
        Ok(NodeEmulator {
            process,
            port,
            _forward: forward,
        })
    }

    /// Loads the operator's and the worker's images, from this build's
    /// `drover-operator` and `drover-worker`, under the names the chart uses
    /// by default (`drover-operator:<appVersion>`, `drover-worker:<appVersion>`;
    /// the chart's appVersion is the workspace version). Returns the two names.
    pub fn load_chart_images(&self) -> Result<[String; 2], NodeError> {
        let load = |name: &'static str| -> Result<String, NodeError> {
            let reference = format!("{name}:{}", env!("CARGO_PKG_VERSION"));
            self.load_drover_image(&crate::drover::binary(name)?, &reference)?;
            Ok(reference)
        };
        Ok([load("drover-operator")?, load("drover-worker")?])
    }

    /// Runs `ctr` against the node's containerd with `args`, returning its output.
    pub fn ctr(&self, args: &[&str]) -> Result<String, NodeError> {
        let mut cmd = self.parts().namespaces.node_command("ctr");
        cmd.args(["--address", config::CONTAINERD_SOCKET, "-n", "k8s.io"])
            .args(args);
        let output = cmd
            .output()
            .map_err(io_err("cannot run", Path::new("ctr")))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Stops everything and removes the node's cgroups and container
    /// storage, then looks for anything left behind.
    pub fn stop(mut self) -> Result<Teardown, NodeError> {
        let started = Instant::now();
        self.shut_down()?;
        let duration = started.elapsed();
        Ok(Teardown {
            duration,
            leftovers: self.leftovers(),
        })
    }

    fn shut_down(&mut self) -> Result<(), NodeError> {
        if let Some(parts) = self.parts.take() {
            // The kubelet first (it would restart what goes next), then what
            // runs pods; the holder's death kills every shim and container;
            // the control plane last, etcd last of all (its own drop order).
            parts.kubelet.stop(KUBELET_GRACE);
            parts.kube_proxy.stop(process::DEFAULT_GRACE);
            parts.scheduler.stop(process::DEFAULT_GRACE);
            parts.containerd.stop(process::DEFAULT_GRACE);
            parts.namespaces.kill();
            drop(parts.control_plane);
            drop(parts.namespaces);
            // Killed processes stay zombies until the machine's init reaps
            // them (they were reparented there); wait for that.
            let deadline = Instant::now() + PROCESSES_GONE_TIMEOUT;
            while !processes_in(&self.namespace_ids).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.cgroups.remove().map_err(NodeError::CgroupsLeft)?;
        let storage = self.paths.containerd_root();
        if storage.exists() {
            fs::remove_dir_all(&storage).map_err(io_err("cannot remove", &storage))?;
        }
        Ok(())
    }

    /// Processes still in the node's namespaces, mounts under its state
    /// directory or of its namespaces, and cgroups of its root.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = processes_in(&self.namespace_ids);
        let state = self.paths.state_dir.to_string_lossy().into_owned();
        if let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") {
            for line in mounts.lines() {
                let namespace_mount = self
                    .namespace_ids
                    .iter()
                    .any(|id| line.contains(id.as_str()));
                if line.contains(&state) || namespace_mount {
                    found.push(format!("mount: {line}"));
                }
            }
        }
        for dir in self.cgroups.remaining() {
            found.push(format!("cgroup {}", dir.display()));
        }
        found
    }

    fn parts(&self) -> &Parts {
        // Only `stop` (which consumes the node) and `drop` take the parts.
        self.parts
            .as_ref()
            .expect("the node's parts are present until it stops")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = self.shut_down() {
            tracing::warn!(error = %crate::error_chain(&e), "the node did not stop cleanly");
        }
    }
}

/// `drover-worker:0.1.0` as containerd stores it (`docker.io/library/...`).
pub fn full_reference(reference: &str) -> String {
    let first = reference.split('/').next().unwrap_or_default();
    let has_domain = reference.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    match (has_domain, reference.contains('/')) {
        (true, _) => reference.to_owned(),
        (false, true) => format!("docker.io/{reference}"),
        (false, false) => format!("docker.io/library/{reference}"),
    }
}

/// What the node runs that is not built here, and root; named when absent.
pub fn missing_prerequisites() -> Vec<String> {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
    };
    let mut missing: Vec<String> = [
        "containerd",
        "ctr",
        "runc",
        "iptables",
        "conntrack",
        "nsenter",
        "unshare",
        "gcc",
        "strip",
    ]
    .into_iter()
    .filter(|c| !on_path(c))
    .map(str::to_owned)
    .collect();
    for plugin in ["bridge", "host-local", "loopback", "portmap"] {
        let path = Path::new(config::CNI_BIN_DIR).join(plugin);
        if !path.is_file() {
            missing.push(path.display().to_string());
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_owned());
    }
    missing
}

/// The Debian packages that provide the commands of `missing` (as
/// [`missing_prerequisites`] names them); `root` is no package.
pub fn debian_packages_for(missing: &[String]) -> Vec<&'static str> {
    let mut packages: Vec<&'static str> = Vec::new();
    for item in missing {
        let package = match item.as_str() {
            "containerd" | "ctr" => "containerd",
            "runc" => "runc",
            "iptables" => "iptables",
            "conntrack" => "conntrack",
            "nsenter" | "unshare" => "util-linux",
            "gcc" => "gcc",
            "strip" => "binutils",
            path if path.starts_with(config::CNI_BIN_DIR) => "containernetworking-plugins",
            _ => continue,
        };
        if !packages.contains(&package) {
            packages.push(package);
        }
    }
    packages
}

fn write_configs(paths: &NodePaths) -> Result<(), NodeError> {
    let config = paths.containerd_config();
    fs::write(&config, config::containerd_toml(paths)).map_err(io_err("cannot write", &config))?;
    let cni = paths.cni_dir();
    fs::create_dir_all(&cni).map_err(io_err("cannot create", &cni))?;
    write_json(
        &cni.join("10-drover-node.conflist"),
        &config::cni_conflist(),
    )?;
    let resolv = paths.resolv_conf();
    fs::write(&resolv, config::RESOLV_CONF).map_err(io_err("cannot write", &resolv))?;
    let kubelet_dir = paths.kubelet_dir();
    fs::create_dir_all(&kubelet_dir).map_err(io_err("cannot create", &kubelet_dir))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), NodeError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| io_err("cannot encode", path)(io::Error::other(e)))?;
    fs::write(path, text).map_err(io_err("cannot write", path))
}

fn import_image(namespaces: &NodeNamespaces, archive: &Path) -> Result<(), NodeError> {
    let mut cmd: Command = namespaces.node_command("ctr");
    cmd.args([
        "--address",
        config::CONTAINERD_SOCKET,
        "-n",
        "k8s.io",
        "images",
        "import",
    ])
    .arg(archive);
    images::run(&mut cmd)?;
    Ok(())
}

/// Every process in one of the namespaces `ids` (`net:[inode]`…), described.
fn processes_in(ids: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let pid = entry.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        for ns in ["net", "mnt", "pid"] {
            let Ok(link) = fs::read_link(entry.path().join("ns").join(ns)) else {
                continue;
            };
            let link = link.to_string_lossy().into_owned();
            if ids.contains(&link) {
                let status = fs::read_to_string(entry.path().join("status")).unwrap_or_default();
                let name = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Name:"))
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                found.push(format!("process {pid} ({name}) in {link}"));
                break;
            }
        }
    }
    found
}

/// `net:[inode]` and friends of the holder's namespaces (its PID namespace
/// for children is the node's).
fn namespace_ids(holder: u32) -> Vec<String> {
    ["net", "mnt", "pid_for_children"]
        .iter()
        .filter_map(|ns| fs::read_link(format!("/proc/{holder}/ns/{ns}")).ok())
        .map(|link| link.to_string_lossy().into_owned())
        .collect()
}

/// Polls the Node object until its Ready condition is True, failing early
/// if a node process exits.
async fn wait_until_ready(parts: &Parts) -> Result<(), NodeError> {
    let client = parts.control_plane.client().await?;
    let nodes: Api<NodeObject> = Api::all(client);
    let deadline = Instant::now() + NODE_READY_TIMEOUT;
    loop {
        for process in [
            &parts.kubelet,
            &parts.containerd,
            &parts.kube_proxy,
            &parts.scheduler,
        ] {
            if let Some(status) = process.exit_status() {
                return Err(NodeError::Exited {
                    component: process.name().to_owned(),
                    status: process::describe_status(status),
                    log: process.log_tail(LOG_TAIL_LINES),
                });
            }
        }
        let last = match nodes.get_opt(NODE_NAME).await {
            Ok(Some(node)) => {
                let ready = node
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "Ready");
                match ready {
                    Some(c) if c.status == "True" => return Ok(()),
                    Some(c) => format!("Ready={} ({})", c.status, c.message.unwrap_or_default()),
                    None => "no Ready condition yet".to_owned(),
                }
            }
            Ok(None) => format!("Node {NODE_NAME} not registered yet"),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(NodeError::NotReady {
                timeout: NODE_READY_TIMEOUT,
                last,
                log: parts.kubelet.log_tail(LOG_TAIL_LINES),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_missing_command_names_its_package_once() {
        let missing = [
            "ctr",
            "containerd",
            "/usr/lib/cni/bridge",
            "/usr/lib/cni/portmap",
            "root",
        ]
        .map(str::to_owned);
        assert_eq!(
            debian_packages_for(&missing),
            ["containerd", "containernetworking-plugins"]
        );
    }

    #[test]
    fn short_references_normalise_as_containerd_stores_them() {
        assert_eq!(
            full_reference("drover-worker:0.1.0"),
            "docker.io/library/drover-worker:0.1.0"
        );
        assert_eq!(full_reference("team/app:1"), "docker.io/team/app:1");
        assert_eq!(
            full_reference("drover.local/pause:1"),
            "drover.local/pause:1"
        );
        assert_eq!(full_reference("localhost/x:1"), "localhost/x:1");
    }
}
