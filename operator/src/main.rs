//! drover-operator: reconciles PipelineWorkers into worker fleets and drives
//! Jobs through Pub/Sub. Only the holder of the leader Lease reconciles; other
//! replicas wait, ready to take over.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::Parser;
use drover_operator::archive::{self, Archive};
use drover_operator::config::OperatorConfig;
use drover_operator::leader::{Leadership, LeaseSettings, default_identity};
use drover_operator::metrics::Metrics;
use drover_operator::rbac::SecretCheck;
use drover_operator::{dispatch, fleet, watches};
use drover_queue::{PubSubEndpoint, PubSubQueue, QueueAdmin, SendGuard};
use drover_runtime::http::{self, Health};
use drover_runtime::signals::StopSignals;
use drover_runtime::start::{kube_client, run_binary};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::runtime::events::{Recorder, Reporter};
use prometheus_client::registry::Registry;

/// The operator holds every unfinished Job in memory; glibc's malloc kept
/// much of what it freed in per-thread arenas (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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

    /// The cluster's Pod and Service ranges, comma-separated: Jobs may not
    /// make workers reach them (nor loopback or link-local addresses) unless
    /// their fleet allows a range in `spec.egress.allowedCidrs`. The default
    /// covers every private range clusters allocate them from.
    #[arg(long, env = "DROVER_CLUSTER_CIDRS", default_value = drover_crds::egress::DEFAULT_CLUSTER_CIDRS)]
    cluster_cidrs: String,

    /// ClusterRole (shipped unbound by the chart) that grants `get` on
    /// Secrets; the operator binds itself to it in each namespace whose
    /// fleets reference Secrets, to report SecretNotFound. Empty: it reads
    /// no Secrets at all.
    #[arg(
        long,
        env = "DROVER_SECRET_CHECK_ROLE",
        default_value = "drover-secret-check"
    )]
    secret_check_role: String,

    /// PostgreSQL URL of the Job archive (`postgres://user:password@host/db`):
    /// finished Jobs are written there before their TTL deletes them, and
    /// are not deleted while it cannot be reached. Empty: no archive.
    #[arg(
        long,
        env = "DROVER_ARCHIVE_DATABASE_URL",
        default_value = "",
        hide_env_values = true
    )]
    archive_database_url: String,

    /// Address of the archive's read-only HTTP endpoint (`kubectl drover
    /// history`), served only with an archive.
    #[arg(long, env = "DROVER_ARCHIVE_ADDR", default_value = "0.0.0.0:8082")]
    archive_addr: SocketAddr,

    /// This replica's identity in the Lease (its pod name).
    #[arg(long, env = "DROVER_POD_NAME")]
    identity: Option<String>,

    #[command(flatten)]
    callbacks: drover_operator::callback_settings::CallbackArgs,
}

/// Who this operator is, as the apiserver sees it (a SelfSubjectReview,
/// which every authenticated identity may make), for the bindings that let
/// it check a fleet's Secrets.
async fn secret_check(
    client: &kube::Client,
    cluster_role: &str,
) -> anyhow::Result<Option<SecretCheck>> {
    if cluster_role.is_empty() {
        return Ok(None);
    }
    let reviews: kube::Api<SelfSubjectReview> = kube::Api::all(client.clone());
    let review = reviews
        .create(
            &kube::api::PostParams::default(),
            &SelfSubjectReview::default(),
        )
        .await
        .context("cannot ask the apiserver who this operator is (SelfSubjectReview)")?;
    let username = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .context("the SelfSubjectReview named no user")?;
    Ok(Some(SecretCheck::for_user(cluster_role, &username)))
}

#[tokio::main]
async fn main() -> ExitCode {
    run_binary("drover-operator", || run(Args::parse())).await
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut signals = StopSignals::install()?;
    let client = kube_client().await?;
    let endpoint = PubSubEndpoint::from_env();
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let archive = match args.archive_database_url.trim() {
        "" => None,
        url => Some(Archive::start(url).context("--archive-database-url")?),
    };
    let config = OperatorConfig {
        worker_image: args.worker_image.clone(),
        pubsub_project: args.pubsub_project.clone(),
        pubsub_emulator_host: endpoint.emulator_host.clone(),
        identity: identity.clone(),
        cluster_cidrs: drover_crds::egress::parse_list(&args.cluster_cidrs)
            .context("--cluster-cidrs")?,
        secret_check: secret_check(&client, &args.secret_check_role).await?,
        callbacks: args.callbacks.urls().context("callback settings")?,
        archive: archive.clone(),
    };
    let queue = QueueAdmin::connect(&endpoint)
        .await
        .context("cannot create the Pub/Sub admin clients")?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    // Set once the replica leads or waits as a standby.
    let ready = Arc::new(AtomicBool::new(false));
    let health = Health::new(registry, {
        let ready = ready.clone();
        move || {
            ready
                .load(Ordering::Relaxed)
                .then_some(())
                .ok_or("starting")
        }
    });
    let server = tokio::spawn(http::serve(
        args.metrics_addr,
        Arc::new(health),
        http::Router::new(),
    ));

    // Every replica serves the archive's history, standbys included.
    let archive_server = tokio::spawn({
        let (addr, archive) = (args.archive_addr, archive.clone());
        async move {
            match archive {
                Some(archive) => archive::http::serve(addr, archive).await,
                None => std::future::pending().await,
            }
        }
    });

    let lease = LeaseSettings {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: identity.clone(),
        seconds: args.lease_seconds,
    };
    let leadership = Leadership::join(client.clone(), &lease).await?;
    // A standby is healthy and ready: it is doing its job, waiting.
    ready.store(true, Ordering::Relaxed);
    tracing::info!(%identity, lease = %args.lease_name, "waiting for leadership");
    tokio::select! {
        () = leadership.acquired() => {}
        _ = signals.recv() => {
            leadership.release().await;
            return Ok(());
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
    // One watch of Jobs and one of PipelineWorkers feed both controllers.
    let (fleet_watches, job_watches) = watches::shared(&client);
    // The library retries a failed publish by itself: only while this
    // replica can prove it leads.
    let gate = leadership.gate();
    let may_publish = SendGuard::new(move || gate.leads());
    // Only a leader records callbacks; the port opens once this replica leads.
    tokio::spawn(args.callbacks.clone().serve(
        client.clone(),
        config.callbacks.clone(),
        leadership.gate(),
    ));
    let controllers = async {
        tokio::join!(
            fleet::run(
                client.clone(),
                config.clone(),
                queue.clone(),
                recorder.clone(),
                metrics.clone(),
                fleet_watches,
                leadership.gate(),
            ),
            dispatch::run(
                client,
                config,
                PubSubQueue::new(endpoint, queue, may_publish),
                recorder,
                metrics,
                job_watches,
                leadership.gate(),
            ),
        );
    };
    let result = tokio::select! {
        () = controllers => Ok(()),
        lost = leadership.lost() => Err(lost.into()),
        served = server => match served {
            Ok(Ok(())) => Err(anyhow::anyhow!("the metrics server stopped")),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the metrics server failed")),
            Err(e) => Err(anyhow::Error::new(e).context("the metrics server panicked")),
        },
        served = archive_server => match served {
            Ok(Ok(())) => Err(anyhow::anyhow!("the archive server stopped")),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the archive server failed")),
            Err(e) => Err(anyhow::Error::new(e).context("the archive server panicked")),
        },
    };
    leadership.release().await;
    result
}
