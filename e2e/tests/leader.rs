//! Leader election: two operator processes share one Lease; when the leader
//! is killed with SIGKILL, the standby takes over and makes the next scale
//! decision. Own test binary, so its operators have the cluster to themselves.

use std::time::{Duration, Instant};

use drover_e2e::contenders::Contenders;
use drover_e2e::drover::{apply_fleet, create_job};
use drover_e2e::{shared, wait};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::json;

const LEASE_SECONDS: u64 = 4;

#[tokio::test]
async fn standby_takes_over_after_the_leader_is_killed() {
    let env = shared().await;
    let client = env.control_plane.client().await.expect("client");
    let ns = env
        .control_plane
        .create_namespace("leader")
        .await
        .expect("namespace");
    let operators = Contenders::start(env, "operator", LEASE_SECONDS).await;

    let fleet = PipelineWorkerBuilder::sleep("takeover")
        .queue("takeover-topic", "takeover-sub")
        .max_replicas(5)
        .jobs_per_replica(1);
    apply_fleet(&client, &ns, fleet.build()).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    wait::until(
        "the leader to create the Deployment",
        Duration::from_secs(20),
        || async {
            deployments
                .get_opt("takeover-worker")
                .await
                .map_err(|e| e.to_string())?
                .ok_or("not yet".into())
        },
    )
    .await;

    let (killed, standby) = (&operators.leader, &operators.standby);
    killed.process.kill_hard();
    let killed_at = Instant::now();

    for i in 0..4 {
        let job = JobBuilder::new(&format!("after-kill-{i}"), "takeover")
            .input(json!({"durationMillis": 10}))
            .build();
        create_job(&client, &ns, job).await;
    }
    wait::until(
        "the standby to scale to 4",
        Duration::from_secs(LEASE_SECONDS + 15),
        || async {
            let replicas = deployments
                .get("takeover-worker")
                .await
                .map_err(|e| e.to_string())?
                .spec
                .replicas;
            if replicas == Some(4) {
                Ok(())
            } else {
                Err(format!("{replicas:?}"))
            }
        },
    )
    .await;
    let took = killed_at.elapsed();
    assert_eq!(
        operators.holder().await,
        Ok(standby.identity.clone()),
        "the standby holds the Lease"
    );
    assert!(standby.process.is_running(), "the standby died");
    eprintln!(
        "{} took over and scaled {took:?} after {} was killed (lease {LEASE_SECONDS} s)",
        standby.identity, killed.identity
    );
    operators.assert_no_refusals();
}
