//! Two PipelineWorkers that name one subscription would each receive the
//! other's Jobs. The queue belongs to the fleet that created it (its labels
//! say so): the second fleet is `QueueReady=False/QueueOwnedElsewhere` with
//! zero workers within seconds, the owner stays healthy, and once the owner
//! is gone the queue may be taken over.

use std::time::Duration;

use drover_crds::PipelineWorker;
use drover_e2e::drover::{apply_fleet, drover_test};
use drover_e2e::wait;
use drover_testkit::PipelineWorkerBuilder;
use kube::api::{Api, DeleteParams};

async fn condition(
    fleets: &Api<PipelineWorker>,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let pw = fleets.get(name).await.ok()?;
    pw.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason, c.message))
}

async fn wait_condition(
    fleets: &Api<PipelineWorker>,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> String {
    wait::until(
        &format!("{name} {type_}={status} ({reason})"),
        Duration::from_secs(15),
        || async {
            match condition(fleets, name, type_).await {
                Some((s, r, message)) if s == status && r == reason => Ok(message),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_second_fleet_on_an_owned_subscription_is_refused_until_the_owner_goes() {
    let first = drover_test("shared-a").await;
    let second = drover_test("shared-b").await;
    let (topic, subscription) = (first.unique("jobs"), first.unique("jobs-sub"));
    let fleet = |name: &str| {
        PipelineWorkerBuilder::sleep(name)
            .queue(&topic, &subscription)
            .build()
    };
    let first_fleets: Api<PipelineWorker> = first.api();
    let second_fleets: Api<PipelineWorker> = second.api();

    first.apply_fleet(fleet("a")).await;
    wait_condition(&first_fleets, "a", "QueueReady", "True", "QueueInPlace").await;

    apply_fleet(&second.client, &second.namespace, fleet("b")).await;
    let on_b = wait_condition(
        &second_fleets,
        "b",
        "QueueReady",
        "False",
        "QueueOwnedElsewhere",
    )
    .await;
    assert!(on_b.contains(&format!("{}/a", first.namespace)), "{on_b}");
    wait_condition(
        &second_fleets,
        "b",
        "Degraded",
        "True",
        "QueueOwnedElsewhere",
    )
    .await;
    // After a quiet period the owner is still healthy and the other fleet has no workers.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, reason, _) = condition(&first_fleets, "a", "Degraded")
        .await
        .expect("condition");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "AsExpected"));
    let b = second_fleets.get("b").await.expect("fleet b");
    assert_eq!(b.status.map(|s| s.desired_replicas), Some(0));

    first_fleets
        .delete("a", &DeleteParams::default())
        .await
        .expect("the first fleet is deleted");
    // The owner is gone: the queue is free, and b labels it its own.
    wait_condition(&second_fleets, "b", "QueueReady", "True", "QueueInPlace").await;
}
