//! A leader that cannot prove it leads stops acting, paused: frozen with
//! SIGSTOP for longer than its lease while Jobs keep arriving, then thawed
//! with SIGCONT with its caches full of work. Its renew deadline has passed
//! on its own clock: it must publish and write nothing, and leave. (The
//! partitioned leader is `leader_partition.rs`.) Own test binary, so its
//! operators have the cluster and the Lease to themselves.

use std::time::{Duration, SystemTime};

use drover_crds::{Job, JobPhase};
use drover_e2e::drover::{OperatorOptions, apply_fleet, create_job, start_operator};
use drover_e2e::identity::{OPERATOR_NAMESPACE, operator_kubeconfig};
use drover_e2e::{error_chain, ports, shared, wait};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use serde_json::{Value, json};

const LEASE_SECONDS: u64 = 4;

async fn holder(leases: &Api<Lease>) -> Result<String, String> {
    let lease = leases
        .get_opt("drover-operator")
        .await
        .map_err(|e| e.to_string())?;
    lease
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty())
        .ok_or_else(|| "no holder".to_owned())
}

/// The `enqueued` events an operator logged at or after `since`.
fn published_since(log: &std::path::Path, since: Timestamp) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| entry["fields"]["event"] == "enqueued")
        .filter(|entry| {
            entry["timestamp"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .is_some_and(|t| t >= since)
        })
        .map(|entry| entry["fields"]["job"].as_str().unwrap_or("?").to_owned())
        .collect()
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
    let leader = wait::until("a leader", Duration::from_secs(20), || holder(&leases)).await;
    let (frozen, standby) = if leader == operators[0].0 {
        (&operators[0], &operators[1])
    } else {
        (&operators[1], &operators[0])
    };

    // No workers: every published Job stays Queued, so a publish is visible.
    let fleet = PipelineWorkerBuilder::sleep("parked")
        .queue("frozen-topic", "frozen-sub")
        .manual_replicas(0);
    apply_fleet(&client, &ns, fleet.build()).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let create = |name: String| {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            let job = JobBuilder::new(&name, "parked")
                .input(json!({"durationMillis": 10}))
                .build();
            create_job(&client, &ns, job).await;
        }
    };
    create("before".into()).await;
    wait::until("the leader to publish", Duration::from_secs(20), || async {
        let phase = jobs
            .get("before")
            .await
            .map_err(|e| e.to_string())?
            .status
            .map(|s| s.phase);
        (phase == Some(JobPhase::Queued))
            .then_some(())
            .ok_or(format!("{phase:?}"))
    })
    .await;

    frozen.1.signal(libc::SIGSTOP);
    let frozen_at = Timestamp::try_from(SystemTime::now()).expect("now");
    // Work the frozen leader's watch delivers to it the moment it thaws.
    for i in 0..10 {
        create(format!("during-{i}")).await;
    }
    wait::until(
        "the standby to take over",
        Duration::from_secs(LEASE_SECONDS * 4),
        || async {
            match holder(&leases).await? {
                h if h == standby.0 => Ok(()),
                h => Err(h),
            }
        },
    )
    .await;
    for i in 0..10 {
        create(format!("after-{i}")).await;
    }
    frozen.1.signal(libc::SIGCONT);

    // Every Job is published, by the standby alone.
    for name in std::iter::once("before".to_owned())
        .chain((0..10).map(|i| format!("during-{i}")))
        .chain((0..10).map(|i| format!("after-{i}")))
    {
        wait::until(
            &format!("{name} to be Queued"),
            Duration::from_secs(30),
            || async {
                let phase = jobs
                    .get(&name)
                    .await
                    .map_err(|e| e.to_string())?
                    .status
                    .map(|s| s.phase);
                (phase == Some(JobPhase::Queued))
                    .then_some(())
                    .ok_or(format!("{phase:?}"))
            },
        )
        .await;
    }
    wait::until(
        "the thawed leader to stop",
        Duration::from_secs(20),
        || async {
            (!frozen.1.is_running())
                .then_some(())
                .ok_or("still running".to_owned())
        },
    )
    .await;
    let late = published_since(frozen.1.log_path(), frozen_at);
    assert!(
        late.is_empty(),
        "{} published after it lost the lease: {late:?}",
        frozen.0
    );
    assert!(standby.1.is_running(), "the standby died");
    assert_eq!(holder(&leases).await.as_deref(), Ok(standby.0));
}
