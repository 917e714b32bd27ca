//! What the install and observability tests share: the chart's paths, helm
//! and promtool invocations, the README's install blocks, the Grafana
//! dashboard's checks and queries, Prometheus' rule file, and a small
//! Prometheus HTTP API client.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::workspace_root;

/// The chart directory.
pub fn chart_dir() -> PathBuf {
    workspace_root().join("charts/drover")
}

/// The dashboard the chart ships.
pub fn dashboard_path() -> PathBuf {
    chart_dir().join("dashboards/drover.json")
}

/// Runs `program args` in the workspace root and returns its stdout, or an
/// error with its exit status and stderr.
pub fn run(program: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`{} {}` failed ({}):\n{}{}",
            program.display(),
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// `promtool` from `$PATH` (Debian's `prometheus` package), or a panic that
/// says how to get it: the tests that need it fail, they never skip.
pub fn promtool() -> PathBuf {
    find_on_path("promtool", "promtool")
}

/// `prometheus` from `$PATH` (Debian's `prometheus` package), or a panic.
pub fn prometheus() -> PathBuf {
    find_on_path("prometheus", "prometheus")
}

fn find_on_path(name: &str, what: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{what} not found on PATH: install Debian's prometheus package \
                 (`apt-get install -y prometheus`, as .ci/run does)"
            )
        })
}

/// The helm binary ([`crate::testenv::ensure_helm`]), or a panic with the reason.
pub fn helm() -> PathBuf {
    let mut progress = |line: &str| {
        use std::io::Write;
        let _ = writeln!(std::io::stderr().lock(), "drover-e2e: {line}");
    };
    crate::testenv::ensure_helm(&mut progress)
        .unwrap_or_else(|e| panic!("cannot get helm: {}", crate::error_chain(&e)))
}

/// What a user's shell holds after `source .drover-sandbox/env`, to run the
/// README's blocks exactly as written against a test cluster.
#[derive(Clone, Debug)]
pub struct ReadmeShell {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub helm: PathBuf,
    /// `PUBSUB_EMULATOR_HOST` as the operator's pods must reach it.
    pub pubsub_emulator_host: String,
    /// `HOME` for helm's and kubectl's caches.
    pub home: PathBuf,
}

impl ReadmeShell {
    /// Runs the README block `name` under `bash -euo pipefail`, traced, from
    /// the workspace root with only this environment; returns the transcript,
    /// or the transcript and the exit status when the block failed.
    pub async fn run(&self, name: &str) -> Result<String, String> {
        let script = readme_block(name)?;
        std::fs::create_dir_all(&self.home).map_err(|e| format!("{}: {e}", self.home.display()))?;
        let started = std::time::Instant::now();
        let output = tokio::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", &format!("set -x\n{script}")])
            .current_dir(workspace_root())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("KUBECTL", &self.kubectl)
            .env("HELM", &self.helm)
            .env("PUBSUB_EMULATOR_HOST", &self.pubsub_emulator_host)
            // Where pods reach it: the same address, as the tests pass it.
            .env(
                "DROVER_POD_PUBSUB_EMULATOR_HOST",
                &self.pubsub_emulator_host,
            )
            .env("PUBSUB_PROJECT_ID", crate::drover::PUBSUB_PROJECT)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("cannot run bash: {e}"))?;
        let transcript = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!(
            "README {name} block ran in {:.1} s:\n{transcript}",
            started.elapsed().as_secs_f64()
        );
        if output.status.success() {
            Ok(transcript)
        } else {
            Err(format!(
                "{transcript}\n(the block exited with {})",
                output.status
            ))
        }
    }
}

/// The shell commands of the README's fenced block that follows the line
/// `<!-- test: NAME -->`: what the README tells a user to type is what the
/// tests run.
pub fn readme_block(name: &str) -> Result<String, String> {
    let path = workspace_root().join("README.md");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    fenced_block_after(&text, &format!("<!-- test: {name} -->"))
        .ok_or_else(|| format!("README.md has no fenced block after `<!-- test: {name} -->`"))
}

fn fenced_block_after(text: &str, marker: &str) -> Option<String> {
    let after = &text[text.find(marker)? + marker.len()..];
    let mut lines = after.lines().skip_while(|l| l.trim().is_empty());
    if !lines.next()?.trim_start().starts_with("```") {
        return None;
    }
    let body: Vec<&str> = lines
        .take_while(|l| !l.trim_start().starts_with("```"))
        .collect();
    Some(body.join("\n") + "\n")
}

