//! Two PipelineWorkers that pull from one subscription would each receive
//! the other's Jobs: both show `Degraded/SubscriptionShared` within seconds
//! (the first one too, not only at its next full sync), and the condition
//! clears once one of them is gone.

use std::time::Duration;

use drover_crds::PipelineWorker;
use drover_e2e::drover::{apply_fleet, drover_test};
use drover_e2e::wait;
use drover_testkit::PipelineWorkerBuilder;
use kube::api::{Api, DeleteParams};

async fn degraded(fleets: &Api<PipelineWorker>, name: &str) -> Option<(String, String, String)> {
    let pw = fleets.get(name).await.ok()?;
    pw.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| (c.status, c.reason, c.message))
}

async fn wait_degraded(
    fleets: &Api<PipelineWorker>,
    name: &str,
    status: &str,
    reason: &str,
) -> String {
    wait::until(
        &format!("{name} Degraded={status} ({reason})"),
        Duration::from_secs(10),
        || async {
            match degraded(fleets, name).await {
                Some((s, r, message)) if s == status && r == reason => Ok(message),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

#[tokio::test]
async fn two_fleets_on_one_subscription_are_both_degraded_until_one_goes() {
    let first = drover_test("shared-a").await;
    let second = drover_test("shared-b").await;
    let (topic, subscription) = (first.unique("jobs"), first.unique("jobs-sub"));
    let fleet = |name: &str| {
        PipelineWorkerBuilder::sleep(name)
            .queue(&topic, &subscription)
            .manual_replicas(0)
            .build()
    };
    let first_fleets: Api<PipelineWorker> = first.api();
    let second_fleets: Api<PipelineWorker> = second.api();

    first.apply_fleet(fleet("a")).await;
    wait_degraded(&first_fleets, "a", "False", "AsExpected").await;
    // Let the first fleet's Deployment settle, so nothing but the second
    // fleet's arrival wakes it.
    tokio::time::sleep(Duration::from_secs(5)).await;

    apply_fleet(&second.client, &second.namespace, fleet("b")).await;
    let on_b = wait_degraded(&second_fleets, "b", "True", "SubscriptionShared").await;
    assert!(on_b.contains(&format!("{}/a", first.namespace)), "{on_b}");
    // The first fleet is told at once, not at its next full sync a minute away.
    let on_a = wait_degraded(&first_fleets, "a", "True", "SubscriptionShared").await;
    assert!(on_a.contains(&format!("{}/b", second.namespace)), "{on_a}");

    second_fleets
        .delete("b", &DeleteParams::default())
        .await
        .expect("the second fleet is deleted");
    wait_degraded(&first_fleets, "a", "False", "AsExpected").await;
}
