//! `/healthz`, `/readyz`, `/status` and `/metrics` of a worker.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use drover_operator::telemetry::metrics_response;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::fleet_config::FleetConfig;
use crate::stats::Stats;

/// What the endpoints read.
pub struct WorkerState {
    pub pod: String,
    pub fleet: FleetConfig,
    pub registry: Registry,
    pub stats: Arc<Stats>,
}

pub async fn serve(addr: SocketAddr, state: Arc<WorkerState>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

/// Ready once the worker knows its configuration.
async fn readyz(State(state): State<Arc<WorkerState>>) -> impl IntoResponse {
    if state.fleet.borrow().is_some() {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the PipelineWorker",
        )
    }
}

async fn status(State(state): State<Arc<WorkerState>>) -> impl IntoResponse {
    let fleet = state.fleet.borrow().clone();
    axum::Json(json!({
        "pod": state.pod,
        "worker": fleet.as_ref().and_then(|pw| pw.metadata.name.clone()),
        "pipeline": fleet.as_ref().map(|pw| pw.spec.pipeline.as_str()),
        "concurrency": fleet.as_ref().map(|pw| pw.spec.concurrency),
        "generation": fleet.as_ref().and_then(|pw| pw.metadata.generation),
        "jobs": state.stats.snapshot(),
    }))
}

async fn metrics(State(state): State<Arc<WorkerState>>) -> Response {
    metrics_response(&state.registry)
}
