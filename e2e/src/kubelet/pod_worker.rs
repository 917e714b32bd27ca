//! One pod's life on the node: start its container as a process, probe it,
//! restart it when it crashes, report every change in the Pod's status, and on
//! deletion stop it gracefully and remove the Pod object.
//!
//! The worker is a single task and a single loop: it waits for the next thing
//! that happened (a new version of the Pod, the process exiting, a probe result,
//! a deadline), updates its state, and reports the resulting status if it
//! changed. Only the first container is run.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::backoff::{self, Backoff};
use super::container::{self, ContainerProcess, Launch, PodDirs};
use super::env::{self, PodContext};
use super::ips::LeasedIp;
use super::probe::{self, ProbeKind, ProbeResult, ProbeUpdate};
use super::status::{self, Conditions, Readiness};
use super::{FIELD_MANAGER, RegistryEntry, Shared, images, node};

/// The Kubernetes default for `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECONDS: i64 = 30;
/// How soon a status write that failed (apiserver unreachable…) is retried.
const STATUS_RETRY: Duration = Duration::from_millis(500);
const DELETE_RETRY: Duration = Duration::from_millis(200);
/// Room for a burst of probe results; a prober waits when it is full.
const PROBE_CHANNEL: usize = 16;

/// What the kubelet's pod watch says about a pod.
#[derive(Debug, Clone)]
pub(crate) enum Desired {
    Present(Arc<Pod>),
    /// Removed from the API by someone else (force-deleted, or deleted while the
    /// watch was down): stop the process and forget the pod.
    Gone,
}

/// What every pod worker shares.
#[derive(Clone)]
pub(crate) struct Context {
    pub shared: Arc<Shared>,
    pub client: Client,
    pub recorder: Recorder,
}

/// Runs the pod until it is deleted (or the task is aborted).
pub(crate) async fn run(ctx: Context, pod: Arc<Pod>, desired: watch::Receiver<Desired>) {
    let (Some(namespace), Some(name), Some(uid)) = (
        pod.metadata.namespace.clone(),
        pod.metadata.name.clone(),
        pod.metadata.uid.clone(),
    ) else {
        tracing::warn!(?pod.metadata, "ignoring a pod without namespace, name or uid");
        return;
    };
    let Some(container_name) = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone())
    else {
        tracing::warn!(namespace, name, "ignoring a pod without containers");
        return;
    };
    let Some(ip) = LeasedIp::allocate() else {
        tracing::error!(
            namespace,
            name,
            "no loopback pod IP left; cannot run the pod"
        );
        return;
    };
    let dirs = PodDirs::new(
        &ctx.shared.config.state_dir,
        &namespace,
        &name,
        &uid,
        &container_name,
    );
    let entry = ctx.shared.register_pod(
        &namespace,
        &name,
        &uid,
        ip.address(),
        &dirs.workdir,
        &dirs.log,
    );
    let worker = PodWorker {
        pods: Api::namespaced(ctx.client.clone(), &namespace),
        ctx,
        desired,
        desired_closed: false,
        deleting: pod
            .metadata
            .deletion_timestamp
            .is_some()
            .then_some(Deletion { gone: false }),
        pod,
        namespace,
        name,
        uid,
        container_name,
        ip,
        dirs,
        entry,
        start_time: Timestamp::now(),
        conditions: Conditions::default(),
        state: waiting("ContainerCreating", None),
        last_state: None,
        program: None,
        runs: 0,
        crash_backoff: Backoff::default(),
        retry_backoff: Backoff::default(),
        run: None,
        retry_at: Some(Instant::now()),
        terminal: false,
        last_reported: None,
        status_retry_at: None,
    };
    worker.run().await;
}

struct Deletion {
    /// The Pod object is already gone: nothing to write or delete.
    gone: bool,
}

/// One run of the container's process.
struct Run {
    process: ContainerProcess,
    probers: JoinSet<()>,
    probe_updates: mpsc::Sender<ProbeUpdate>,
    probe_results: mpsc::Receiver<ProbeUpdate>,
    /// The startup probe passed (or there is none).
    started: bool,
    /// The readiness probe passes (or there is none).
    ready: bool,
    /// Why it is not ready, from the last failing probe.
    not_ready_detail: Option<String>,
    /// SIGTERM was sent; SIGKILL follows at `kill_at`.
    stopping: bool,
    kill_at: Option<Instant>,
}