/// The rule file (`groups:`) inside the PrometheusRule that `helm template`
/// rendered into `manifests`.
pub fn rule_file_from_rendered(manifests: &str) -> Result<String, String> {
    for document in serde_yaml::Deserializer::from_str(manifests) {
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(document)
            .map_err(|e| format!("rendered chart is not YAML: {e}"))?;
        if value.get("kind").and_then(serde_yaml::Value::as_str) == Some("PrometheusRule") {
            let spec = value.get("spec").ok_or("the PrometheusRule has no spec")?;
            return serde_yaml::to_string(spec).map_err(|e| e.to_string());
        }
    }
    Err("the rendered chart has no PrometheusRule".into())
}

/// One rule of a rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Record { name: String, expr: String },
    Alert { name: String, expr: String },
}

/// Every rule of a Prometheus rule file, in order.
pub fn rules(rule_file: &str) -> Result<Vec<Rule>, String> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(rule_file).map_err(|e| format!("not YAML: {e}"))?;
    let groups = value
        .get("groups")
        .and_then(serde_yaml::Value::as_sequence)
        .ok_or("no groups")?;
    let mut out = Vec::new();
    for group in groups {
        let rules = group
            .get("rules")
            .and_then(serde_yaml::Value::as_sequence)
            .ok_or("a group has no rules")?;
        for rule in rules {
            let text = |key: &str| rule.get(key).and_then(serde_yaml::Value::as_str);
            let expr = text("expr").ok_or("a rule has no expr")?.trim().to_owned();
            match (text("record"), text("alert")) {
                (Some(name), None) => out.push(Rule::Record {
                    name: name.to_owned(),
                    expr,
                }),
                (None, Some(name)) => out.push(Rule::Alert {
                    name: name.to_owned(),
                    expr,
                }),
                _ => return Err(format!("a rule is neither record nor alert: {expr}")),
            }
        }
    }
    Ok(out)
}

/// The recorded series (`drover:…`) an expression reads.
pub fn recorded_series(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(found) = expr[i..].find("drover:") {
        let start = i + found;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b':')
        {
            end += 1;
        }
        names.insert(expr[start..end].to_owned());
        i = end;
    }
    names
}

/// One query of a dashboard panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelQuery {
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
}

/// Checks that `dashboard` is a Grafana dashboard that loads: a
/// schemaVersion, a uid and title, unique panel ids with a grid position,
/// a `datasource` template variable of type `datasource` for Prometheus that
/// every panel and query uses, and a non-empty `expr` in every query.
/// Returns every query.
pub fn check_dashboard(dashboard: &Value) -> Result<Vec<PanelQuery>, String> {
    let schema = dashboard
        .get("schemaVersion")
        .and_then(Value::as_u64)
        .ok_or("no numeric schemaVersion")?;
    // 36 is where per-panel datasource references by uid became the norm.
    if schema < 36 {
        return Err(format!("schemaVersion {schema} is older than 36"));
    }
    for key in ["uid", "title"] {
        if dashboard
            .get(key)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(format!("no {key}"));
        }
    }
    let variables = dashboard
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .ok_or("no templating.list")?;
    let datasource = variables
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some("datasource"))
        .ok_or("no `datasource` template variable")?;
    if datasource.get("type").and_then(Value::as_str) != Some("datasource")
        || datasource.get("query").and_then(Value::as_str) != Some("prometheus")
    {
        return Err("the `datasource` variable is not a Prometheus datasource variable".into());
    }
    let uses_variable = |value: Option<&Value>| {
        value.and_then(|d| d.get("uid")).and_then(Value::as_str) == Some("${datasource}")
    };

    let panels = dashboard
        .get("panels")
        .and_then(Value::as_array)
        .ok_or("no panels")?;
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    for panel in panels {
        let id = panel
            .get("id")
            .and_then(Value::as_u64)
            .ok_or("a panel without a numeric id")?;
        if !ids.insert(id) {
            return Err(format!("panel id {id} is used twice"));
        }
        let title = panel
            .get("title")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let grid = panel
            .get("gridPos")
            .ok_or(format!("panel {id} has no gridPos"))?;
        for key in ["h", "w", "x", "y"] {
            if grid.get(key).and_then(Value::as_u64).is_none() {
                return Err(format!("panel {id} gridPos has no {key}"));
            }
        }
        if panel.get("type").and_then(Value::as_str) == Some("row") {
            continue;
        }
        if !uses_variable(panel.get("datasource")) {
            return Err(format!("panel {id} ({title}) does not use ${{datasource}}"));
        }
        let targets = panel
            .get("targets")
            .and_then(Value::as_array)
            .filter(|t| !t.is_empty())
            .ok_or(format!("panel {id} ({title}) has no queries"))?;
        for target in targets {
            let ref_id = target
                .get("refId")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let expr = target
                .get("expr")
                .and_then(Value::as_str)
                .filter(|e| !e.trim().is_empty())
                .ok_or(format!("panel {id} ({title}) query {ref_id} has no expr"))?;
            if !uses_variable(target.get("datasource")) {
                return Err(format!(
                    "panel {id} ({title}) query {ref_id} does not use ${{datasource}}"
                ));
            }
            queries.push(PanelQuery {
                panel: title.clone(),
                ref_id,
                expr: expr.to_owned(),
            });
        }
    }
    Ok(queries)
}

