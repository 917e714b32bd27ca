//! The archive's read-only HTTP endpoint, `GET /archive/v1/jobs?...`: the
//! finished Jobs `kubectl drover history` lists, read through the
//! apiserver's service proxy so users need no database credentials. It
//! listens on a port of its own, apart from `/metrics`, so the Service and
//! RBAC that expose it expose nothing else.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use drover_crds::history::{HistoryQuery, JOBS_PATH};

use super::Archive;

/// The endpoint's routes.
pub fn router(archive: Archive) -> axum::Router {
    axum::Router::new()
        .route(JOBS_PATH, get(jobs))
        .with_state(archive)
}

/// Serves [`router`] on `addr` until the listener fails.
pub async fn serve(addr: SocketAddr, archive: Archive) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, path = JOBS_PATH, "serving the archive");
    axum::serve(listener, router(archive)).await
}

async fn jobs(State(archive): State<Archive>, RawQuery(query): RawQuery) -> Response {
    let query = match HistoryQuery::from_query_string(query.as_deref().unwrap_or_default()) {
        Ok(query) => query,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    match archive.history(&query).await {
        Ok(page) => Json(page).into_response(),
        Err(error) => {
            tracing::warn!(%error, "cannot read the archive");
            (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response()
        }
    }
}
