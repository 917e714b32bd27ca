//! A fleet's ServiceAccount, Role, RoleBinding and Service follow the
//! PipelineWorker itself, not its name: one deleted and created again under
//! the same name gets them all back and runs its Jobs, and a Role deleted by
//! hand comes back within the operator's full-sync period.

use std::time::Duration;

use drover_crds::{Job, JobPhase, PipelineWorker};
use drover_e2e::drover::{DroverTest, drover_test};
use drover_e2e::wait;
use drover_operator::fleet_plan::CHILDREN_RESYNC;
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams};
use kube::core::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde_json::json;

const FLEET: &str = "again";
const CHILD: &str = "again-worker";

fn fleet(test: &DroverTest) -> PipelineWorker {
    PipelineWorkerBuilder::sleep(FLEET)
        .queue(&test.unique("jobs"), &test.unique("jobs-sub"))
        .manual_replicas(1)
        .build()
}

fn owned_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

/// Waits until the fleet's four children exist and belong to the fleet `uid`.
async fn children_of(test: &DroverTest, uid: &str, within: Duration) {
    wait::until(&format!("the children of {uid}"), within, || async {
        let metas = [
            test.api::<ServiceAccount>()
                .get_opt(CHILD)
                .await
                .map(|o| o.map(|o| o.meta().clone())),
            test.api::<Role>()
                .get_opt(CHILD)
                .await
                .map(|o| o.map(|o| o.meta().clone())),
            test.api::<RoleBinding>()
                .get_opt(CHILD)
                .await
                .map(|o| o.map(|o| o.meta().clone())),
            test.api::<Service>()
                .get_opt(CHILD)
                .await
                .map(|o| o.map(|o| o.meta().clone())),
        ];
        let owned: Vec<bool> = metas
            .iter()
            .map(|m| matches!(m, Ok(Some(meta)) if owned_by(meta, uid)))
            .collect();
        if owned.iter().all(|o| *o) {
            Ok(())
        } else {
            Err(format!(
                "owned by the fleet (SA, Role, RoleBinding, Service): {owned:?}"
            ))
        }
    })
    .await
}

async fn runs_a_job(test: &DroverTest, name: &str) {
    let jobs: Api<Job> = test.api();
    test.create_job(
        JobBuilder::new(name, FLEET)
            .input(json!({"durationMillis": 50}))
            .build(),
    )
    .await;
    let status = wait::job_finished(&jobs, name, Duration::from_secs(60)).await;
    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
}

#[tokio::test]
async fn a_recreated_fleet_gets_its_rbac_back_and_a_role_deleted_by_hand_returns() {
    let test = drover_test("recreate").await;
    let first = test.apply_fleet(fleet(&test)).await;
    let first_uid = first.uid().expect("uid");
    children_of(&test, &first_uid, Duration::from_secs(20)).await;
    runs_a_job(&test, "before").await;

    let fleets: Api<PipelineWorker> = test.api();
    fleets
        .delete(FLEET, &DeleteParams::foreground())
        .await
        .expect("the fleet is deleted");
    wait::until(
        "the fleet and its children to be gone",
        Duration::from_secs(60),
        || async {
            let left = [
                fleets.get_opt(FLEET).await.map(|o| o.is_some()),
                test.api::<ServiceAccount>()
                    .get_opt(CHILD)
                    .await
                    .map(|o| o.is_some()),
                test.api::<Role>().get_opt(CHILD).await.map(|o| o.is_some()),
                test.api::<RoleBinding>()
                    .get_opt(CHILD)
                    .await
                    .map(|o| o.is_some()),
                test.api::<Service>()
                    .get_opt(CHILD)
                    .await
                    .map(|o| o.is_some()),
            ];
            if left.iter().all(|l| matches!(l, Ok(false))) {
                Ok(())
            } else {
                Err(format!(
                    "still there (fleet, SA, Role, RoleBinding, Service): {left:?}"
                ))
            }
        },
    )
    .await;

    // Same name, same generation (1): only the uid tells the two apart.
    let second = test.apply_fleet(fleet(&test)).await;
    let second_uid = second.uid().expect("uid");
    assert_ne!(first_uid, second_uid);
    children_of(&test, &second_uid, Duration::from_secs(20)).await;
    runs_a_job(&test, "after").await;

    test.api::<Role>()
        .delete(CHILD, &DeleteParams::default())
        .await
        .expect("the Role is deleted by hand");
    children_of(
        &test,
        &second_uid,
        CHILDREN_RESYNC + Duration::from_secs(20),
    )
    .await;
}
