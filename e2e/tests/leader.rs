//! Leader election: two operator processes share one Lease; when the leader
//! is killed with SIGKILL, the standby takes over and makes the next scale
//! decision. Own test binary, so its operators have the cluster to themselves.

use std::time::{Duration, Instant};

use drover_e2e::drover::{OperatorOptions, apply_fleet, create_job, start_operator};
use drover_e2e::identity::{OPERATOR_NAMESPACE, operator_kubeconfig};
use drover_e2e::{error_chain, ports, shared, wait};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
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
    let ports = ports::free_loopback_ports(2).expect("ports");
    let kubeconfig = operator_kubeconfig(env)
        .await
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let start = |identity: &str, port: u16| {
        start_operator(
            env,
            &OperatorOptions {
                identity: identity.into(),
                lease_seconds: LEASE_SECONDS,
                metrics_port: port,
                kubeconfig: kubeconfig.clone(),
            },
        )
        .unwrap_or_else(|e| panic!("cannot start {identity}: {}", error_chain(&e)))
    };
    let operators = [
        ("operator-a", start("operator-a", ports[0])),
        ("operator-b", start("operator-b", ports[1])),
    ];

    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let leader = wait::until("a leader", Duration::from_secs(20), || async {
        let lease = leases
            .get_opt("drover-operator")
            .await
            .map_err(|e| e.to_string())?;
        lease
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty())
            .ok_or_else(|| "no holder".to_owned())
    })
    .await;

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

    let (killed, standby) = if leader == operators[0].0 {
        (&operators[0], &operators[1])
    } else {
        (&operators[1], &operators[0])
    };
    killed.1.kill_hard();
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
    let holder = leases
        .get("drover-operator")
        .await
        .expect("lease")
        .spec
        .and_then(|s| s.holder_identity);
    assert_eq!(
        holder.as_deref(),
        Some(standby.0),
        "the standby holds the Lease"
    );
    assert!(standby.1.is_running(), "the standby died");
    eprintln!(
        "{} took over and scaled {took:?} after {} was killed (lease {LEASE_SECONDS} s)",
        standby.0, killed.0
    );
}
