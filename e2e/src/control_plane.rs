//! A real, local Kubernetes control plane: etcd, kube-apiserver and
//! kube-controller-manager as child processes on loopback ports, with a fresh PKI
//! and an admin kubeconfig. There is no scheduler and no kubelet; the tests'
//! process kubelet plays both roles for the Pods it cares about, unless the
//! control plane runs inside a real node's network namespace
//! ([`ControlPlane::start_in`], [`crate::node`]).
//!
//! Everything the control plane writes (PKI, etcd data, kubeconfigs, logs) lives
//! in the state directory the caller chooses; the processes are stopped when the
//! [`ControlPlane`] is dropped (and killed by the kernel if the test process dies
//! without dropping it, see [`crate::process`]).

use std::fs;
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};

use crate::certs::{self, CertAndKey, Pki};
use crate::node::namespaces::{Forwarder, NodeNamespaces};
use crate::ports;
use crate::process::{self, LogTail, ManagedProcess, ProcessError};
use crate::testenv::TestEnvBinaries;

/// Field manager for everything the harness applies.
pub const FIELD_MANAGER: &str = "drover-e2e";

/// The Service CIDR; its first address is the `kubernetes` Service's ClusterIP,
/// which the serving certificate includes (see [`certs::KUBERNETES_SERVICE_IP`]).
const SERVICE_CIDR: &str = "10.0.0.0/24";
const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc";

