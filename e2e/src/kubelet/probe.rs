//! Startup, readiness and liveness probes.
//!
//! Each probe of a running container gets its own task that probes on its
//! period, applies the success/failure thresholds like the kubelet's probe
//! workers, and reports to the pod worker whenever the thresholded result (or
//! the reason for failing) changes. The tasks live as long as one run of the
//! container; a restart starts fresh ones.
//!
//! Deviation from a real kubelet, for fast tests: the probe period is capped
//! at [`MAX_PERIOD`] (1 s). `initialDelaySeconds`, `timeoutSeconds` and the
//! thresholds are honoured as written. `httpGet` (HTTP only) and `tcpSocket` are
//! supported; `exec` and `grpc` probes always fail with a message saying so,
//! since there is no container to exec into.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

/// The longest probe period this kubelet uses, whatever `periodSeconds` says.
pub(crate) const MAX_PERIOD: Duration = Duration::from_secs(1);
/// The kubelet's default `timeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Enough for any status line.
const MAX_STATUS_LINE: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

impl ProbeKind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Startup => "Startup",
            Self::Readiness => "Readiness",
            Self::Liveness => "Liveness",
        }
    }

    /// The result before the thresholds are met, as in the kubelet: a container
    /// is alive until proven otherwise and not ready until proven ready; whether
    /// it has started is not known yet.
    fn initial(self) -> ProbeResult {
        match self {
            Self::Startup => ProbeResult::Unknown,
            Self::Readiness => ProbeResult::Failure,
            Self::Liveness => ProbeResult::Success,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeResult {
    Unknown,
    Success,
    Failure,
}

/// A change in a probe's (thresholded) result, or in the reason it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeUpdate {
    pub kind: ProbeKind,
    pub result: ProbeResult,
    /// Why the last probe failed, while it fails.
    pub failure: Option<String>,
}

/// The kubelet's threshold rule: a result only counts after `successThreshold`
/// consecutive successes or `failureThreshold` consecutive failures.
#[derive(Debug)]
pub(crate) struct Thresholds {
    success_threshold: u32,
    failure_threshold: u32,
    result: ProbeResult,
    last_raw: Option<bool>,
    run: u32,
}

impl Thresholds {
    pub(crate) fn new(kind: ProbeKind, probe: &Probe) -> Self {
        let threshold = |value: Option<i32>, default: u32| {
            value
                .and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0)
                .unwrap_or(default)
        };
        Self {
            success_threshold: threshold(probe.success_threshold, 1),
            failure_threshold: threshold(probe.failure_threshold, 3),
            result: kind.initial(),
            last_raw: None,
            run: 0,
        }
    }

    /// Records one probe outcome and returns the thresholded result.
    pub(crate) fn record(&mut self, success: bool) -> ProbeResult {
        if self.last_raw == Some(success) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last_raw = Some(success);
            self.run = 1;
        }
        let (threshold, result) = if success {
            (self.success_threshold, ProbeResult::Success)
        } else {
            (self.failure_threshold, ProbeResult::Failure)
        };
        if self.run >= threshold {
            self.result = result;
        }
        self.result
    }
}

/// Where and how to probe, resolved once per container run.
#[derive(Debug, Clone)]
enum Action {
    Http {
        host: String,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: String,
        port: u16,
    },
    /// Always fails, with this message.
    Fail(String),
}

