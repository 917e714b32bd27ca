//! Polling with a deadline, for tests that wait on a controller.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `probe` every 50 ms until it returns `Some`, and returns that value.
/// Panics after `timeout`, naming `what` and the last observation.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(observed) => observed,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the Job `name` to reach a terminal phase and returns its status.
pub async fn job_finished(
    jobs: &kube::Api<drover_crds::Job>,
    name: &str,
    timeout: Duration,
) -> drover_crds::JobStatus {
    until(&format!("{name} to finish"), timeout, || async {
        let status = jobs
            .get(name)
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        if status.phase.is_terminal() {
            Ok(status)
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await
}

/// Waits for the Job `name` to be in `phase` and returns it.
pub async fn job_in_phase(
    jobs: &kube::Api<drover_crds::Job>,
    name: &str,
    phase: drover_crds::JobPhase,
    timeout: Duration,
) -> drover_crds::Job {
    until(&format!("{name} to be {phase:?}"), timeout, || async {
        let job = jobs.get(name).await.map_err(|e| e.to_string())?;
        match job.status.as_ref().map(|s| s.phase) {
            Some(seen) if seen == phase => Ok(job),
            seen => Err(format!("{seen:?}")),
        }
    })
    .await
}
