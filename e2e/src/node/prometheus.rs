//! A real Prometheus (Debian's package) inside the node's network
//! namespace, scraping Drover's pods (the operator and every worker) at
//! their pod IPs, as the chart's ServiceMonitor and PodMonitor tell a
//! Prometheus Operator to. Debian builds Prometheus without
//! `kubernetes_sd_configs`, so a task here lists the pods and keeps a
//! `file_sd` target file, with the labels the PodMonitor gives. Its HTTP API
//! is forwarded to the machine's loopback, at the same port.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Node;
use super::namespaces::Forwarder;
use crate::process::{ManagedProcess, ProcessError};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum NodePrometheusError {
    #[error("cannot prepare Prometheus in {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("Prometheus did not answer /-/ready within {timeout:?}\n{log}")]
    NotReady {
        timeout: Duration,
        log: crate::process::LogTail,
    },
}

/// How often the target file follows the pods.
const TARGETS_EVERY: Duration = Duration::from_secs(1);

/// Prometheus on the node; stops when dropped.
#[derive(Debug)]
pub struct NodePrometheus {
    pub process: ManagedProcess,
    port: u16,
    _forward: Forwarder,
    targets: tokio::task::JoinHandle<()>,
}

impl Drop for NodePrometheus {
    fn drop(&mut self) {
        self.targets.abort();
    }
}

impl NodePrometheus {
    /// Starts `bin` with its state in `dir`, its targets the pods `client`
    /// lists; returns once it is ready.
    pub async fn start(
        node: &Node,
        bin: &Path,
        client: kube::Client,
        dir: &Path,
    ) -> Result<Self, NodePrometheusError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| NodePrometheusError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let port = crate::ports::free_loopback_ports(1)
            .map_err(io(dir))?
            .first()
            .copied()
            .unwrap_or_default();
        let targets_file = dir.join("targets.json");
        write_targets(&client, &targets_file).await;
        let targets = tokio::spawn(keep_targets(client, targets_file.clone()));
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, scrape_config(&targets_file)).map_err(io(&config))?;
        let mut command = node.net_command(bin);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let process = ManagedProcess::spawn("prometheus", command, &dir.join("prometheus.log"))?;
        let forward = node.forward_loopback_port(port).map_err(io(dir))?;
        let address = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if crate::observe::http_get(&address, "/-/ready")
                .await
                .is_ok_and(|(code, _)| code == 200)
            {
                break;
            }
            if Instant::now() >= deadline || process.exit_status().is_some() {
                return Err(NodePrometheusError::NotReady {
                    timeout: READY_TIMEOUT,
                    log: process.log_tail(40),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Self {
            process,
            port,
            _forward: forward,
            targets,
        })
    }

    /// `127.0.0.1:port`, for [`crate::observe::query`] and a browser.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The targets Prometheus scrapes and whether each is up, as
    /// `(scrape URL, health)`.
    pub async fn targets(&self) -> Result<Vec<(String, String)>, String> {
        let (code, body) =
            crate::observe::http_get(&self.address(), "/api/v1/targets?state=active").await?;
        if code != 200 {
            return Err(format!("/api/v1/targets answered {code}: {body}"));
        }
        let value: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        Ok(value["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["scrapeUrl"].as_str().unwrap_or_default().to_owned(),
                    t["health"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }
}

/// One job over the targets file; the operator's series keep their own
/// `namespace` (the fleet's), as the ServiceMonitor's `honorLabels` says.
fn scrape_config(targets: &Path) -> String {
    format!(
        r#"global:
  scrape_interval: 5s
  evaluation_interval: 5s
scrape_configs:
  - job_name: drover
    honor_labels: true
    file_sd_configs: [{{files: ["{targets}"], refresh_interval: 1s}}]
"#,
        targets = targets.display()
    )
}

async fn keep_targets(client: kube::Client, path: PathBuf) {
    loop {
        tokio::time::sleep(TARGETS_EVERY).await;
        write_targets(&client, &path).await;
    }
}

/// Every running pod of Drover (`app.kubernetes.io/part-of=drover`) with an
/// `http` port, as a file_sd target group with its namespace, pod and (for
/// a worker) the `worker` label of the chart's PodMonitor. Written only on
/// change, and atomically, so Prometheus never reads half a file.
async fn write_targets(client: &kube::Client, path: &Path) {
    use k8s_openapi::api::core::v1::Pod;
    let pods: kube::Api<Pod> = kube::Api::all(client.clone());
    let params = kube::api::ListParams::default().labels("app.kubernetes.io/part-of=drover");
    let Ok(list) = pods.list(&params).await else {
        return;
    };
    let mut groups = Vec::new();
    for pod in list.items {
        let status = pod.status.clone().unwrap_or_default();
        let (Some(ip), Some("Running")) = (status.pod_ip, status.phase.as_deref()) else {
            continue;
        };
        let port = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some("http"))
            .map(|p| p.container_port);
        let Some(port) = port else { continue };
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let mut target_labels = serde_json::json!({
            "namespace": pod.metadata.namespace.clone().unwrap_or_default(),
            "pod": pod.metadata.name.clone().unwrap_or_default(),
        });
        if let Some(worker) = labels.get("drover.dev/pipeline-worker") {
            target_labels["worker"] = worker.clone().into();
        }
        groups.push(serde_json::json!({
            "targets": [format!("{ip}:{port}")],
            "labels": target_labels,
        }));
    }
    let text = serde_json::Value::Array(groups).to_string();
    if std::fs::read_to_string(path).ok().as_deref() == Some(text.as_str()) {
        return;
    }
    let partial = path.with_extension("json.partial");
    if std::fs::write(&partial, text).is_ok() {
        let _ = std::fs::rename(&partial, path);
    }
}
