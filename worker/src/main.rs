//! drover-worker: pulls Jobs from Pub/Sub, runs their pipeline and reports
//! every step to the Job's status.

use clap::Parser;

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
    http_addr: std::net::SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt().json().init();
    tracing::info!(?args, "drover-worker configured");
    anyhow::bail!("the pull runtime is not wired into this build yet")
}
