//! The sandbox's Job archive: a throwaway PostgreSQL server ([`crate::postgres`])
//! on this machine when Debian's `postgresql` is installed, turned on in the
//! chart the sandbox installed on the node, so `kubectl drover history` reads
//! it through the apiserver's service proxy as it would in a cluster. Without
//! the package the sandbox runs without an archive and says how to get one.

use std::net::SocketAddr;
use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};

use crate::node::chart;
use crate::postgres::{INSTALL_HINT, Postgres, PostgresError, USER};

/// The Secret the chart reads the database URL from.
const DATABASE_SECRET: &str = "drover-archive-database";

/// A running archive for the sandbox's operator.
pub struct SandboxArchive {
    /// Held until teardown; dropped, the server stops and its data goes.
    pub postgres: Postgres,
}

/// Starts PostgreSQL for the archive, or says why there is none (`say` gets
/// each line to print). Logs go to `<state_dir>/archive`.
pub async fn start(state_dir: &Path, say: &mut dyn FnMut(&str)) -> Option<SandboxArchive> {
    match Postgres::start(&state_dir.join("archive")).await {
        Ok(postgres) => {
            say(&format!(
                "archive: PostgreSQL at {} (log {})",
                postgres.url(),
                postgres.log_path().display()
            ));
            Some(SandboxArchive { postgres })
        }
        Err(PostgresError::NotInstalled) => {
            say(&format!(
                "no archive: PostgreSQL is not installed (`{INSTALL_HINT}` gives finished Jobs a history that outlives their TTL, `kubectl drover history`)"
            ));
            None
        }
        Err(error) => {
            say(&format!(
                "no archive: PostgreSQL does not start: {}",
                crate::error_chain(&error)
            ));
            None
        }
    }
}

impl SandboxArchive {
    /// Turns the archive on in the installed chart: the database URL, as the
    /// operator pod reaches it (`pod_address`), goes into a Secret, and
    /// `helm upgrade` sets `archive.enabled` and waits for the new pod.
    pub async fn enable_in_chart(
        &self,
        client: &kube::Client,
        helm: &Path,
        kubeconfig: &Path,
        pod_address: SocketAddr,
    ) -> Result<(), String> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), chart::OPERATOR_NAMESPACE);
        let secret = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": DATABASE_SECRET},
            "stringData": {"url": format!("postgres://{USER}@{pod_address}/postgres")},
        });
        secrets
            .patch(
                DATABASE_SECRET,
                &PatchParams::apply("drover-sandbox").force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(|e| format!("cannot write the archive's Secret: {e}"))?;
        let kubeconfig = kubeconfig.display().to_string();
        let secret_name = format!("archive.database.secretName={DATABASE_SECRET}");
        crate::observe::run(
            helm,
            &[
                "upgrade",
                chart::RELEASE,
                "charts/drover",
                "--kubeconfig",
                &kubeconfig,
                "--namespace",
                chart::OPERATOR_NAMESPACE,
                "--reuse-values",
                "--set",
                "archive.enabled=true",
                "--set",
                &secret_name,
                "--wait",
                "--timeout",
                "2m",
            ],
        )
        .map(|_| ())
    }
}