impl Run {
    /// SIGTERM now, SIGKILL after `grace` unless the process is gone by then. A
    /// second call can only bring the SIGKILL forward (a shorter grace period).
    fn stop(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        if !self.stopping {
            self.stopping = true;
            self.process.signal(libc::SIGTERM);
        }
        self.kill_at = Some(self.kill_at.map_or(deadline, |at| at.min(deadline)));
    }
}

enum Wake {
    /// A new version of the Pod; `false` if the channel closed.
    Desired(bool),
    Exited(ExitStatus),
    Probe(ProbeUpdate),
    KillDeadline,
    Retry,
    StatusRetry,
}

struct PodWorker {
    ctx: Context,
    pods: Api<Pod>,
    desired: watch::Receiver<Desired>,
    desired_closed: bool,
    /// The latest version of the Pod.
    pod: Arc<Pod>,
    namespace: String,
    name: String,
    uid: String,
    container_name: String,
    ip: LeasedIp,
    dirs: PodDirs,
    entry: RegistryEntry,
    start_time: Timestamp,
    conditions: Conditions,
    /// The container's state and last termination, as reported.
    state: ContainerState,
    last_state: Option<ContainerState>,
    /// The executable the image maps to, once known.
    program: Option<PathBuf>,
    /// How many processes were created; the restart count is one less.
    runs: u32,
    crash_backoff: Backoff,
    /// For image and configuration errors, which are not restarts.
    retry_backoff: Backoff,
    run: Option<Run>,
    /// When not running: when to try to start again (`None`: not until something
    /// changes, e.g. the restart policy says never).
    retry_at: Option<Instant>,
    deleting: Option<Deletion>,
    /// The pod is finished for good (deleted and stopped): the final status.
    terminal: bool,
    last_reported: Option<Value>,
    status_retry_at: Option<Instant>,
}

impl PodWorker {
    async fn run(mut self) {
        tracing::debug!(namespace = %self.namespace, name = %self.name, ip = %self.ip.address(), "pod worker started");
        loop {
            if self.deleting.is_some() && self.run.is_none() {
                self.finish().await;
                return;
            }
            self.report().await;
            let wake = self.next_wake().await;
            self.handle(wake).await;
        }
    }

    async fn next_wake(&mut self) -> Wake {
        let status_retry = self.status_retry_at;
        // A closed channel is reported once; polling it again would spin.
        let watching = !self.desired_closed;
        let retry_at = if self.deleting.is_some() {
            None
        } else {
            self.retry_at
        };
        match &mut self.run {
            Some(run) => {
                let kill_at = run.kill_at;
                tokio::select! {
                    changed = self.desired.changed(), if watching => Wake::Desired(changed.is_ok()),
                    status = run.process.exited() => Wake::Exited(status),
                    Some(update) = run.probe_results.recv() => Wake::Probe(update),
                    () = sleep_until(kill_at) => Wake::KillDeadline,
                    () = sleep_until(status_retry) => Wake::StatusRetry,
                }
            }
            None => tokio::select! {
                changed = self.desired.changed(), if watching => Wake::Desired(changed.is_ok()),
                () = sleep_until(retry_at) => Wake::Retry,
                () = sleep_until(status_retry) => Wake::StatusRetry,
            },
        }
    }

    async fn handle(&mut self, wake: Wake) {
        match wake {
            Wake::Desired(open) => {
                self.desired_closed |= !open;
                self.pod_changed().await;
            }
            Wake::Exited(status) => self.exited(status).await,
            Wake::Probe(update) => self.probed(update).await,
            Wake::KillDeadline => {
                if let Some(run) = &mut self.run {
                    tracing::info!(namespace = %self.namespace, name = %self.name, pid = run.process.pid(), "grace period over; sending SIGKILL");
                    run.process.signal(libc::SIGKILL);
                    run.kill_at = None;
                }
            }
            Wake::Retry => {
                self.retry_at = None;
                self.start().await;
            }
            // The loop reports again.
            Wake::StatusRetry => self.status_retry_at = None,
        }
    }

