//! The HTTP server of both binaries: `/healthz`, `/readyz` and `/metrics`,
//! plus whatever routes a binary adds (the worker's `/status`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::metrics::metrics_response;

/// The routes a binary adds to the shared ones.
pub use axum::Router;

/// Whether the process is ready; `Err` says what it still waits for.
type Readiness = Box<dyn Fn() -> Result<(), &'static str> + Send + Sync>;

/// What the shared endpoints report.
pub struct Health {
    registry: Registry,
    ready: Readiness,
}

impl Health {
    /// Serves `registry` on `/metrics`; `/readyz` answers 200 while `ready`
    /// returns `Ok`, and 503 with its reason otherwise.
    pub fn new(
        registry: Registry,
        ready: impl Fn() -> Result<(), &'static str> + Send + Sync + 'static,
    ) -> Self {
        Self {
            registry,
            ready: Box::new(ready),
        }
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("ready", &(self.ready)())
            .finish_non_exhaustive()
    }
}

/// The shared routes merged with `extra`.
pub fn router(health: Arc<Health>, extra: Router) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
        .merge(extra)
}

/// Serves [`router`] on `addr` until the listener fails.
pub async fn serve(addr: SocketAddr, health: Arc<Health>, extra: Router) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(health, extra)).await
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    match (health.ready)() {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(waiting_for) => (StatusCode::SERVICE_UNAVAILABLE, waiting_for),
    }
}

async fn metrics(State(health): State<Arc<Health>>) -> Response {
    metrics_response(&health.registry)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Starts the router on a free loopback port and returns its address.
    async fn start(health: Health, extra: Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(axum::serve(listener, router(Arc::new(health), extra)).into_future());
        addr
    }

    /// One plain HTTP/1.1 GET: the status line and the body.
    async fn fetch(addr: SocketAddr, path: &str) -> (String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response.lines().next().unwrap_or_default().to_owned();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn readyz_follows_the_readiness_check_and_says_what_it_waits_for() {
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let health = Health::new(Registry::default(), move || {
            flag.load(Ordering::Relaxed)
                .then_some(())
                .ok_or("waiting for the PipelineWorker")
        });
        let addr = start(health, Router::new()).await;

        let (status, body) = fetch(addr, "/readyz").await;
        assert!(status.contains("503"), "{status}");
        assert_eq!(body, "waiting for the PipelineWorker");
        ready.store(true, Ordering::Relaxed);
        let (status, body) = fetch(addr, "/readyz").await;
        assert!(status.contains("200"), "{status}");
        assert_eq!(body, "ready");
        assert!(fetch(addr, "/healthz").await.0.contains("200"));
    }

    #[tokio::test]
    async fn metrics_and_extra_routes_are_served_together() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("probes", "Probe count", counter.clone());
        counter.inc();
        let extra = Router::new().route("/status", get(|| async { "busy" }));
        let addr = start(Health::new(registry, || Ok(())), extra).await;

        let (status, body) = fetch(addr, "/metrics").await;
        assert!(status.contains("200"), "{status}");
        assert!(body.contains("probes_total 1"), "{body}");
        assert_eq!(fetch(addr, "/status").await.1, "busy");
    }
}
