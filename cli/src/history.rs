//! `kubectl drover history`: finished Jobs from the operator's archive, long
//! after their TTL deleted them. The CLI holds no database credentials: it
//! asks the operator's read-only archive endpoint, through the apiserver's
//! service proxy (RBAC: `get` on `services/proxy` of the archive Service),
//! or at a URL given with `--archive-url` (a port-forward, say).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use drover_crds::history::{HistoryPage, HistoryQuery, JOBS_PATH, PORT_NAME, terminal_phase};
use drover_crds::{Job, JobPhase};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::args::{HistoryArgs, Output};
use crate::cluster::Target;
use crate::render;

pub async fn history(target: &Target, args: &HistoryArgs) -> anyhow::Result<ExitCode> {
    let query = HistoryQuery {
        namespace: (!target.all_namespaces).then(|| target.namespace.clone()),
        worker: args.worker.clone(),
        since: args.since,
        phase: args.phase,
        limit: args.limit,
    };
    let body = match &args.archive_url {
        Some(base) => fetch_direct(base, &query).await?,
        None => {
            let path = proxy_path(&args.operator_namespace, &args.archive_service, &query);
            let request = http::Request::get(&path)
                .body(Vec::new())
                .context("building the request")?;
            target.client.request_text(request).await.with_context(|| {
                format!(
                    "cannot read the archive through service {}/{} (is the archive enabled, \
                     and may you get services/proxy there?)",
                    args.operator_namespace, args.archive_service
                )
            })?
        }
    };
    let page: HistoryPage =
        serde_json::from_str(&body).context("the archive's answer is not a page of Jobs")?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&page)?),
        Output::Text => {
            if page.jobs.is_empty() {
                println!("No archived Jobs match.");
            } else {
                let rows: Vec<Vec<String>> = page
                    .jobs
                    .iter()
                    .map(|job| row(job, Timestamp::now(), target.all_namespaces))
                    .collect();
                println!("{}", render::table(&headers(target.all_namespaces), &rows));
            }
            if page.truncated {
                eprintln!(
                    "(more Jobs match than the {} shown: narrow the query or raise --limit)",
                    page.jobs.len()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The apiserver path that proxies `query` to the archive Service's port.
pub fn proxy_path(namespace: &str, service: &str, query: &HistoryQuery) -> String {
    let mut path =
        format!("/api/v1/namespaces/{namespace}/services/{service}:{PORT_NAME}/proxy{JOBS_PATH}");
    let query = query.to_query_string();
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query);
    }
    path
}

/// GETs the page from the archive endpoint at `base` (`http://host:port`).
async fn fetch_direct(base: &str, query: &HistoryQuery) -> anyhow::Result<String> {
    let mut url = format!("{}{JOBS_PATH}", base.trim_end_matches('/'));
    let query = query.to_query_string();
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query);
    }
    let response = reqwest::get(&url)
        .await
        .with_context(|| format!("cannot reach the archive at {base}"))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .context("reading the archive's answer")?;
    if !status.is_success() {
        bail!("the archive answered {status}: {}", body.trim());
    }
    Ok(body)
}

/// `--since`: `90s`, `15m`, `24h`, `7d`, or several (`1h30m`).
pub fn parse_since(text: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (use s, m, h or d)"
                ));
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{text:?}: a number must come before {c:?}"))?;
        total += Duration::from_secs(n.saturating_mul(unit));
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!("{text:?}: give a unit (e.g. {digits}h)"));
    }
    if total.is_zero() {
        return Err(format!("{text:?}: give a duration such as 24h"));
    }
    Ok(total)
}

/// `--phase`: Succeeded, Failed or Cancelled.
pub fn parse_phase(text: &str) -> Result<JobPhase, String> {
    terminal_phase(text).map_err(|e| e.to_string())
}

fn headers(with_namespace: bool) -> Vec<&'static str> {
    let mut headers = Vec::new();
    if with_namespace {
        headers.push("NAMESPACE");
    }
    headers.extend([
        "NAME", "WORKER", "PHASE", "ATTEMPT", "FINISHED", "DURATION", "REASON",
    ]);
    headers
}

/// One archived Job: when it finished (ago), how long it took from its
/// creation, and why it failed.
fn row(job: &Job, now: Timestamp, with_namespace: bool) -> Vec<String> {
    let status = job.status.clone().unwrap_or_default();
    let finished = status.finished_at.as_ref().map(|t| t.0);
    let mut row = render::job_columns(job, with_namespace);
    row.extend([
        finished
            .map(|t| format!("{} ago", render::age(t, now)))
            .unwrap_or_default(),
        job.creation_timestamp()
            .zip(finished)
            .map(|(created, finished)| render::span(created.0, finished))
            .unwrap_or_default(),
        status.error.map(|e| e.reason).unwrap_or_default(),
    ]);
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_crds::job::JobError;
    use drover_crds::{FailureReason, JobStatus};
    use drover_testkit::JobBuilder;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn since_takes_kubectl_style_durations() {
        assert_eq!(parse_since("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_since("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_since("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_since("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_since("24").is_err());
        assert!(parse_since("h").is_err());
        assert!(parse_since("3w").is_err());
        assert!(parse_since("0h").is_err());
    }

    #[test]
    fn phase_is_a_finished_one() {
        assert_eq!(parse_phase("Failed"), Ok(JobPhase::Failed));
        assert!(parse_phase("Running").is_err());
    }

    #[test]
    fn the_proxy_path_names_the_archive_port_and_the_query() {
        let query = HistoryQuery {
            namespace: Some("team-a".into()),
            phase: Some(JobPhase::Failed),
            ..HistoryQuery::default()
        };
        assert_eq!(
            proxy_path("drover-system", "drover-archive", &query),
            "/api/v1/namespaces/drover-system/services/drover-archive:archive/proxy/archive/v1/jobs?namespace=team-a&phase=Failed"
        );
        assert_eq!(
            proxy_path("ops", "arch", &HistoryQuery::default()),
            "/api/v1/namespaces/ops/services/arch:archive/proxy/archive/v1/jobs"
        );
    }

    #[test]
    fn a_row_shows_when_it_finished_how_long_it_took_and_why_it_failed() {
        let t = |s: i64| Time(Timestamp::from_second(1_800_000_000 + s).unwrap());
        let mut job = JobBuilder::new("j1", "sleeper").namespace("team-a").build();
        job.metadata.creation_timestamp = Some(t(0));
        job.status = Some(JobStatus {
            phase: JobPhase::Failed,
            attempt: 3,
            finished_at: Some(t(75)),
            error: Some(JobError::new(
                FailureReason::MaxAttemptsExceeded,
                "x".into(),
                false,
            )),
            ..JobStatus::default()
        });
        let now = t(75 + 3 * 3600).0;
        assert_eq!(
            row(&job, now, true),
            [
                "team-a",
                "j1",
                "sleeper",
                "Failed",
                "3",
                "3h ago",
                "1m15s",
                "MaxAttemptsExceeded"
            ]
        );
        assert_eq!(headers(false)[0], "NAME");
    }
}
