//! What Drover asks of the apiserver, counted by the apiserver itself
//! (`apiserver_request_total`), so a test or a benchmark can report writes
//! per Job without trusting Drover's own bookkeeping.

use kube::Client;

/// The verbs that change an object.
const WRITE_VERBS: [&str; 5] = ["POST", "PUT", "PATCH", "APPLY", "DELETE"];

/// Writes to Drover Jobs and their status so far, as the apiserver counts
/// them. The counters start again at zero when the apiserver restarts.
pub async fn job_writes(client: &Client) -> Result<u64, kube::Error> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    let text = client.request_text(request).await?;
    Ok(sum_job_writes(&text))
}

/// Sums `apiserver_request_total` over the write verbs for `drover.dev`
/// `jobs` (the object and every subresource, any response code).
pub fn sum_job_writes(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("apiserver_request_total{"))
        .filter_map(|rest| rest.rsplit_once("} "))
        .filter(|(labels, _)| {
            label(labels, "group") == Some("drover.dev")
                && label(labels, "resource") == Some("jobs")
                && label(labels, "verb").is_some_and(|verb| WRITE_VERBS.contains(&verb))
        })
        .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
        // Counters are whole numbers, printed as floats.
        .map(|value| value as u64)
        .sum()
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = &labels[start..];
    rest.find('"').map(|end| &rest[..end])
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
        assert_eq!(sum_job_writes(metrics), 1000 + 3012 + 7);
    }
}
