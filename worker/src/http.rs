//! The worker's own HTTP route, `/status`, served next to the shared
//! `/healthz`, `/readyz` and `/metrics` of drover-runtime.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::fleet_config::FleetConfig;
use crate::stats::Stats;

/// What `/status` reads.
pub struct WorkerState {
    pub pod: String,
    pub fleet: FleetConfig,
    pub stats: Arc<Stats>,
}

/// `/status`: this pod, its fleet's settings and the Jobs it runs.
pub fn status_routes(state: Arc<WorkerState>) -> Router {
    Router::new()
        .route("/status", get(status))
        .with_state(state)
}

/// Ready once the worker knows its configuration.
pub fn readiness(fleet: FleetConfig) -> impl Fn() -> Result<(), &'static str> + Send + Sync {
    move || {
        fleet
            .borrow()
            .is_some()
            .then_some(())
            .ok_or("waiting for the PipelineWorker")
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