/// Starts the task for `probe` in `tasks`; it reports to `updates` and stops
/// once `updates` is closed (or, for a startup probe, once it has succeeded).
pub(crate) fn spawn(
    tasks: &mut JoinSet<()>,
    kind: ProbeKind,
    probe: &Probe,
    container: &Container,
    pod_ip: Ipv4Addr,
    updates: mpsc::Sender<ProbeUpdate>,
) {
    let action = action(probe, container, pod_ip);
    let seconds = |value: Option<i32>| {
        value
            .and_then(|v| u64::try_from(v).ok())
            .map(Duration::from_secs)
    };
    let initial_delay = seconds(probe.initial_delay_seconds).unwrap_or_default();
    let period = seconds(probe.period_seconds)
        .filter(|p| !p.is_zero())
        .map_or(MAX_PERIOD, |p| p.min(MAX_PERIOD));
    let timeout = seconds(probe.timeout_seconds)
        .filter(|t| !t.is_zero())
        .unwrap_or(DEFAULT_TIMEOUT);
    let mut thresholds = Thresholds::new(kind, probe);
    tasks.spawn(async move {
        tokio::time::sleep(initial_delay).await;
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut reported: Option<ProbeUpdate> = None;
        loop {
            ticks.tick().await;
            let outcome = run(&action, timeout).await;
            let result = thresholds.record(outcome.is_ok());
            let update = ProbeUpdate {
                kind,
                result,
                failure: outcome.err(),
            };
            if reported.as_ref() != Some(&update) {
                if updates.send(update.clone()).await.is_err() {
                    return;
                }
                reported = Some(update);
            }
            // A startup probe is done once it succeeds (the kubelet stops it).
            if kind == ProbeKind::Startup && result == ProbeResult::Success {
                return;
            }
        }
    });
}

fn action(probe: &Probe, container: &Container, pod_ip: Ipv4Addr) -> Action {
    if let Some(http) = &probe.http_get {
        return http_action(http, container, pod_ip);
    }
    if let Some(tcp) = &probe.tcp_socket {
        return match port(&tcp.port, container) {
            Ok(port) => Action::Tcp {
                host: tcp.host.clone().unwrap_or_else(|| pod_ip.to_string()),
                port,
            },
            Err(message) => Action::Fail(message),
        };
    }
    if probe.exec.is_some() {
        return Action::Fail(
            "exec probes are not supported by the process kubelet (there is no container to exec into)"
                .into(),
        );
    }
    if probe.grpc.is_some() {
        return Action::Fail("gRPC probes are not supported by the process kubelet".into());
    }
    Action::Fail("the probe has no handler".into())
}

fn http_action(http: &HTTPGetAction, container: &Container, pod_ip: Ipv4Addr) -> Action {
    if http
        .scheme
        .as_deref()
        .is_some_and(|s| !s.eq_ignore_ascii_case("HTTP"))
    {
        return Action::Fail("HTTPS probes are not supported by the process kubelet".into());
    }
    let port = match port(&http.port, container) {
        Ok(port) => port,
        Err(message) => return Action::Fail(message),
    };
    let path = match http.path.as_deref() {
        None | Some("") => "/".to_owned(),
        Some(p) if p.starts_with('/') => p.to_owned(),
        Some(p) => format!("/{p}"),
    };
    Action::Http {
        host: http.host.clone().unwrap_or_else(|| pod_ip.to_string()),
        port,
        path,
        headers: http
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
    }
}

/// A probe port: a number, or the name of one of the container's ports (or a
/// number written as a string, which the kubelet accepts too).
fn port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .or_else(|| name.parse().ok())
            .ok_or_else(|| format!("the container has no port named {name:?}"))?,
    };
    u16::try_from(number)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port number {number}"))
}

/// One probe. `Err` carries the failure as the kubelet would word it.
async fn run(action: &Action, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        match action {
            Action::Http {
                host,
                port,
                path,
                headers,
            } => http_get(host, *port, path, headers).await,
            Action::Tcp { host, port } => TcpStream::connect((host.as_str(), *port))
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {host}:{port}: {e}")),
            Action::Fail(message) => Err(message.clone()),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("probe timed out after {timeout:?}")))
}

