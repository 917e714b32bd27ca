//! The real node's namespaces: a network namespace of its own, and a private
//! mount and PID namespace for containerd, the kubelet and kube-proxy.
//!
//! One `unshare` process holds all three. It is a [`ManagedProcess`], so it
//! dies with the test binary, and `--kill-child` takes the PID namespace's
//! first process with it; the kernel then kills every process left in that
//! namespace (shims, containers), the private mounts vanish with the last of
//! them, and so does the network namespace, which nothing ever bind-mounts.
//! Nothing has to be undone by hand except cgroups (see [`super::cgroups`]).
//!
//! Processes join with `nsenter`, never `ip netns exec` (which remounts /sys
//! and hides /sys/fs/cgroup from containerd, runc and the kubelet).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::process::{ManagedProcess, ProcessError};

/// The node's own address, on its namespace's loopback device (this kernel
/// has no dummy interface driver): the kubelet's InternalIP and the
/// apiserver's advertised address. It exists only inside the namespace.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);

/// The sysctls the kubelet sets on start-up; inside the node's mount
/// namespace each is a file of the state directory, so the machine's real
/// values never change.
pub const KUBELET_SYSCTLS: [&str; 3] = [
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
];

const READY_LINE: &str = "drover-node: namespaces ready";
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Threads that only copy bytes need little stack.
const COPY_STACK: usize = 64 * 1024;

/// Sets up the namespaces from inside, as the PID namespace's first process,
/// then stays asleep as its init. `$1` is the state directory.
const HOLDER_SCRIPT: &str = r#"set -eu
state=$1
# The node's /run (containerd's state and socket, pod network namespaces,
# the iptables lock): a tmpfs that is gone with the namespace.
mount -t tmpfs -o mode=0755 drover-node-run /run
# Pod and container logs (/var/log/pods, /var/log/containers) go to the state directory.
mount --bind "$state/var-log" /var/log
for name in KUBELET_SYSCTLS; do
    mount --bind "$state/sysctl/$(echo "$name" | tr / .)" "/proc/sys/$name"
done
ip link set lo up
ip addr add NODE_IP/32 dev lo
echo "READY_LINE"
exec sleep infinity
"#;

/// The running namespaces. Dropping this kills everything inside them.
#[derive(Debug)]
pub struct NodeNamespaces {
    holder: ManagedProcess,
    net: PathBuf,
    mount: PathBuf,
    pid: PathBuf,
    connector: Connector,
}