    async fn pod_changed(&mut self) {
        // A closed channel means the supervisor is going away: treat it as gone.
        let desired = if self.desired_closed {
            Desired::Gone
        } else {
            self.desired.borrow_and_update().clone()
        };
        let gone = match desired {
            Desired::Present(pod) => {
                self.pod = pod;
                if self.pod.metadata.deletion_timestamp.is_none() {
                    return;
                }
                false
            }
            Desired::Gone => true,
        };
        let first = self.deleting.is_none();
        match &mut self.deleting {
            Some(deletion) => deletion.gone |= gone,
            None => self.deleting = Some(Deletion { gone }),
        }
        let grace = self.deletion_grace();
        if let Some(run) = &mut self.run {
            run.stop(grace);
            if first {
                let note = format!(
                    "Stopping container {} (grace period {grace:?})",
                    self.container_name
                );
                self.event(EventType::Normal, "Killing", "Kill", note).await;
            }
        }
    }

    /// The deletion's grace period (the apiserver records the one asked for),
    /// else the pod's own.
    fn deletion_grace(&self) -> Duration {
        let seconds = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(DEFAULT_GRACE_SECONDS);
        Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
    }

    fn container(&self) -> Option<&Container> {
        self.pod.spec.as_ref().and_then(|s| s.containers.first())
    }

    fn restart_count(&self) -> u32 {
        self.runs.saturating_sub(1)
    }