const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
const APISERVER_TIMEOUT: Duration = Duration::from_secs(60);
const CONTROLLER_MANAGER_TIMEOUT: Duration = Duration::from_secs(60);
const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(30);
const SERVICE_ACCOUNT_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("{context} {}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot find free loopback ports for the control plane")]
    Ports(#[source] io::Error),
    #[error("the apiserver of a control plane inside a node's namespaces is not restarted")]
    NoRestartInNode,
    #[error("cannot forward the apiserver's port from the node's network namespace to loopback")]
    Forward(#[source] io::Error),
    #[error("cannot create the control plane's certificates")]
    Certs(#[from] certs::CertError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("cannot build a Kubernetes client from {}", path.display())]
    Client {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{component} exited ({status}) while starting\n{log}")]
    Exited {
        component: &'static str,
        status: String,
        log: LogTail,
    },
    #[error("{component} was not ready within {timeout:?} (last check: {last_check})\n{log}")]
    NotReady {
        component: &'static str,
        timeout: Duration,
        last_check: String,
        log: LogTail,
    },
    #[error("CRD directory {} does not exist", .0.display())]
    CrdDirMissing(PathBuf),
    #[error("{}: {reason}", path.display())]
    InvalidCrd { path: PathBuf, reason: String },
    #[error("cannot apply CustomResourceDefinition {name}")]
    ApplyCrd {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("CustomResourceDefinition {name} was not Established within {timeout:?}{detail}")]
    CrdNotEstablished {
        name: String,
        timeout: Duration,
        detail: String,
    },
    #[error("{action}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    UnexpectedResponse(&'static str),
    #[error(
        "the default ServiceAccount of namespace {namespace} did not appear within {timeout:?}; is kube-controller-manager running?"
    )]
    NoDefaultServiceAccount {
        namespace: String,
        timeout: Duration,
    },
}

fn io_err(
    context: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> ControlPlaneError + use<> {
    let path = path.to_path_buf();
    move |source| ControlPlaneError::Io {
        context,
        path,
        source,
    }
}

/// A running control plane. Dropping it stops every process.
#[derive(Debug)]
pub struct ControlPlane {
    /// Host loopback to the apiserver when it runs inside the real node's
    /// network namespace.
    _forward: Option<Forwarder>,
    // Fields drop in declaration order: the controller manager goes first (it
    // would only log errors about a vanished apiserver), etcd last (so the
    // apiserver can shut down cleanly).
    controller_manager: ManagedProcess,
    /// Replaced by [`ControlPlane::restart_apiserver`].
    apiserver: Mutex<ManagedProcess>,
    /// How to start the apiserver again; none for one inside a node's
    /// namespaces, which the harness does not restart.
    relaunch: Option<Relaunch>,
    etcd: ManagedProcess,
    state_dir: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    pki: Pki,
    startup: Duration,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager with state (PKI,
    /// etcd data, kubeconfigs, logs) in `state_dir`, and returns once the apiserver
    /// is ready and the controller manager is running its controllers.
    ///
    /// The etcd data directory is recreated, so every start is a fresh cluster.
    pub async fn start(
        bins: &TestEnvBinaries,
        state_dir: &Path,
    ) -> Result<Self, ControlPlaneError> {
        Self::start_in(bins, state_dir, None).await
    }

    /// [`ControlPlane::start`], with every process inside the network namespace
    /// of the real node when `node` is given (see [`crate::node`]): the
    /// apiserver then also listens on the node's address, which it advertises
    /// as the `kubernetes` Service's endpoint, and reaches kubelets by their
    /// InternalIP; its port is forwarded to the same port on the test
    /// process's loopback, so [`ControlPlane::server_url`] works on both sides.
    pub async fn start_in(
        bins: &TestEnvBinaries,
        state_dir: &Path,
        node: Option<&NodeNamespaces>,
    ) -> Result<Self, ControlPlaneError> {
        let started = Instant::now();
        fs::create_dir_all(state_dir)
            .map_err(io_err("cannot create the state directory", state_dir))?;
        let pki = certs::generate(&state_dir.join("pki"))?;

        let [etcd_client_port, etcd_peer_port, apiserver_port] =
            ports::free_loopback_ports(3).map_err(ControlPlaneError::Ports)?[..]
        else {
            return Err(ControlPlaneError::Ports(io::Error::other(
                "fewer ports than requested",
            )));
        };

        let etcd = start_etcd(bins, state_dir, etcd_client_port, etcd_peer_port, node).await?;
        tracing::debug!(elapsed = ?started.elapsed(), "etcd is serving");

        let server = format!("https://127.0.0.1:{apiserver_port}");
        let kubeconfig = state_dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server, &pki.ca, &pki.admin, certs::ADMIN_USER)?;
        let controller_manager_kubeconfig = state_dir.join("kube-controller-manager.kubeconfig");
        write_kubeconfig(
            &controller_manager_kubeconfig,
            &server,
            &pki.ca,
            &pki.controller_manager,
            certs::CONTROLLER_MANAGER_USER,
        )?;

        let apiserver = start_apiserver(
            bins,
            state_dir,
            &pki,
            etcd_client_port,
            apiserver_port,
            node,
        )?;
        let forward = node
            .map(|node| node.forward_loopback_port(apiserver_port))
            .transpose()
            .map_err(ControlPlaneError::Forward)?;
        let client = client_from(&kubeconfig).await?;
        wait_until_ready(&apiserver, &client).await?;
        tracing::debug!(elapsed = ?started.elapsed(), "kube-apiserver is ready");

        let controller_manager =
            start_controller_manager(bins, state_dir, &pki, &controller_manager_kubeconfig, node)?;
        // The root-CA publisher creates this ConfigMap in every namespace once the
        // controller manager has synced its informers and started its controllers,
        // which makes it a readiness signal that needs no extra port or credentials.
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        wait_until(
            "kube-controller-manager",
            &controller_manager,
            CONTROLLER_MANAGER_TIMEOUT,
            || async {
                match config_maps.get_opt("kube-root-ca.crt").await {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => {
                        Err("ConfigMap default/kube-root-ca.crt not created yet".to_owned())
                    }
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await?;

        let startup = started.elapsed();
        tracing::info!(?startup, %server, state_dir = %state_dir.display(), "control plane started");
        Ok(Self {
            _forward: forward,
            controller_manager,
            apiserver: Mutex::new(apiserver),
            relaunch: node.is_none().then(|| Relaunch {
                bins: bins.clone(),
                etcd_port: etcd_client_port,
                port: apiserver_port,
            }),
            etcd,
            state_dir: state_dir.to_path_buf(),
            kubeconfig,
            server,
            pki,
            startup,
        })
    }

    /// The admin kubeconfig (`system:masters`, certificates embedded), usable
    /// with kubectl too.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// How long [`ControlPlane::start`] took.
    pub fn startup_duration(&self) -> Duration {
        self.startup
    }

    /// The processes, for fault tests (e.g. [`ManagedProcess::kill_hard`]).
    pub fn etcd(&self) -> &ManagedProcess {
        &self.etcd
    }

    /// The apiserver's pid now (it changes with [`ControlPlane::restart_apiserver`]).
    pub fn apiserver_pid(&self) -> u32 {
        self.lock_apiserver().pid()
    }

    /// Stops kube-apiserver (SIGTERM, as a rolling control-plane upgrade
    /// does) and starts it again on the same port and etcd, returning once it
    /// is ready: every client sees its connections and watches drop, then a
    /// server with the same state.
    pub async fn restart_apiserver(&self) -> Result<(), ControlPlaneError> {
        let relaunch = self
            .relaunch
            .as_ref()
            .ok_or(ControlPlaneError::NoRestartInNode)?;
        // The lock is not held across an await: stop and spawn are blocking.
        self.lock_apiserver().stop(Duration::from_secs(10));
        let apiserver = start_apiserver(
            &relaunch.bins,
            &self.state_dir,
            &self.pki,
            relaunch.etcd_port,
            relaunch.port,
            None,
        )?;
        let client = client_from(&self.kubeconfig).await?;
        wait_until_ready(&apiserver, &client).await?;
        *self.lock_apiserver() = apiserver;
        Ok(())
    }

    fn lock_apiserver(&self) -> MutexGuard<'_, ManagedProcess> {
        // Replacing the process is the only mutation; a poisoned lock still holds one.
        self.apiserver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn controller_manager(&self) -> &ManagedProcess {
        &self.controller_manager
    }

    /// A new admin client. Built fresh on every call on purpose: a client's
    /// connection pool belongs to the tokio runtime it was first used on, and
    /// `#[tokio::test]` gives each test its own runtime, so a shared client would
    /// break as soon as the first test's runtime shut down.
    pub async fn client(&self) -> Result<Client, ControlPlaneError> {
        client_from(&self.kubeconfig).await
    }

    /// Applies every `*.yaml` file in `dir` (each may hold several documents,
    /// all of which must be CustomResourceDefinitions) with server-side apply,
    /// then waits until each CRD is Established. Returns the CRD names.
    ///
    /// A directory without YAML files installs nothing; a missing directory is an error.
    pub async fn install_crds(&self, dir: &Path) -> Result<Vec<String>, ControlPlaneError> {
        if !dir.is_dir() {
            return Err(ControlPlaneError::CrdDirMissing(dir.to_path_buf()));
        }
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io_err("cannot list", dir))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<io::Result<_>>()
            .map_err(io_err("cannot list", dir))?;
        files.retain(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml"));
        files.sort();

        let crds: Api<CustomResourceDefinition> = Api::all(self.client().await?);
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        let mut names = Vec::new();
        for path in &files {
            for document in read_crd_documents(path)? {
                let name = crd_name(path, &document)?;
                crds.patch(&name, &apply, &Patch::Apply(&document))
                    .await
                    .map_err(|source| ControlPlaneError::ApplyCrd {
                        name: name.clone(),
                        source,
                    })?;
                names.push(name);
            }
        }
        for name in &names {
            let established = tokio::time::timeout(
                CRD_ESTABLISHED_TIMEOUT,
                await_condition(crds.clone(), name, conditions::is_crd_established()),
            )
            .await;
            match established {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(ControlPlaneError::CrdNotEstablished {
                        name: name.clone(),
                        timeout: CRD_ESTABLISHED_TIMEOUT,
                        detail: format!(": watching it failed: {e}"),
                    });
                }
                Err(_) => {
                    // Surface the conditions (e.g. NamesAccepted=False) that explain why.
                    let conditions = match crds.get_opt(name).await {
                        Ok(Some(crd)) => format!(
                            "; its conditions: {}",
                            serde_json::to_string(&crd.status.and_then(|s| s.conditions))
                                .unwrap_or_default()
                        ),
                        _ => String::new(),
                    };
                    return Err(ControlPlaneError::CrdNotEstablished {
                        name: name.clone(),
                        timeout: CRD_ESTABLISHED_TIMEOUT,
                        detail: conditions,
                    });
                }
            }
        }
        Ok(names)
    }

    /// Creates a namespace with a unique name starting with `prefix` (sanitised
    /// to a DNS label) for one test's objects, and waits until its `default`
    /// ServiceAccount exists: until then the ServiceAccount admission plugin
    /// rejects every Pod, and the ReplicaSet controller would back off.
    pub async fn create_namespace(&self, prefix: &str) -> Result<String, ControlPlaneError> {
        let client = self.client().await?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                // The apiserver appends a random suffix, which is unique by construction.
                generate_name: Some(format!("{}-", namespace_prefix(prefix))),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_owned(),
                        FIELD_MANAGER.to_owned(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let created = namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .map_err(|source| ControlPlaneError::Api {
                action: format!("cannot create a namespace named {prefix}-…"),
                source,
            })?;
        let name = created
            .metadata
            .name
            .ok_or(ControlPlaneError::UnexpectedResponse(
                "the apiserver created a namespace but returned no name for it",
            ))?;

        let service_accounts: Api<ServiceAccount> = Api::namespaced(client, &name);
        let deadline = Instant::now() + SERVICE_ACCOUNT_TIMEOUT;
        loop {
            match service_accounts.get_opt("default").await {
                Ok(Some(_)) => return Ok(name),
                Ok(None) => {}
                Err(source) => {
                    return Err(ControlPlaneError::Api {
                        action: format!(
                            "cannot read the default ServiceAccount of namespace {name}"
                        ),
                        source,
                    });
                }
            }
            if Instant::now() >= deadline {
                return Err(ControlPlaneError::NoDefaultServiceAccount {
                    namespace: name,
                    timeout: SERVICE_ACCOUNT_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn start_etcd(
    bins: &TestEnvBinaries,
    state_dir: &Path,
    client_port: u16,
    peer_port: u16,
    node: Option<&NodeNamespaces>,
) -> Result<ManagedProcess, ControlPlaneError> {
    let data_dir = state_dir.join("etcd");
    if data_dir.exists() {
        fs::remove_dir_all(&data_dir)
            .map_err(io_err("cannot remove the old etcd data in", &data_dir))?;
    }
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut cmd = command(&bins.etcd, node);
    cmd.arg("--name=drover-e2e")
        .arg(flag("--data-dir", &data_dir))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=drover-e2e={peer_url}"))
        .arg("--initial-cluster-state=new")
        // Test data is disposable; skipping fsync makes every write (and so the
        // apiserver's start-up, which writes hundreds of bootstrap objects) much faster.
        .arg("--unsafe-no-fsync")
        .arg("--log-level=warn");
    let etcd = ManagedProcess::spawn("etcd", cmd, &state_dir.join("etcd.log"))?;
    wait_until("etcd", &etcd, ETCD_TIMEOUT, || async {
        let listening = match node {
            Some(node) => node.accepts_connections(client_port),
            None => ports::accepts_connections(client_port).await,
        };
        if listening {
            Ok(())
        } else {
            Err(format!("nothing listening on 127.0.0.1:{client_port} yet"))
        }
    })
    .await?;
    Ok(etcd)
}

/// What [`ControlPlane::restart_apiserver`] starts the apiserver with.
#[derive(Debug)]
struct Relaunch {
    bins: TestEnvBinaries,
    etcd_port: u16,
    port: u16,
}

/// Waits for `/readyz`, which covers etcd connectivity and every post-start
/// hook (RBAC bootstrap roles, system namespaces, CRD informers).
async fn wait_until_ready(
    apiserver: &ManagedProcess,
    client: &Client,
) -> Result<(), ControlPlaneError> {
    wait_until("kube-apiserver", apiserver, APISERVER_TIMEOUT, || async {
        let request = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        client
            .request_text(request)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
}

fn start_apiserver(
    bins: &TestEnvBinaries,
    state_dir: &Path,
    pki: &Pki,
    etcd_port: u16,
    port: u16,
    node: Option<&NodeNamespaces>,
) -> Result<ManagedProcess, ControlPlaneError> {
    let mut cmd = command(&bins.kube_apiserver, node);
    cmd.arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
        .arg(format!("--secure-port={port}"))
        .arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        // The endpoint reconciler publishes the advertise address as the
        // `kubernetes` Service's endpoint, and refuses to start with a loopback
        // one. Nothing in the harness routes Service IPs anyway (no kube-proxy).
        .arg("--endpoint-reconciler-type=none")
        .arg(flag("--tls-cert-file", &pki.apiserver.cert))
        .arg(flag("--tls-private-key-file", &pki.apiserver.key))
        .arg(flag("--client-ca-file", &pki.ca.cert))
        .arg(flag(
            "--service-account-key-file",
            &pki.service_account_public_key,
        ))
        .arg(flag(
            "--service-account-signing-key-file",
            &pki.service_account_key,
        ))
        .arg(format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"))
        .arg("--authorization-mode=Node,RBAC")
        .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
        .arg("--allow-privileged=true")
        // Nothing should be written next to the binary or in the working directory.
        .arg(flag("--cert-dir", &state_dir.join("apiserver-certs")))
        // Kubelets by their InternalIP (loopback here), never by a node name
        // looked up in the machine's DNS.
        .arg("--kubelet-preferred-address-types=InternalIP");
    if let Some(node) = node {
        // Later flags win: these replace the loopback-only ones above.
        cmd.args(node.apiserver_flags());
        // The kubelet authenticates the apiserver's logs, exec and
        // port-forward requests like any other client's.
        let kubelet_client = certs::issue_client(
            pki,
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            Some(certs::ADMIN_GROUP),
        )?;
        cmd.arg(flag("--kubelet-client-certificate", &kubelet_client.cert))
            .arg(flag("--kubelet-client-key", &kubelet_client.key));
    }
    Ok(ManagedProcess::spawn(
        "kube-apiserver",
        cmd,
        &state_dir.join("kube-apiserver.log"),
    )?)
}

fn start_controller_manager(
    bins: &TestEnvBinaries,
    state_dir: &Path,
    pki: &Pki,
    kubeconfig: &Path,
    node: Option<&NodeNamespaces>,
) -> Result<ManagedProcess, ControlPlaneError> {
    let mut cmd = command(&bins.kube_controller_manager, node);
    cmd.arg(flag("--kubeconfig", kubeconfig))
        // No serving endpoint: readiness is observed through the API instead, and
        // this saves a port and the delegated-authentication round trips.
        .arg("--secure-port=0")
        .arg(flag(
            "--service-account-private-key-file",
            &pki.service_account_key,
        ))
        .arg(flag("--root-ca-file", &pki.ca.cert))
        // Each controller acts as its own service account, so RBAC problems of
        // the kind a real cluster has show up here too.
        .arg("--use-service-account-credentials=true")
        .arg("--controllers=*")
        .arg("--leader-elect=false")
        // Starting every controller under its own ServiceAccount makes
        // hundreds of requests; the default client limit (20/s) made that 5 s.
        .arg("--kube-api-qps=200")
        .arg("--kube-api-burst=400")
        // Lets the CSR signer work, for completeness; the CA is throwaway anyway.
        .arg(flag("--cluster-signing-cert-file", &pki.ca.cert))
        .arg(flag("--cluster-signing-key-file", &pki.ca.key));
    Ok(ManagedProcess::spawn(
        "kube-controller-manager",
        cmd,
        &state_dir.join("kube-controller-manager.log"),
    )?)
}

/// `program`, run inside the node's network namespace when there is a node.
fn command(program: &Path, node: Option<&NodeNamespaces>) -> Command {
    match node {
        Some(node) => node.net_command(program),
        None => Command::new(program),
    }
}

fn flag(name: &str, path: &Path) -> String {
    format!("{name}={}", path.display())
}

/// Polls `check` until it succeeds (an `Err` says why the component is not
/// ready yet), failing early (with the log tail) if `process` exits, and with
/// the last check's reason on timeout.
async fn wait_until<F, Fut>(
    component: &'static str,
    process: &ManagedProcess,
    timeout: Duration,
    mut check: F,
) -> Result<(), ControlPlaneError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.exit_status() {
            return Err(ControlPlaneError::Exited {
                component,
                status: process::describe_status(status),
                log: process.log_tail(LOG_TAIL_LINES),
            });
        }
        let Err(last_check) = check().await else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(ControlPlaneError::NotReady {
                component,
                timeout,
                last_check,
                log: process.log_tail(LOG_TAIL_LINES),
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Writes a kubeconfig for `identity` with every certificate embedded, so the
/// file works on its own (e.g. copied out of the state directory).
pub(crate) fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &CertAndKey,
    identity: &CertAndKey,
    user: &str,
) -> Result<(), ControlPlaneError> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "drover-e2e",
            "cluster": {
                "server": server,
                "certificate-authority-data": BASE64.encode(&ca.cert_pem),
            },
        }],
        "users": [{
            "name": user,
            "user": {
                "client-certificate-data": BASE64.encode(&identity.cert_pem),
                "client-key-data": BASE64.encode(&identity.key_pem),
            },
        }],
        "contexts": [{
            "name": "drover-e2e",
            "context": { "cluster": "drover-e2e", "user": user, "namespace": "default" },
        }],
        "current-context": "drover-e2e",
    });
    // JSON is valid YAML, and kubeconfig loaders (kubectl, client-go, kube-rs) all accept it.
    let text = serde_json::to_string_pretty(&config).map_err(|e| ControlPlaneError::Io {
        context: "cannot serialise",
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        // It holds a private key.
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(io_err("cannot write", path))
}

async fn client_from(kubeconfig: &Path) -> Result<Client, ControlPlaneError> {
    let client_err = |source: Box<dyn std::error::Error + Send + Sync>| ControlPlaneError::Client {
        path: kubeconfig.to_path_buf(),
        source,
    };
    let parsed = Kubeconfig::read_from(kubeconfig).map_err(|e| client_err(e.into()))?;
    let mut config = Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
        .await
        .map_err(|e| client_err(e.into()))?;
    // The apiserver is on loopback; an HTTPS_PROXY from the environment must not apply.
    config.proxy_url = None;
    Client::try_from(config).map_err(|e| client_err(e.into()))
}

/// Turns `prefix` into the start of a valid namespace name (RFC 1123 label,
/// leaving room for the apiserver's 5-character random suffix).
fn namespace_prefix(prefix: &str) -> String {
    let mut out: String = prefix
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() { c } else { '-' }
        })
        .collect();
    out.truncate(50);
    let trimmed = out.trim_matches('-');
    if trimmed.is_empty() {
        "test".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn read_crd_documents(path: &Path) -> Result<Vec<serde_json::Value>, ControlPlaneError> {
    use serde::Deserialize as _;
    let text = fs::read_to_string(path).map_err(io_err("cannot read", path))?;
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_json::Value::deserialize(document).map_err(|e| {
            ControlPlaneError::InvalidCrd {
                path: path.to_path_buf(),
                reason: format!("not valid YAML: {e}"),
            }
        })?;
        // Empty documents (a trailing `---`) are fine.
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

/// Checks that `document` is an apiextensions.k8s.io/v1 CRD and returns its name.
fn crd_name(path: &Path, document: &serde_json::Value) -> Result<String, ControlPlaneError> {
    let invalid = |reason: String| ControlPlaneError::InvalidCrd {
        path: path.to_path_buf(),
        reason,
    };
    let kind = document.get("kind").and_then(|v| v.as_str());
    let api_version = document.get("apiVersion").and_then(|v| v.as_str());
    if kind != Some("CustomResourceDefinition") || api_version != Some("apiextensions.k8s.io/v1") {
        return Err(invalid(format!(
            "expected only apiextensions.k8s.io/v1 CustomResourceDefinitions, found {} {}",
            api_version.unwrap_or("(no apiVersion)"),
            kind.unwrap_or("(no kind)")
        )));
    }
    document
        .pointer("/metadata/name")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| invalid("a CustomResourceDefinition has no metadata.name".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_prefixes_are_dns_labels() {
        assert_eq!(namespace_prefix("Scale_Up test"), "scale-up-test");
        assert_eq!(namespace_prefix("--"), "test");
        assert_eq!(namespace_prefix(&"x".repeat(80)).len(), 50);
    }

    #[test]
    fn rejects_documents_that_are_not_crds() {
        let doc =
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
        let err = crd_name(Path::new("x.yaml"), &doc).expect_err("not a CRD");
        assert!(err.to_string().contains("found v1 ConfigMap"), "{err}");
    }
}