/// A dashboard expression as Grafana would send it, with its variables
/// replaced: `$namespace` and `$worker` by regexes, `$__rate_interval` by a
/// window that a test's short run fills.
pub fn instantiate(expr: &str, namespace: &str, rate_interval: &str) -> String {
    expr.replace("$__rate_interval", rate_interval)
        .replace("$namespace", namespace)
        .replace("$worker", ".*")
}

/// Percent-encodes a query parameter value.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `GET http://addr/path` with HTTP/1.0 (so the body is never chunked);
/// returns the status code and the body.
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send to {addr}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| format!("cannot read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}{path}: malformed response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{addr}{path}: no status line"))?;
    Ok((status, body.to_owned()))
}

/// An instant query through Prometheus' HTTP API: the result vector, or the
/// error Prometheus gave.
pub async fn query(prometheus: &str, promql: &str) -> Result<Vec<Value>, String> {
    let (status, body) = http_get(
        prometheus,
        &format!("/api/v1/query?query={}", url_encode(promql)),
    )
    .await?;
    let reply: Value = serde_json::from_str(&body)
        .map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
    if reply.get("status").and_then(Value::as_str) != Some("success") {
        return Err(format!("HTTP {status}: {body}"));
    }
    reply
        .pointer("/data/result")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| format!("no data.result in {body}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_the_block_after_its_marker() {
        let text = "x\n<!-- test: a -->\n\n```sh\none\ntwo\n```\n```sh\nno\n```\n";
        assert_eq!(
            fenced_block_after(text, "<!-- test: a -->").as_deref(),
            Some("one\ntwo\n")
        );
        assert_eq!(fenced_block_after(text, "<!-- test: b -->"), None);
    }

    #[test]
    fn names_the_recorded_series_an_alert_reads() {
        let names = recorded_series(
            "(drover:a:rate10m or on() vector(0)) <= 0 and on() drover:b_c:count1h > 0",
        );
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["drover:a:rate10m", "drover:b_c:count1h"]
        );
    }

    fn dashboard(panels: Value) -> Value {
        json!({
            "uid": "d", "title": "D", "schemaVersion": 39,
            "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus"}]},
            "panels": panels,
        })
    }

    fn panel(id: u64, expr: &str) -> Value {
        let ds = json!({"type": "prometheus", "uid": "${datasource}"});
        json!({"id": id, "type": "timeseries", "title": format!("p{id}"), "datasource": ds,
               "gridPos": {"h": 8, "w": 12, "x": 0, "y": 0},
               "targets": [{"refId": "A", "expr": expr, "datasource": ds}]})
    }

    #[test]
    fn dashboard_checks_catch_what_grafana_would_refuse_or_misshow() {
        let good = dashboard(json!([panel(1, "up"), panel(2, "sum(up)")]));
        assert_eq!(check_dashboard(&good).expect("valid").len(), 2);

        let duplicate = dashboard(json!([panel(1, "up"), panel(1, "sum(up)")]));
        assert!(
            check_dashboard(&duplicate)
                .unwrap_err()
                .contains("used twice")
        );

        let mut no_variable = good.clone();
        no_variable["templating"]["list"] = json!([]);
        assert!(
            check_dashboard(&no_variable)
                .unwrap_err()
                .contains("datasource")
        );

        let mut old = good.clone();
        old["schemaVersion"] = json!(16);
        assert!(check_dashboard(&old).is_err());

        let empty_expr = dashboard(json!([panel(1, " ")]));
        assert!(
            check_dashboard(&empty_expr)
                .unwrap_err()
                .contains("no expr")
        );
    }

    #[test]
    fn fills_in_grafana_variables() {
        assert_eq!(
            instantiate(
                "rate(x{namespace=~\"$namespace\", worker=~\"$worker\"}[$__rate_interval])",
                "ns-1",
                "5m"
            ),
            "rate(x{namespace=~\"ns-1\", worker=~\".*\"}[5m])"
        );
        assert_eq!(url_encode("a b{c=\"d\"}"), "a%20b%7Bc%3D%22d%22%7D");
    }
}