    /// Tries to start the container: image, then environment, then the process.
    async fn start(&mut self) {
        let Some(container) = self.container().cloned() else {
            return;
        };
        let image = container.image.clone().unwrap_or_default();

        let Some(program) =
            images::resolve(&self.ctx.shared.config.images, &image).map(PathBuf::from)
        else {
            let mapped: Vec<&str> = self
                .ctx
                .shared
                .config
                .images
                .keys()
                .map(String::as_str)
                .collect();
            let reason = format!(
                "the process kubelet has no executable for image {image:?} (it maps {mapped:?})"
            );
            // Like a kubelet: ErrImagePull on the first failure, ImagePullBackOff
            // while it keeps retrying.
            let pulled_before = self
                .state
                .waiting
                .as_ref()
                .and_then(|w| w.reason.as_deref())
                .is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff");
            if pulled_before {
                let message = format!("Back-off pulling image {image:?}: {reason}");
                self.state = waiting("ImagePullBackOff", Some(message.clone()));
                self.event(EventType::Normal, "BackOff", "Pulling", message)
                    .await;
            } else {
                let message = format!("Failed to pull image {image:?}: {reason}");
                self.state = waiting("ErrImagePull", Some(message.clone()));
                self.event(EventType::Warning, "Failed", "Pulling", message)
                    .await;
            }
            self.retry_at = Some(Instant::now() + self.retry_backoff.next_retry());
            return;
        };
        self.program = Some(program.clone());

        let environment = match self.resolve_env(&container).await {
            Ok(environment) => environment,
            Err(error) => {
                let message = crate::error_chain(&error);
                self.state = waiting("CreateContainerConfigError", Some(message.clone()));
                self.event(
                    EventType::Warning,
                    "Failed",
                    "Create",
                    format!("Error: {message}"),
                )
                .await;
                self.retry_at = Some(Instant::now() + self.retry_backoff.next_retry());
                return;
            }
        };
        self.retry_backoff.reset();

        self.runs += 1;
        let launched = std::fs::create_dir_all(&self.dirs.workdir)
            .map_err(|e| {
                format!(
                    "cannot create the pod directory {}: {e}",
                    self.dirs.workdir.display()
                )
            })
            .and_then(|()| {
                ContainerProcess::launch(Launch {
                    name: format!(
                        "pod {}/{} container {}",
                        self.namespace, self.name, self.container_name
                    ),
                    program: &program,
                    args: container::arguments(&container, &environment),
                    env: &environment,
                    workdir: &self.dirs.workdir,
                    log: &self.dirs.log,
                })
                .map_err(|e| crate::error_chain(&e))
            });
        let process = match launched {
            Ok(process) => process,
            Err(message) => {
                // What a runtime reports when the entrypoint cannot be started.
                let now = Timestamp::now();
                let terminated = ContainerStateTerminated {
                    exit_code: 128,
                    reason: Some("StartError".to_owned()),
                    message: Some(message.clone()),
                    started_at: Some(Time(now)),
                    finished_at: Some(Time(now)),
                    ..ContainerStateTerminated::default()
                };
                self.event(
                    EventType::Warning,
                    "Failed",
                    "Start",
                    format!("Error: {message}"),
                )
                .await;
                self.entry.set_process(None, self.restart_count());
                self.after_exit(terminated, Duration::ZERO).await;
                return;
            }
        };
        if !self
            .entry
            .set_process(Some(process.process().clone()), self.restart_count())
        {
            // The kubelet is being dropped; `process` is killed as it goes out of scope.
            return;
        }
        let pid = process.pid();
        if self.state.terminated.is_some() {
            self.last_state = Some(std::mem::take(&mut self.state));
        }
        self.state = ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(process.started_at())),
            }),
            ..ContainerState::default()
        };
        let (probe_updates, probe_results) = mpsc::channel(PROBE_CHANNEL);
        let mut run = Run {
            process,
            probers: JoinSet::new(),
            probe_updates,
            probe_results,
            started: container.startup_probe.is_none(),
            ready: container.readiness_probe.is_none(),
            not_ready_detail: None,
            stopping: false,
            kill_at: None,
        };
        match &container.startup_probe {
            Some(startup) => probe::spawn(
                &mut run.probers,
                ProbeKind::Startup,
                startup,
                &container,
                self.ip.address(),
                run.probe_updates.clone(),
            ),
            None => spawn_probers(&mut run, &container, self.ip.address()),
        }
        self.run = Some(run);
        tracing::info!(namespace = %self.namespace, name = %self.name, pid, ip = %self.ip.address(), program = %program.display(), "started container process");
        let note = format!(
            "Started container {} (pid {pid}, ip {})",
            self.container_name,
            self.ip.address()
        );
        self.event(EventType::Normal, "Started", "Start", note)
            .await;
    }

    async fn resolve_env(&self, container: &Container) -> Result<env::Env, env::EnvError> {
        let objects = env::fetch(
            &self.ctx.client,
            &self.namespace,
            &env::references(container),
        )
        .await?;
        let allocatable = node::allocatable();
        let ctx = PodContext {
            pod: &self.pod,
            container,
            pod_ip: self.ip.address(),
            host_ip: node::HOST_IP,
            node_allocatable: &allocatable,
        };
        let config = &self.ctx.shared.config;
        match &config.service_account_kubeconfig {
            None => env::resolve(&ctx, &objects, &config.extra_env),
            Some(admin) => {
                let account = self
                    .pod
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.service_account_name.clone())
                    .unwrap_or_else(|| "default".to_owned());
                let path = self.dirs.workdir.join("serviceaccount.kubeconfig");
                env::write_service_account_kubeconfig(
                    &self.ctx.client,
                    admin,
                    &path,
                    &self.pod,
                    &account,
                )
                .await?;
                let mut node_env = config.extra_env.clone();
                node_env.insert("KUBECONFIG".to_owned(), path.display().to_string());
                env::resolve(&ctx, &objects, &node_env)
            }
        }
    }

    async fn exited(&mut self, status: ExitStatus) {
        let Some(run) = self.run.take() else {
            return;
        };
        let pid = run.process.pid();
        let terminated =
            container::terminated(status, pid, run.process.started_at(), Timestamp::now());
        let ran_for = run.process.uptime();
        // Stops the probers; the process is already reaped.
        drop(run);
        self.entry.set_process(None, self.restart_count());
        tracing::info!(
            namespace = %self.namespace, name = %self.name, pid,
            status = %crate::process::describe_status(status), ?ran_for,
            "container process exited"
        );
        self.after_exit(terminated, ran_for).await;
    }

    /// Decides what follows a termination: nothing (deleting, or the restart
    /// policy says so), an immediate restart, or a restart after back-off.
    async fn after_exit(&mut self, terminated: ContainerStateTerminated, ran_for: Duration) {
        let exit_code = terminated.exit_code;
        let dead = ContainerState {
            terminated: Some(terminated),
            ..ContainerState::default()
        };
        let policy = self.restart_policy();
        let restart = match policy.as_str() {
            "Never" => false,
            "OnFailure" => exit_code != 0,
            _ => true,
        };
        if self.deleting.is_some() || !restart {
            self.state = dead;
            self.retry_at = None;
            return;
        }
        if ran_for >= backoff::RESET_AFTER {
            self.crash_backoff.reset();
        }
        match self.crash_backoff.next_delay() {
            None => {
                self.state = dead;
                self.retry_at = Some(Instant::now());
            }
            Some(delay) => {
                self.last_state = Some(dead);
                let message = format!(
                    "back-off {delay:?} restarting failed container={} pod={}_{}({})",
                    self.container_name, self.name, self.namespace, self.uid
                );
                self.state = waiting("CrashLoopBackOff", Some(message));
                self.retry_at = Some(Instant::now() + delay);
                let note = format!(
                    "Back-off restarting failed container {} in pod {}",
                    self.container_name, self.name
                );
                self.event(EventType::Warning, "BackOff", "Restart", note)
                    .await;
            }
        }
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".to_owned())
    }

    async fn probed(&mut self, update: ProbeUpdate) {
        let Some(container) = self.container().cloned() else {
            return;
        };
        let Some(run) = &mut self.run else {
            return;
        };
        if run.stopping {
            // The process is on its way out; its results no longer matter.
            return;
        }
        let failed = update
            .failure
            .as_ref()
            .map(|f| format!("{} probe failed: {f}", update.kind.label()));
        let mut restart_for = None;
        match update.kind {
            ProbeKind::Startup => match update.result {
                ProbeResult::Success => {
                    run.started = true;
                    run.not_ready_detail = None;
                    spawn_probers(run, &container, self.ip.address());
                }
                ProbeResult::Failure => restart_for = Some("startup"),
                ProbeResult::Unknown => run.not_ready_detail = failed.clone(),
            },
            ProbeKind::Readiness => {
                run.ready = update.result == ProbeResult::Success;
                run.not_ready_detail = if run.ready { None } else { failed.clone() };
            }
            ProbeKind::Liveness => {
                if update.result == ProbeResult::Failure {
                    restart_for = Some("liveness");
                }
            }
        }
        if let Some(message) = failed {
            self.event(EventType::Warning, "Unhealthy", "Probe", message)
                .await;
        }
        if let Some(probe) = restart_for {
            // The probe's own grace period if it has one, else the pod's.
            let probe_grace = match update.kind {
                ProbeKind::Startup => container.startup_probe.as_ref(),
                _ => container.liveness_probe.as_ref(),
            }
            .and_then(|p| p.termination_grace_period_seconds);
            let seconds = probe_grace
                .or_else(|| {
                    self.pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                })
                .unwrap_or(DEFAULT_GRACE_SECONDS);
            if let Some(run) = &mut self.run {
                run.stop(Duration::from_secs(u64::try_from(seconds).unwrap_or(0)));
            }
            let note = format!(
                "Container {} failed {probe} probe, will be restarted",
                self.container_name
            );
            self.event(EventType::Normal, "Killing", "Kill", note).await;
        }
    }

    /// The pod is being deleted and its process is gone: write the final status
    /// and remove the Pod object (unless it is gone already).
    async fn finish(&mut self) {
        if self.deleting.as_ref().is_some_and(|d| d.gone) {
            tracing::debug!(namespace = %self.namespace, name = %self.name, "pod gone from the API; worker done");
            return;
        }
        if self.state.terminated.is_none() {
            // Never ran, or was waiting to run again: a kubelet reports the last
            // termination if there was one, else that the container is unknown.
            self.state = match self.last_state.take() {
                Some(last) if last.terminated.is_some() => last,
                _ => ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 137,
                        reason: Some("ContainerStatusUnknown".to_owned()),
                        message: Some(
                            "The container could not be located when the pod was terminated"
                                .to_owned(),
                        ),
                        ..ContainerStateTerminated::default()
                    }),
                    ..ContainerState::default()
                },
            };
        }
        self.terminal = true;
        self.report().await;

        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        loop {
            match self.pods.delete(&self.name, &params).await {
                Ok(_) => {
                    tracing::info!(namespace = %self.namespace, name = %self.name, "pod stopped and removed");
                    return;
                }
                // Gone already, or replaced by a pod that reuses the name.
                Err(kube::Error::Api(status)) if status.is_not_found() || status.is_conflict() => {
                    return;
                }
                Err(error) => {
                    tracing::warn!(namespace = %self.namespace, name = %self.name, %error, "cannot remove the pod; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(DELETE_RETRY) => {}
                        changed = self.desired.changed() => {
                            if changed.is_err() || matches!(*self.desired.borrow_and_update(), Desired::Gone) {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    fn build_status(&mut self) -> PodStatus {
        let now = Timestamp::now();
        let run = self.run.as_ref();
        let started = run.is_some_and(|r| r.started);
        let ready = run.is_some_and(|r| r.started && r.ready);
        let detail = run.and_then(|r| r.not_ready_detail.clone());
        let conditions = self.conditions.compute(
            &self.pod,
            &Readiness {
                container: &self.container_name,
                ready,
                detail: detail.as_deref(),
                terminal: self.terminal,
            },
            now,
        );
        let container_id = run
            .map(|r| container::container_id(r.process.pid()))
            .or_else(|| {
                self.state
                    .terminated
                    .as_ref()
                    .and_then(|t| t.container_id.clone())
            });
        let image = |c: &Container| c.image.clone().unwrap_or_default();
        let mut statuses = Vec::new();
        for (index, c) in self.pod.spec.iter().flat_map(|s| &s.containers).enumerate() {
            statuses.push(if index == 0 {
                ContainerStatus {
                    name: c.name.clone(),
                    image: image(c),
                    image_id: self
                        .program
                        .as_deref()
                        .map(container::image_id)
                        .unwrap_or_default(),
                    container_id: container_id.clone(),
                    ready,
                    started: Some(started),
                    restart_count: i32::try_from(self.restart_count()).unwrap_or(i32::MAX),
                    state: Some(self.state.clone()),
                    last_state: self.last_state.clone(),
                    ..ContainerStatus::default()
                }
            } else {
                ContainerStatus {
                    name: c.name.clone(),
                    image: image(c),
                    started: Some(false),
                    state: Some(waiting(
                        "Unsupported",
                        Some("the process kubelet runs only a pod's first container".to_owned()),
                    )),
                    ..ContainerStatus::default()
                }
            });
        }
        let ip = self.ip.address().to_string();
        let host_ip = node::HOST_IP.to_string();
        PodStatus {
            phase: Some(
                status::phase(
                    &self.restart_policy(),
                    &self.state,
                    self.last_state.as_ref(),
                    self.terminal,
                )
                .to_owned(),
            ),
            conditions: Some(conditions),
            host_ip: Some(host_ip.clone()),
            host_ips: Some(vec![HostIP { ip: host_ip }]),
            pod_ip: Some(ip.clone()),
            pod_ips: Some(vec![PodIP { ip }]),
            start_time: Some(Time(self.start_time)),
            container_statuses: Some(statuses),
            observed_generation: self.pod.metadata.generation,
            ..PodStatus::default()
        }
    }

    /// Writes the status if it changed since the last successful write.
    async fn report(&mut self) {
        let status = self.build_status();
        let body = status::apply_body(&self.pod, &status);
        if self.last_reported.as_ref() == Some(&body) {
            return;
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match self
            .pods
            .patch_status(&self.name, &params, &Patch::Apply(&body))
            .await
        {
            Ok(_) => {
                self.last_reported = Some(body);
                self.status_retry_at = None;
            }
            // Deleted meanwhile: the watch is about to say so.
            Err(kube::Error::Api(status)) if status.is_not_found() => {
                self.last_reported = Some(body);
                self.status_retry_at = None;
            }
            // Refused (e.g. the uid no longer matches): the same write would be
            // refused again, so it is not retried.
            Err(kube::Error::Api(status)) if (400..500).contains(&status.code) => {
                tracing::warn!(namespace = %self.namespace, name = %self.name, error = %status, "the apiserver refused the pod status");
                self.last_reported = Some(body);
                self.status_retry_at = None;
            }
            Err(error) => {
                tracing::warn!(namespace = %self.namespace, name = %self.name, %error, "cannot write the pod status; retrying");
                self.status_retry_at = Some(Instant::now() + STATUS_RETRY);
            }
        }
    }

    /// Records an Event on the pod; best effort, like the kubelet's.
    async fn event(&self, type_: EventType, reason: &str, action: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(error) = self
            .ctx
            .recorder
            .publish(&event, &self.pod.object_ref(&()))
            .await
        {
            tracing::debug!(namespace = %self.namespace, name = %self.name, %error, "cannot record an event");
        }
    }
}

/// Readiness and liveness probes start once the container has started.
fn spawn_probers(run: &mut Run, container: &Container, pod_ip: Ipv4Addr) {
    for (kind, probe) in [
        (ProbeKind::Readiness, &container.readiness_probe),
        (ProbeKind::Liveness, &container.liveness_probe),
    ] {
        if let Some(probe) = probe {
            probe::spawn(
                &mut run.probers,
                kind,
                probe,
                container,
                pod_ip,
                run.probe_updates.clone(),
            );
        }
    }
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message,
        }),
        ..ContainerState::default()
    }
}

/// Sleeps until `deadline`, or forever without one (a disabled `select!` arm).
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
