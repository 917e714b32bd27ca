//! drover-operator: reconciles PipelineWorkers into worker fleets and drives
//! Jobs through Pub/Sub. Only the holder of the leader Lease reconciles; other
//! replicas wait, ready to take over.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use clap::Parser;
use drover_operator::config::OperatorConfig;
use drover_operator::http::{self, Health};
use drover_operator::metrics::Metrics;
use drover_operator::telemetry::init_json_logs;
use drover_operator::{dispatch, fleet};
use drover_queue::{PubSubEndpoint, PubSubQueue, QueueAdmin};
use kube::runtime::events::{Recorder, Reporter};
use kube_lease_manager::LeaseManagerBuilder;
use prometheus_client::registry::Registry;
use tokio::signal::unix::{SignalKind, signal};

/// Drover operator: turns each PipelineWorker into a worker Deployment scaled on
/// queue depth and publishes, retries and watches over every Job.
#[derive(Parser, Debug)]
#[command(name = "drover-operator", version, about)]
struct Args {
    /// Google Cloud project used when a PipelineWorker's queue names none.
    #[arg(long, env = "PUBSUB_PROJECT_ID", default_value = "drover-local")]
    pubsub_project: String,

    /// Worker image used when a PipelineWorker names none.
    #[arg(
        long,
        env = "DROVER_WORKER_IMAGE",
        default_value = "drover-worker:latest"
    )]
    worker_image: String,

    /// Address of the /healthz, /readyz and /metrics server.
    #[arg(long, env = "DROVER_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,

    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "DROVER_NAMESPACE", default_value = "default")]
    lease_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(long, default_value = "drover-operator")]
    lease_name: String,

    /// Seconds a leader holds the Lease without renewing it; a standby takes
    /// over at most this long after the leader dies.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,

    /// This replica's identity in the Lease (its pod name).
    #[arg(long, env = "DROVER_POD_NAME")]
    identity: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    init_json_logs("info,kube=warn");
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "drover-operator stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let client = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let endpoint = PubSubEndpoint::from_env();
    let config = OperatorConfig {
        worker_image: args.worker_image.clone(),
        pubsub_project: args.pubsub_project.clone(),
        pubsub_emulator_host: endpoint.emulator_host.clone(),
    };
    let queue = QueueAdmin::connect(&endpoint)
        .await
        .context("cannot create the Pub/Sub admin clients")?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let health = Arc::new(Health {
        registry,
        ready: false.into(),
    });
    let server = tokio::spawn(http::serve(args.metrics_addr, health.clone()));

    let lease = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_seconds)
        .with_grace(args.lease_seconds.div_ceil(3).max(1))
        .build()
        .await
        .context("cannot set up leader election")?;
    let (mut leader, lease_task) = lease.watch().await;
    // A standby is healthy and ready: it is doing its job, waiting.
    health.ready.store(true, Ordering::Relaxed);
    tracing::info!(%identity, lease = %args.lease_name, "waiting for leadership");

    while !*leader.borrow_and_update() {
        tokio::select! {
            changed = leader.changed() => changed.context("leader election stopped")?,
            _ = terminate.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
        }
    }
    tracing::info!(%identity, "leading");

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "drover-operator".into(),
            instance: Some(identity.clone()),
        },
    );
    let controllers = async {
        tokio::join!(
            fleet::run(
                client.clone(),
                config.clone(),
                queue.clone(),
                recorder.clone(),
                metrics.clone()
            ),
            dispatch::run(
                client,
                config,
                PubSubQueue::new(endpoint, queue),
                recorder,
                metrics
            ),
        );
    };
    let result = tokio::select! {
        () = controllers => Ok(()),
        lost = lost_leadership(&mut leader) => lost,
        served = server => match served {
            Ok(Ok(())) => Err(anyhow::anyhow!("the metrics server stopped")),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the metrics server failed")),
            Err(e) => Err(anyhow::Error::new(e).context("the metrics server panicked")),
        },
    };
    // Dropping the receiver makes the lease task release the Lease, so a
    // standby takes over at once instead of after the lease time.
    drop(leader);
    if let Ok(Err(error)) = lease_task.await {
        tracing::warn!(%error, "cannot release the leader Lease");
    }
    result
}

/// Returns an error once this replica is no longer the leader: it must stop
/// reconciling at once, and a restart makes it a clean standby.
async fn lost_leadership(leader: &mut tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
    loop {
        leader.changed().await.context("leader election stopped")?;
        if !*leader.borrow_and_update() {
            anyhow::bail!("lost the leader Lease");
        }
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "drover-operator".into());
    format!("{host}-{}", std::process::id())
}
