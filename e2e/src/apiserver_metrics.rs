//! What Drover asks of the apiserver, counted by the apiserver itself
//! (`apiserver_request_total`), so a test or a benchmark can report writes
//! per Job without trusting Drover's own bookkeeping.

use kube::Client;

/// The verbs that change an object.
const WRITE_VERBS: [&str; 5] = ["POST", "PUT", "PATCH", "APPLY", "DELETE"];

/// Writes to Drover Jobs and their status, as the apiserver counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobWrites {
    /// Every write, whatever its answer.
    pub total: u64,
    /// Writes answered 409 Conflict: a conditioned write that lost a race.
    pub conflicts: u64,
}

/// Writes to Drover Jobs and their status so far. The counters start again
/// at zero when the apiserver restarts.
pub async fn job_writes(client: &Client) -> Result<JobWrites, kube::Error> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    let text = client.request_text(request).await?;
    Ok(sum_job_writes(&text))
}

/// Sums `apiserver_request_total` over the write verbs for `drover.dev`
/// `jobs` (the object and every subresource).
pub fn sum_job_writes(metrics: &str) -> JobWrites {
    let mut writes = JobWrites::default();
    let job_writes = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("apiserver_request_total{"))
        .filter_map(|rest| rest.rsplit_once("} "))
        .filter(|(labels, _)| {
            label(labels, "group") == Some("drover.dev")
                && label(labels, "resource") == Some("jobs")
                && label(labels, "verb").is_some_and(|verb| WRITE_VERBS.contains(&verb))
        });
    for (labels, value) in job_writes {
        // Counters are whole numbers, printed as floats.
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        writes.total += value as u64;
        if label(labels, "code") == Some("409") {
            writes.conflicts += value as u64;
        }
    }
    writes
}

/// The value of label `name` in `a="x",b="y"` (values hold no quotes here).
/// Split on the commas, so `resource` never matches inside `subresource`.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_writes_to_drover_jobs() {
        let metrics = r#"
# TYPE apiserver_request_total counter
apiserver_request_total{code="201",component="apiserver",dry_run="",group="drover.dev",resource="jobs",scope="resource",subresource="",verb="POST",version="v1alpha1"} 1000
apiserver_request_total{code="200",component="apiserver",dry_run="",group="drover.dev",resource="jobs",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 3012
apiserver_request_total{code="409",component="apiserver",dry_run="",group="drover.dev",resource="jobs",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 7
apiserver_request_total{code="200",component="apiserver",dry_run="",group="drover.dev",resource="jobs",scope="namespace",subresource="",verb="LIST",version="v1alpha1"} 55
apiserver_request_total{code="200",component="apiserver",dry_run="",group="drover.dev",resource="pipelineworkers",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 40
apiserver_request_total{code="200",component="apiserver",dry_run="",group="apps",resource="deployments",scope="resource",subresource="",verb="APPLY",version="v1"} 9
"#;
        assert_eq!(
            sum_job_writes(metrics),
            JobWrites {
                total: 1000 + 3012 + 7,
                conflicts: 7
            }
        );
    }
}