/// A plain HTTP/1.1 GET; success is a status in 200..400, as for the kubelet.
async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let url = format!("http://{host}:{port}{path}");
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("Get \"{url}\": dial tcp {host}:{port}: {e}"))?;
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {host}:{port}\r\n"));
    }
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("user-agent"))
    {
        request.push_str("User-Agent: kube-probe/1.37\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Accept: */*\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    let mut status_line = String::new();
    let mut reader = tokio::io::AsyncReadExt::take(BufReader::new(stream), MAX_STATUS_LINE);
    reader
        .read_line(&mut status_line)
        .await
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    let code = status_code(&status_line)
        .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response {status_line:?}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// `HTTP/1.1 503 Service Unavailable` -> 503.
fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn probe(spec: serde_json::Value) -> Probe {
        serde_json::from_value(spec).expect("probe")
    }

    #[test]
    fn thresholds_follow_the_kubelet() {
        let p = probe(json!({"successThreshold": 2, "failureThreshold": 3}));
        use ProbeResult::{Failure, Success, Unknown};
        let mut readiness = Thresholds::new(ProbeKind::Readiness, &p);
        // Not ready until two successes in a row.
        assert_eq!(readiness.record(true), Failure);
        assert_eq!(readiness.record(false), Failure);
        assert_eq!(readiness.record(true), Failure);
        assert_eq!(readiness.record(true), Success);
        // Still ready after two failures, not after the third.
        assert_eq!(readiness.record(false), Success);
        assert_eq!(readiness.record(false), Success);
        assert_eq!(readiness.record(false), Failure);

        let mut liveness = Thresholds::new(ProbeKind::Liveness, &probe(json!({})));
        assert_eq!(liveness.record(false), Success);
        assert_eq!(liveness.record(false), Success);
        assert_eq!(
            liveness.record(false),
            Failure,
            "default failureThreshold is 3"
        );

        let mut startup =
            Thresholds::new(ProbeKind::Startup, &probe(json!({"failureThreshold": 2})));
        assert_eq!(startup.record(false), Unknown);
        assert_eq!(startup.record(false), Failure);
    }

    #[test]
    fn resolves_named_ports_and_paths() {
        let container: Container = serde_json::from_value(json!({
            "name": "c", "image": "i",
            "ports": [{"name": "http", "containerPort": 8080}],
        }))
        .expect("container");
        let ip = Ipv4Addr::new(127, 1, 0, 9);
        let named = probe(json!({"httpGet": {"port": "http", "path": "readyz"}}));
        match action(&named, &container, ip) {
            Action::Http {
                host, port, path, ..
            } => assert_eq!(
                (host.as_str(), port, path.as_str()),
                ("127.1.0.9", 8080, "/readyz")
            ),
            other => panic!("unexpected {other:?}"),
        }
        let unknown = probe(json!({"tcpSocket": {"port": "grpc"}}));
        assert!(matches!(action(&unknown, &container, ip), Action::Fail(m) if m.contains("grpc")));
        let exec = probe(json!({"exec": {"command": ["true"]}}));
        assert!(matches!(action(&exec, &container, ip), Action::Fail(m) if m.contains("exec")));
    }

    #[test]
    fn parses_status_lines() {
        assert_eq!(status_code("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(status_code("SSH-2.0-OpenSSH"), None);
        assert_eq!(status_code(""), None);
    }

    #[tokio::test]
    async fn http_and_tcp_probes_against_a_real_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listener");
        let port = listener.local_addr().expect("address").port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = tokio::io::AsyncReadExt::read(&mut socket, &mut buf)
                    .await
                    .unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let response = if request.starts_with("GET /ok ") {
                    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                };
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        let http = |path: &str| Action::Http {
            host: "127.0.0.1".into(),
            port,
            path: path.into(),
            headers: vec![],
        };
        assert_eq!(run(&http("/ok"), DEFAULT_TIMEOUT).await, Ok(()));
        assert_eq!(
            run(&http("/nope"), DEFAULT_TIMEOUT).await,
            Err("HTTP probe failed with statuscode: 404".into())
        );
        let tcp = Action::Tcp {
            host: "127.0.0.1".into(),
            port,
        };
        assert_eq!(run(&tcp, DEFAULT_TIMEOUT).await, Ok(()));
    }
}
