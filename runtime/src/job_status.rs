//! The one writer of Job status. Every transition, by the operator or a
//! worker, goes out as a merge patch conditioned on the resourceVersion the
//! decision was made from: when anyone wrote in between, the apiserver
//! answers 409 and the caller decides again from what is there now.

use drover_crds::job_transition::{JobConditionUpdate, JobStatusPatch};
use drover_crds::{Job, JobTransition};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::Serialize;

/// The body of a conditioned status patch.
#[derive(Serialize, Debug)]
struct ConditionedPatch<'a> {
    metadata: Precondition<'a>,
    status: &'a JobStatusPatch,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Precondition<'a> {
    resource_version: &'a str,
}

/// Writes `change` to the status of Job `name` if it is still at `resource_version`.
pub async fn write(
    jobs: &Api<Job>,
    name: &str,
    resource_version: &str,
    change: &JobTransition,
) -> Result<Job, kube::Error> {
    write_patch(jobs, name, resource_version, &change.status).await
}

/// Writes a conditions-only `update` to Job `name` if it is still at `resource_version`.
pub async fn write_conditions(
    jobs: &Api<Job>,
    name: &str,
    resource_version: &str,
    update: &JobConditionUpdate,
) -> Result<Job, kube::Error> {
    write_patch(jobs, name, resource_version, &update.status).await
}

async fn write_patch(
    jobs: &Api<Job>,
    name: &str,
    resource_version: &str,
    status: &JobStatusPatch,
) -> Result<Job, kube::Error> {
    let patch = ConditionedPatch {
        metadata: Precondition { resource_version },
        status,
    };
    jobs.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
}

/// Whether a write lost the race with another writer.
pub fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_crds::JobPhase;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn the_patch_carries_the_precondition_and_exactly_the_transition() {
        let change = JobTransition::release(JobPhase::Running, 0, Timestamp::UNIX_EPOCH).unwrap();
        let body = serde_json::to_value(ConditionedPatch {
            metadata: Precondition {
                resource_version: "42",
            },
            status: &change.status,
        })
        .unwrap();
        assert_eq!(
            body["metadata"],
            serde_json::json!({"resourceVersion": "42"})
        );
        // Exactly the transition's own patch: nothing added, nothing lost.
        assert_eq!(
            body["status"],
            serde_json::to_value(&change.status).unwrap()
        );
    }
}
