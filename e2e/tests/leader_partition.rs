//! A leader that cannot prove it leads stops acting, partitioned: its Lease
//! renewals are refused (a ValidatingAdmissionPolicy denies them) while the
//! apiserver and Pub/Sub still answer everything else. The standby takes
//! over; Jobs created after that must be published by the standby alone,
//! and the cut-off leader must leave. (The paused leader is
//! `leader_pause.rs`.) Own test binary, so its operators have the cluster
//! and the Lease to themselves.

use std::time::{Duration, SystemTime};

use drover_crds::{Job, JobPhase};
use drover_e2e::admission::{Updates, refuse};
use drover_e2e::contenders::{Contenders, published_since};
use drover_e2e::drover::{apply_fleet, create_job};
use drover_e2e::{shared, wait};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use serde_json::json;

const LEASE_SECONDS: u64 = 4;

#[tokio::test]
async fn a_leader_partitioned_from_its_lease_publishes_nothing_after_the_standby_took_over() {
    let env = shared().await;
    let client = env.control_plane.client().await.expect("client");
    let ns = env
        .control_plane
        .create_namespace("partitioned")
        .await
        .expect("namespace");
    let operators = Contenders::start(env, "partition", LEASE_SECONDS).await;
    let fleet = PipelineWorkerBuilder::sleep("parked")
        .queue("partitioned-topic", "partitioned-sub")
        .manual_replicas(0);
    apply_fleet(&client, &ns, fleet.build()).await;

    // Refuses every renewal by the leader (an update that keeps it the
    // holder); taking the Lease over stays allowed.
    let me = &operators.leader.identity;
    let _partition = refuse(
        &client,
        &format!("refuse-renewals-by-{me}"),
        Updates {
            group: "coordination.k8s.io",
            version: "v1",
            resource: "leases",
            namespace: None,
        },
        &format!(
            "!(oldObject.spec.holderIdentity == '{me}' && object.spec.holderIdentity == '{me}')"
        ),
        "this test partitions the leader from its Lease",
    )
    .await;
    operators
        .standby_took_over(Duration::from_secs(LEASE_SECONDS * 6))
        .await;
    let taken_over = Timestamp::try_from(SystemTime::now()).expect("now");

    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    for i in 0..10 {
        let job = JobBuilder::new(&format!("after-{i}"), "parked")
            .input(json!({"durationMillis": 10}))
            .build();
        create_job(&client, &ns, job).await;
    }
    for i in 0..10 {
        let name = format!("after-{i}");
        wait::job_in_phase(&jobs, &name, JobPhase::Queued, Duration::from_secs(30)).await;
    }
    let late = published_since(operators.leader.process.log_path(), taken_over);
    assert!(
        late.is_empty(),
        "{me} published after the standby took over: {late:?}"
    );
    wait::until(
        "the cut-off leader to stop",
        Duration::from_secs(20),
        || async {
            (!operators.leader.process.is_running())
                .then_some(())
                .ok_or("still running".to_owned())
        },
    )
    .await;
    assert!(operators.standby.process.is_running(), "the standby died");
    operators.assert_no_refusals();
}
