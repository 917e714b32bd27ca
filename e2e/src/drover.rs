//! Drover's own binaries in end-to-end tests and the sandbox: where cargo put
//! them, and how to start the operator as a real process against the test
//! control plane and emulator.

use std::path::{Path, PathBuf};
use std::process::Command;

use drover_crds::{Job, PipelineWorker};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};

use crate::TestEnv;
use crate::manifests::FIELD_MANAGER;
use crate::process::{ManagedProcess, ProcessError};
use crate::refusals::{self, LogSince};

/// The project id the sandbox and the tests use with the emulator.
pub const PUBSUB_PROJECT: &str = "drover-local";
/// The image name the operator gives worker pods unless told otherwise; the
/// process kubelet maps it to the locally built `drover-worker`.
pub const WORKER_IMAGE: &str = "drover-worker:dev";
/// The repositories of the images the Helm chart and images/*.Dockerfile name;
/// the process kubelet maps them, whatever their tag, to the built binaries.
pub const OPERATOR_IMAGE_REPOSITORY: &str = "drover-operator";
pub const WORKER_IMAGE_REPOSITORY: &str = "drover-worker";

#[derive(Debug, thiserror::Error)]
pub enum DroverBinaryError {
    #[error(
        "{name} is not built at {}: build it with `cargo build -p {name}` \
         (`cargo test --workspace` does this)",
        path.display()
    )]
    NotBuilt { name: &'static str, path: PathBuf },
    #[error("cannot start {name}: {source}")]
    Start {
        name: &'static str,
        source: Box<ProcessError>,
    },
}

/// `target/<profile>/<name>`, found from the running executable (a test in
/// `target/<profile>/deps/` or a binary in `target/<profile>/`).
pub fn binary(name: &'static str) -> Result<PathBuf, DroverBinaryError> {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(DroverBinaryError::NotBuilt { name, path })
    }
}

/// Options of one operator process.
#[derive(Debug, Clone)]
pub struct OperatorOptions {
    /// Distinguishes log files and Lease identities of several operators.
    pub identity: String,
    pub lease_seconds: u64,
    pub metrics_port: u16,
    /// The operator's own identity: its ServiceAccount's token, from
    /// [`crate::identity::operator_kubeconfig`]; never the admin's.
    pub kubeconfig: PathBuf,
    /// `DEBUG_FAILPOINTS` for this process (see `drover_runtime::failpoint`).
    pub failpoints: Option<String>,
}

/// Starts `drover-operator` as its own ServiceAccount against the
/// environment's apiserver and emulator, logging to
/// `<state>/operator-<identity>.log`; its Lease lives in its namespace, as
/// installed.
pub fn start_operator(
    env: &TestEnv,
    options: &OperatorOptions,
) -> Result<ManagedProcess, DroverBinaryError> {
    start_operator_with_args(env, options, &[])
}

/// The operator's flags that archive finished Jobs in the database at
/// `database_url` and serve their history on `127.0.0.1:<history_port>`.
pub fn archive_args(database_url: &str, history_port: u16) -> Vec<String> {
    vec![
        format!("--archive-database-url={database_url}"),
        format!("--archive-addr=127.0.0.1:{history_port}"),
    ]
}

/// [`start_operator`] with `extra` flags (e.g. [`archive_args`]).
pub fn start_operator_with_args(
    env: &TestEnv,
    options: &OperatorOptions,
    extra: &[String],
) -> Result<ManagedProcess, DroverBinaryError> {
    let bin = binary("drover-operator")?;
    let state = env.control_plane.state_dir();
    let mut command = Command::new(bin);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KUBECONFIG", &options.kubeconfig)
        .env("PUBSUB_EMULATOR_HOST", env.pubsub.host_port())
        .env("PUBSUB_PROJECT_ID", PUBSUB_PROJECT)
        .env("RUST_LOG", "info,kube=warn,drover_operator=debug")
        .args(["--lease-namespace", crate::identity::OPERATOR_NAMESPACE])
        .args(["--worker-image", WORKER_IMAGE])
        .args([
            "--metrics-addr",
            &format!("127.0.0.1:{}", options.metrics_port),
        ])
        .args(["--identity", &options.identity])
        .args(["--lease-seconds", &options.lease_seconds.to_string()])
        .args(extra);
    if let Some(failpoints) = &options.failpoints {
        command.env(drover_runtime::failpoint::ENV, failpoints);
    }
    let log = state.join(format!("operator-{}.log", options.identity));
    ManagedProcess::spawn("drover-operator", command, &log).map_err(|source| {
        DroverBinaryError::Start {
            name: "drover-operator",
            source: Box::new(source),
        }
    })
}

