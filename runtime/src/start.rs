//! The start-up both binaries share: logs, the Kubernetes client, and the
//! exit code with the whole error chain in one log line.

use std::future::Future;
use std::process::ExitCode;

use crate::logs::{DEFAULT_FILTER, init_json_logs};

/// The Kubernetes API cannot be reached.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)")]
pub struct KubeClientError(#[source] kube::Error);

/// A client from the in-cluster config or `KUBECONFIG`.
pub async fn kube_client() -> Result<kube::Client, KubeClientError> {
    kube::Client::try_default().await.map_err(KubeClientError)
}

/// The body of a binary's `main`: JSON logs, then `run`; a failure is logged
/// with its error chain as `"<name> stopped"` and exits non-zero.
pub async fn run_binary<F>(name: &str, run: impl FnOnce() -> F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    init_json_logs(DEFAULT_FILTER);
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "{name} stopped");
            ExitCode::FAILURE
        }
    }
}
