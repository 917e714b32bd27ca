//! A leader that cannot prove it leads stops acting, paused: frozen with
//! SIGSTOP for longer than its lease while Jobs keep arriving, then thawed
//! with SIGCONT with its caches full of work. Its renew deadline has passed
//! on its own clock: it must publish and write nothing, and leave. (The
//! partitioned leader is `leader_partition.rs`.) Own test binary, so its
//! operators have the cluster and the Lease to themselves.

use std::time::{Duration, SystemTime};

use drover_crds::{Job, JobPhase};
use drover_e2e::contenders::{Contenders, published_since};
use drover_e2e::drover::{apply_fleet, create_job};
use drover_e2e::{shared, wait};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use serde_json::json;

const LEASE_SECONDS: u64 = 4;

async fn queued(jobs: &Api<Job>, name: &str) {
    wait::job_in_phase(jobs, name, JobPhase::Queued, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_leader_frozen_past_its_lease_publishes_nothing_when_it_thaws() {
    let env = shared().await;
    let client = env.control_plane.client().await.expect("client");
    let ns = env
        .control_plane
        .create_namespace("frozen")
        .await
        .expect("namespace");
    let operators = Contenders::start(env, "frozen", LEASE_SECONDS).await;

    // No workers: every published Job stays Queued, so a publish is visible.
    // Capacity for all 21 Jobs: admission publishes no more than a fleet
    // could run (10 replicas x 4, plus the prefetch).
    let fleet = PipelineWorkerBuilder::sleep("parked")
        .queue("frozen-topic", "frozen-sub")
        .concurrency(4)
        .manual_replicas(0);
    apply_fleet(&client, &ns, fleet.build()).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let create = |name: String| {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let job = JobBuilder::new(&name, "parked")
                .input(json!({"durationMillis": 10}))
                .build();
            create_job(&client, &ns, job).await;
        }
    };
    create("before".into()).await;
    queued(&jobs, "before").await;

    operators.leader.process.signal(libc::SIGSTOP);
    let frozen_at = Timestamp::try_from(SystemTime::now()).expect("now");
    // Work the frozen leader's watch delivers to it the moment it thaws.
    for i in 0..10 {
        create(format!("during-{i}")).await;
    }
    operators
        .standby_took_over(Duration::from_secs(LEASE_SECONDS * 4))
        .await;
    for i in 0..10 {
        create(format!("after-{i}")).await;
    }
    operators.leader.process.signal(libc::SIGCONT);

    // Every Job is published, by the standby alone.
    for name in (0..10).flat_map(|i| [format!("during-{i}"), format!("after-{i}")]) {
        queued(&jobs, &name).await;
    }
    wait::until(
        "the thawed leader to stop",
        Duration::from_secs(20),
        || async {
            (!operators.leader.process.is_running())
                .then_some(())
                .ok_or("still running".to_owned())
        },
    )
    .await;
    let late = published_since(operators.leader.process.log_path(), frozen_at);
    assert!(
        late.is_empty(),
        "{} published after it lost the lease: {late:?}",
        operators.leader.identity
    );
    assert!(operators.standby.process.is_running(), "the standby died");
    assert_eq!(
        operators.holder().await,
        Ok(operators.standby.identity.clone())
    );
    operators.assert_no_refusals();
}