impl NodeNamespaces {
    /// Creates the namespaces with `state_dir` holding the node's logs
    /// (`var-log/`) and sysctl files (`sysctl/`), and returns once they are
    /// set up.
    pub async fn start(state_dir: &Path) -> Result<Self, NamespaceError> {
        prepare_state(state_dir)?;
        let script = HOLDER_SCRIPT
            .replace("KUBELET_SYSCTLS", &KUBELET_SYSCTLS.join(" "))
            .replace("NODE_IP", &NODE_IP.to_string())
            .replace("READY_LINE", READY_LINE);
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--net",
            "--mount",
            "--propagation=slave",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child=SIGKILL",
            "sh",
            "-c",
            &script,
            "drover-node-namespaces",
        ])
        .arg(state_dir);
        let holder =
            ManagedProcess::spawn("node namespaces", cmd, &state_dir.join("namespaces.log"))?;
        holder.wait_for_line(READY_LINE, READY_TIMEOUT).await?;
        let proc_dir = PathBuf::from(format!("/proc/{}/ns", holder.pid()));
        let net = proc_dir.join("net");
        let connector = Connector::start(&net).map_err(NamespaceError::Enter)?;
        Ok(Self {
            holder,
            mount: proc_dir.join("mnt"),
            // `unshare` itself stays in the old PID namespace; its children do not.
            pid: proc_dir.join("pid_for_children"),
            net,
            connector,
        })
    }

    /// `program` in the node's network namespace only (the control plane:
    /// it needs the node's addresses but none of its mounts). `nsenter`
    /// execs it, so signals and exit statuses are the program's own.
    pub fn net_command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.net.display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// `program` in all of the node's namespaces (containerd, the kubelet,
    /// kube-proxy, ctr). `nsenter` forks to enter the PID namespace; its
    /// child is in the same process group, so stopping the group stops both.
    pub fn node_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.net.display()))
            .arg(format!("--mount={}", self.mount.display()))
            .arg(format!("--pid={}", self.pid.display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// The kube-apiserver flags for running inside the namespace: listen on
    /// the node's address too, advertise it (the `kubernetes` Service's
    /// endpoint), and reach kubelets by InternalIP, never by resolving a node
    /// name through the machine's DNS server.
    pub fn apiserver_flags(&self) -> Vec<String> {
        vec![
            "--bind-address=0.0.0.0".to_owned(),
            format!("--advertise-address={NODE_IP}"),
            "--endpoint-reconciler-type=lease".to_owned(),
            "--kubelet-preferred-address-types=InternalIP".to_owned(),
        ]
    }

    /// Whether something accepts connections on `127.0.0.1:port` inside the namespace.
    pub fn accepts_connections(&self, port: u16) -> bool {
        self.connector.connect(port).is_ok()
    }

    /// Forwards `127.0.0.1:port` of the test process's namespace to the same
    /// port inside the node's, until the returned value is dropped.
    pub fn forward_loopback_port(&self, port: u16) -> io::Result<Forwarder> {
        Forwarder::start(port, self.connector.clone())
    }

    /// Makes `127.0.0.1:port` of the test process's namespace (a model or
    /// media server on the machine's loopback) reachable from pods at
    /// `NODE_IP:port`, until the returned value is dropped.
    pub fn expose_loopback_port(&self, port: u16) -> io::Result<Forwarder> {
        Forwarder::expose(port, &self.net)
    }

    /// The pid of the namespaces' holder (`unshare`), in the test's PID namespace.
    pub fn holder_pid(&self) -> u32 {
        self.holder.pid()
    }

    /// Kills everything inside the namespaces at once: the holder's death
    /// takes the PID namespace's init with it, and the kernel kills the rest.
    pub fn kill(&self) {
        self.holder.kill_hard();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("cannot prepare {}", path.display())]
    Prepare {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the node's namespaces")]
    Holder(#[from] ProcessError),
    #[error("cannot enter the node's network namespace")]
    Enter(#[source] io::Error),
}

/// The directories and sysctl files the holder script bind-mounts.
fn prepare_state(state_dir: &Path) -> Result<(), NamespaceError> {
    let prepare = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NamespaceError::Prepare { path, source }
    };
    let sysctl_dir = state_dir.join("sysctl");
    for dir in [state_dir.join("var-log"), sysctl_dir.clone()] {
        std::fs::create_dir_all(&dir).map_err(prepare(&dir))?;
    }
    for name in KUBELET_SYSCTLS {
        let real = Path::new("/proc/sys").join(name);
        let value = std::fs::read_to_string(&real).map_err(prepare(&real))?;
        let copy = sysctl_dir.join(name.replace('/', "."));
        std::fs::write(&copy, value).map_err(prepare(&copy))?;
    }
    Ok(())
}

/// Connects to loopback ports inside the node's network namespace: a thread
/// that entered it (a socket belongs to the namespace of the thread that
/// creates it, wherever it is used afterwards).
#[derive(Debug, Clone)]
struct Connector {
    requests: mpsc::Sender<(u16, mpsc::SyncSender<io::Result<TcpStream>>)>,
}

impl Connector {
    fn start(net: &Path) -> io::Result<Self> {
        let namespace = File::open(net)?;
        let (requests, incoming) =
            mpsc::channel::<(u16, mpsc::SyncSender<io::Result<TcpStream>>)>();
        let (entered, entered_result) = mpsc::sync_channel(1);
        thread::Builder::new()
            .name("drover-node-connector".into())
            .spawn(move || {
                // SAFETY: setns on an open namespace file descriptor only
                // changes this thread's network namespace.
                let result = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
                let _ = entered.send(if result == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                });
                if result != 0 {
                    return;
                }
                drop(namespace);
                // Ends when every sender (the node and its forwarders) is gone.
                for (port, reply) in incoming {
                    let _ = reply.send(TcpStream::connect((Ipv4Addr::LOCALHOST, port)));
                }
            })?;
        entered_result
            .recv()
            .map_err(|_| io::Error::other("the connector thread died"))??;
        Ok(Self { requests })
    }

    fn connect(&self, port: u16) -> io::Result<TcpStream> {
        let (reply, response) = mpsc::sync_channel(1);
        self.requests
            .send((port, reply))
            .map_err(|_| io::Error::other("the connector thread is gone"))?;
        response
            .recv()
            .map_err(|_| io::Error::other("the connector thread dropped a request"))?
    }
}

/// A TCP forwarder between the test process's network namespace and the
/// node's, in either direction. Dropping it stops accepting; open
/// connections end when either side closes.
#[derive(Debug)]
pub struct Forwarder {
    /// A second handle on the listening socket, to wake its accept loop.
    listener: TcpListener,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    /// From `127.0.0.1:port` here to `127.0.0.1:port` inside the node.
    fn start(port: u16, connector: Connector) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
        Self::serve(listener, format!("drover-node-forward-{port}"), move || {
            connector.connect(port)
        })
    }

    /// From `NODE_IP:port` inside the node (where pods reach it) to
    /// `127.0.0.1:port` here.
    fn expose(port: u16, net: &Path) -> io::Result<Self> {
        let listener = bind_inside(net, SocketAddr::from((NODE_IP, port)))?;
        Self::serve(listener, format!("drover-node-expose-{port}"), move || {
            TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        })
    }

    fn serve(
        listener: TcpListener,
        name: String,
        connect: impl Fn() -> io::Result<TcpStream> + Send + 'static,
    ) -> io::Result<Self> {
        let handle = listener.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        thread::Builder::new().name(name).spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                match connect() {
                    Ok(other_side) => splice(client, other_side),
                    // Refused there: refuse here too, by closing.
                    Err(_) => drop(client),
                }
            }
        })?;
        Ok(Self {
            listener: handle,
            stop,
        })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Shutting a listening socket down wakes its blocked accept, in
        // whichever namespace it listens.
        // SAFETY: shutdown on a socket this value owns has no other effect.
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
}

