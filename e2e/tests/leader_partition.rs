//! A leader that cannot prove it leads stops acting, partitioned: its Lease
//! renewals are refused (a ValidatingAdmissionPolicy denies them) while the
//! apiserver and Pub/Sub still answer everything else. The standby takes
//! over; Jobs created after that must be published by the standby alone,
//! and the cut-off leader must leave. (The paused leader is
//! `leader_pause.rs`.) Own test binary, so its operators have the cluster
//! and the Lease to themselves.

use std::time::{Duration, SystemTime};

use drover_crds::{Job, JobPhase};
use drover_e2e::drover::{OperatorOptions, apply_fleet, create_job, start_operator};
use drover_e2e::identity::{OPERATOR_NAMESPACE, operator_kubeconfig};
use drover_e2e::{error_chain, ports, shared, wait};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
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

/// Refuses every renewal of the Lease by `identity` (an update that keeps
/// it the holder); taking the Lease over stays allowed.
async fn refuse_renewals_by(client: &kube::Client, identity: &str) {
    let name = format!("refuse-renewals-by-{identity}");
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["coordination.k8s.io"], "apiVersions": ["v1"],
                "operations": ["UPDATE"], "resources": ["leases"],
            }]},
            "validations": [{
                "expression": format!("!(oldObject.spec.holderIdentity == '{identity}' && object.spec.holderIdentity == '{identity}')"),
                "message": "this test partitions the leader from its Lease",
            }],
        },
    }))
    .expect("policy");
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }))
    .expect("binding");
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .expect("policy is created");
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding is created");
}

#[tokio::test]
async fn a_leader_partitioned_from_its_lease_publishes_nothing_after_the_standby_took_over() {
    let env = shared().await;
    let client = env.control_plane.client().await.expect("client");
    let ns = env
        .control_plane
        .create_namespace("partitioned")
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
        ("partition-a", start("partition-a", ports[0])),
        ("partition-b", start("partition-b", ports[1])),
    ];
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let leader = wait::until("a leader", Duration::from_secs(20), || holder(&leases)).await;
    let (cut_off, standby) = if leader == operators[0].0 {
        (&operators[0], &operators[1])
    } else {
        (&operators[1], &operators[0])
    };
    let fleet = PipelineWorkerBuilder::sleep("parked")
        .queue("partitioned-topic", "partitioned-sub")
        .manual_replicas(0);
    apply_fleet(&client, &ns, fleet.build()).await;

    refuse_renewals_by(&client, cut_off.0).await;
    wait::until(
        "the standby to take over",
        Duration::from_secs(LEASE_SECONDS * 6),
        || async {
            match holder(&leases).await? {
                h if h == standby.0 => Ok(()),
                h => Err(h),
            }
        },
    )
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
    let late = published_since(cut_off.1.log_path(), taken_over);
    assert!(
        late.is_empty(),
        "{} published after the standby took over: {late:?}",
        cut_off.0
    );
    wait::until(
        "the cut-off leader to stop",
        Duration::from_secs(20),
        || async {
            (!cut_off.1.is_running())
                .then_some(())
                .ok_or("still running".to_owned())
        },
    )
    .await;
    assert!(standby.1.is_running(), "the standby died");
}
