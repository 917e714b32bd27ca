//! drover-worker: pulls Jobs from Pub/Sub, runs their pipeline and reports
//! every step to the Job's status.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use drover_crds::PipelineWorker;
use drover_queue::PubSubEndpoint;
use drover_runtime::http::{self, Health};
use drover_runtime::signals::StopSignals;
use drover_runtime::start::{kube_client, run_binary};
use drover_worker::fleet_config::watch_fleet;
use drover_worker::http::{WorkerState, readiness, status_routes};
use drover_worker::job_run::Worker;
use drover_worker::pull::{self, PullSettings};
use drover_worker::stats::Stats;
use kube::Api;
use prometheus_client::registry::Registry;

/// Drover worker. It learns everything but its identity from its PipelineWorker
/// object, so a setting can never drift between operator and worker.
#[derive(Parser, Debug)]
#[command(name = "drover-worker", version, about)]
struct Args {
    /// Namespace of this worker's PipelineWorker (downward API).
    #[arg(long, env = "DROVER_NAMESPACE")]
    namespace: String,

    /// Name of this worker's PipelineWorker.
    #[arg(long, env = "DROVER_WORKER_NAME")]
    worker_name: String,

    /// Name of this pod (downward API); it is written into Job claims.
    #[arg(long, env = "DROVER_POD_NAME")]
    pod_name: String,

    /// Address of the /healthz, /readyz, /status and /metrics server.
    #[arg(long, env = "DROVER_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,

    /// Google Cloud project for a queue that names none (set by the operator).
    #[arg(long, env = "PUBSUB_PROJECT_ID", default_value = "drover-local")]
    pubsub_project: String,

    /// The cluster's Pod and Service ranges (set by the operator): Jobs and
    /// the model API may not reach them unless the fleet allows a range.
    #[arg(long, env = "DROVER_CLUSTER_CIDRS", default_value = drover_crds::egress::DEFAULT_CLUSTER_CIDRS)]
    cluster_cidrs: String,

    /// Seconds in-flight Jobs may run on after SIGTERM before they are handed back.
    #[arg(long, env = "DROVER_DRAIN_SECONDS", default_value_t = 25)]
    drain_seconds: u64,
}

/// Logs who the apiserver takes this worker for (a SelfSubjectReview, which
/// every authenticated identity may make): a pod running with the wrong
/// ServiceAccount or token says so in its first lines, not in a refusal later.
async fn log_identity(client: kube::Client) {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let reviews: Api<SelfSubjectReview> = Api::all(client);
    match reviews
        .create(
            &kube::api::PostParams::default(),
            &SelfSubjectReview::default(),
        )
        .await
    {
        Ok(review) => {
            let user = review.status.and_then(|s| s.user_info).unwrap_or_default();
            tracing::info!(
                user = user.username.unwrap_or_default(),
                groups = user.groups.unwrap_or_default().join(","),
                "authenticated"
            );
        }
        Err(e) => tracing::warn!(error = %e, "cannot ask the apiserver who this worker is"),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    run_binary("drover-worker", || run(Args::parse())).await
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut signals = StopSignals::install()?;
    drover_worker::egress::set_cluster_ranges(
        drover_crds::egress::parse_list(&args.cluster_cidrs).context("--cluster-cidrs")?,
    );
    let client = kube_client().await?;
    let fleets: Api<PipelineWorker> = Api::namespaced(client.clone(), &args.namespace);
    let fleet = watch_fleet(fleets, &args.worker_name);
    let mut registry = Registry::default();
    let stats = Arc::new(Stats::register(&mut registry));
    let health = Arc::new(Health::new(registry, readiness(fleet.clone())));
    let state = Arc::new(WorkerState {
        pod: args.pod_name.clone(),
        fleet: fleet.clone(),
        stats: stats.clone(),
    });
    tracing::info!(worker = %args.worker_name, namespace = %args.namespace, pod = %args.pod_name, addr = %args.http_addr, "worker starting");
    tokio::spawn(log_identity(client.clone()));

    let worker = Arc::new(Worker::new(client, args.pod_name.clone(), stats));
    let settings = PullSettings {
        endpoint: PubSubEndpoint::from_env(),
        default_project: args.pubsub_project.clone(),
        drain_grace: std::time::Duration::from_secs(args.drain_seconds),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut puller = tokio::spawn(pull::run(worker, fleet, settings, stopped));
    let server = http::serve(args.http_addr, health, status_routes(state));
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => served.with_context(|| format!("the HTTP server on {} failed", args.http_addr))?,
        // The pull loop only ends on its own when the subscription's stream
        // does (a subscription that does not exist, say): exit, visibly.
        pulled = &mut puller => match pulled {
            Ok(result) => {
                result.context("the pull loop stopped")?;
                anyhow::bail!("the pull loop ended: the fleet's subscription stream closed");
            }
            Err(e) => anyhow::bail!("the pull loop panicked: {e}"),
        },
        signal = signals.recv() => tracing::info!("{signal}: stop pulling, drain in-flight Jobs"),
    }
    let _ = stop.send(true);
    // Keep serving health while draining, so probes do not kill a busy pod.
    tokio::select! {
        drained = puller => match drained {
            Ok(result) => result.context("the pull loop failed while draining")?,
            Err(e) => anyhow::bail!("the pull loop panicked while draining: {e}"),
        },
        served = server => served.with_context(|| format!("the HTTP server on {} failed", args.http_addr))?,
    }
    Ok(())
}