/// A listening socket at `addr` inside the network namespace `net`: made by
/// a short-lived thread that entered it (a socket stays in the namespace it
/// was made in).
fn bind_inside(net: &Path, addr: SocketAddr) -> io::Result<TcpListener> {
    let namespace = File::open(net)?;
    thread::Builder::new()
        .name("drover-node-bind".into())
        .stack_size(COPY_STACK)
        .spawn(move || {
            // SAFETY: setns on an open namespace file descriptor only
            // changes this thread's network namespace.
            if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            TcpListener::bind(addr)
        })?
        .join()
        .map_err(|_| io::Error::other("the bind thread panicked"))?
}

/// Copies both ways between `a` and `b` on two threads, passing on each
/// half-close.
fn splice(a: TcpStream, b: TcpStream) {
    let pairs = [(a.try_clone(), b.try_clone()), (Ok(b), Ok(a))];
    for (from, to) in pairs {
        let (Ok(mut from), Ok(mut to)) = (from, to) else {
            return;
        };
        let _ = thread::Builder::new()
            .name("drover-node-copy".into())
            .stack_size(COPY_STACK)
            .spawn(move || {
                let mut buffer = [0u8; 16 * 1024];
                loop {
                    match from.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if to.write_all(&buffer[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = to.shutdown(Shutdown::Write);
                let _ = from.shutdown(Shutdown::Read);
            });
    }
}
