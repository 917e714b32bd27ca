//! drover-operator: reconciles PipelineWorkers into worker fleets and drives
//! Jobs through Pub/Sub.

use clap::Parser;

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
    metrics_addr: std::net::SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt().json().init();
    tracing::info!(?args, "drover-operator configured");
    anyhow::bail!("the controllers are not wired into this build yet")
}