/// The operator and a process kubelet that runs its worker pods.
pub struct DroverProcesses {
    pub operator: ManagedProcess,
    pub kubelet: crate::kubelet::ProcessKubelet,
    pub operator_metrics: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StartDroverError {
    #[error(transparent)]
    Binary(#[from] DroverBinaryError),
    #[error("cannot pick a port or start a runtime thread: {0}")]
    Port(std::io::Error),
    #[error("cannot reach the control plane: {0}")]
    Client(#[from] crate::ControlPlaneError),
    #[error("cannot start the process kubelet: {0}")]
    Kubelet(#[from] crate::kubelet::KubeletError),
    #[error("cannot give the operator its own identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
}

/// The process kubelet's configuration for Drover: the worker image (and the
/// chart's operator and worker images, any tag) -> the built binaries, each
/// pod authenticating with a real token of its own ServiceAccount: no worker
/// in a test is an admin.
pub fn kubelet_config(env: &TestEnv) -> Result<crate::kubelet::KubeletConfig, StartDroverError> {
    Ok(crate::kubelet::KubeletConfig::new(
        "drover-node",
        env.control_plane.state_dir().join("kubelet"),
    )
    .image(WORKER_IMAGE, binary("drover-worker")?)
    .image(WORKER_IMAGE_REPOSITORY, binary("drover-worker")?)
    .image(OPERATOR_IMAGE_REPOSITORY, binary("drover-operator")?)
    .run_as_service_accounts(env.control_plane.kubeconfig_path())
    .env("PUBSUB_PROJECT_ID", PUBSUB_PROJECT)
    .env("RUST_LOG", "info,kube=warn"))
}

/// Starts a process kubelet with [`kubelet_config`] and no operator (for an
/// operator installed with Helm).
pub async fn start_kubelet(
    env: &TestEnv,
) -> Result<crate::kubelet::ProcessKubelet, StartDroverError> {
    let client = env.control_plane.client().await?;
    Ok(crate::kubelet::ProcessKubelet::start(client, kubelet_config(env)?).await?)
}

/// Starts a process kubelet ([`start_kubelet`]) and one operator.
pub async fn start_drover(env: &TestEnv) -> Result<DroverProcesses, StartDroverError> {
    start_drover_with_args(env, &[]).await
}

/// [`start_drover`] with `extra` operator flags (e.g. [`archive_args`]).
pub async fn start_drover_with_args(
    env: &TestEnv,
    extra: &[String],
) -> Result<DroverProcesses, StartDroverError> {
    let kubelet = start_kubelet(env).await?;
    let port = crate::ports::free_loopback_ports(1)
        .map_err(StartDroverError::Port)?
        .first()
        .copied()
        .unwrap_or_default();
    let kubeconfig = crate::identity::operator_kubeconfig(env).await?;
    let operator = start_operator_with_args(
        env,
        &OperatorOptions {
            identity: "operator-0".into(),
            lease_seconds: 15,
            metrics_port: port,
            kubeconfig,
            failpoints: None,
        },
        extra,
    )?;
    Ok(DroverProcesses {
        operator,
        kubelet,
        operator_metrics: format!("http://127.0.0.1:{port}/metrics"),
    })
}

/// [`start_drover`] for a `&'static` environment shared by the tests of one
/// binary. `#[tokio::test]` gives every test its own runtime, which dies with
/// the test; the kubelet's tasks must outlive the test that started them, so
/// they run on a runtime of their own, on a thread that lives as long as the
/// test binary.
pub async fn start_drover_for_tests(
    env: &'static TestEnv,
) -> Result<DroverProcesses, StartDroverError> {
    start_drover_for_tests_with_args(env, Vec::new()).await
}

/// [`start_drover_for_tests`] with `extra` operator flags.
pub async fn start_drover_for_tests_with_args(
    env: &'static TestEnv,
    extra: Vec<String>,
) -> Result<DroverProcesses, StartDroverError> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("drover-e2e-runtime".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = sender.send(Err(StartDroverError::Port(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                let _ = sender.send(start_drover_with_args(env, &extra).await);
                std::future::pending::<()>().await
            });
        });
    if let Err(e) = spawned {
        return Err(StartDroverError::Port(e));
    }
    receiver.await.unwrap_or_else(|_| {
        Err(StartDroverError::Port(std::io::Error::other(
            "the runtime thread died",
        )))
    })
}

/// Drover for the tests of one binary, on the binary's shared environment
/// ([`crate::shared`]): started by the first test that asks, then shared.
pub async fn shared_drover() -> (&'static TestEnv, &'static DroverProcesses) {
    static DROVER: tokio::sync::OnceCell<DroverProcesses> = tokio::sync::OnceCell::const_new();
    let env = crate::shared().await;
    let processes = DROVER
        .get_or_init(|| async {
            start_drover_for_tests(env)
                .await
                .unwrap_or_else(|e| panic!("cannot start Drover: {}", crate::error_chain(&e)))
        })
        .await;
    (env, processes)
}

/// What a Drover end-to-end test starts from: the binary's shared
/// environment and Drover processes, a client, and a namespace of its own.
pub struct DroverTest {
    pub env: &'static TestEnv,
    pub drover: &'static DroverProcesses,
    pub client: kube::Client,
    pub namespace: String,
    /// The shared operator's log from this test's start on.
    operator_log: LogSince,
}

/// [`shared_drover`] plus a client and a new namespace named after `prefix`.
///
/// When the test ends without a panic, any RBAC refusal in the operator's log
/// since it started or in the logs of its namespace's pods fails it.
pub async fn drover_test(prefix: &str) -> DroverTest {
    let (env, drover) = shared_drover().await;
    let client = env.control_plane.client().await.expect("client");
    let namespace = env
        .control_plane
        .create_namespace(prefix)
        .await
        .expect("namespace");
    let operator_log = LogSince::now(drover.operator.log_path());
    DroverTest {
        env,
        drover,
        client,
        namespace,
        operator_log,
    }
}

impl Drop for DroverTest {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let mut logs = vec![self.operator_log.clone()];
        logs.extend(refusals::pod_logs(
            &self.drover.kubelet.pods_dir(),
            &self.namespace,
        ));
        refusals::assert_none(&format!("namespace {}", self.namespace), &logs);
    }
}

impl DroverTest {
    /// The shared environment, the Drover processes, a client and the
    /// namespace, for a test that names them itself; the test keeps `self`
    /// alive to the end so its logs are checked then.
    pub fn parts(
        &self,
    ) -> (
        &'static TestEnv,
        &'static DroverProcesses,
        kube::Client,
        String,
    ) {
        (
            self.env,
            self.drover,
            self.client.clone(),
            self.namespace.clone(),
        )
    }

    /// The objects of kind `K` in this test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// `<namespace>-<suffix>`: a queue name no other test uses.
    pub fn unique(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.namespace)
    }

    /// [`apply_fleet`] in this test's namespace.
    pub async fn apply_fleet(&self, fleet: PipelineWorker) -> PipelineWorker {
        apply_fleet(&self.client, &self.namespace, fleet).await
    }

    /// [`create_job`] in this test's namespace.
    pub async fn create_job(&self, job: Job) -> Job {
        create_job(&self.client, &self.namespace, job).await
    }
}

/// Applies `fleet` to `namespace` with server-side apply, the way a person's
/// `kubectl apply` would, and returns what the apiserver stored.
pub async fn apply_fleet(
    client: &kube::Client,
    namespace: &str,
    fleet: PipelineWorker,
) -> PipelineWorker {
    let name = fleet.name_any();
    Api::<PipelineWorker>::namespaced(client.clone(), namespace)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&fleet),
        )
        .await
        .unwrap_or_else(|e| panic!("PipelineWorker {name} does not apply: {e}"))
}

/// Creates `job` in `namespace` and returns what the apiserver stored.
pub async fn create_job(client: &kube::Client, namespace: &str, job: Job) -> Job {
    let name = job.name_any();
    Api::<Job>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &job)
        .await
        .unwrap_or_else(|e| panic!("Job {name} is not created: {e}"))
}
