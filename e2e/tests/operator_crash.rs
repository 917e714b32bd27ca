//! SIGKILL the operator in the middle of a burst of 100 Jobs: a new operator
//! takes the Lease over, and every Job still succeeds exactly once. Own test
//! binary, so its operators have the cluster to themselves.

use std::time::Duration;

use drover_crds::{Job, JobPhase};
use drover_e2e::drover::{OperatorOptions, apply_fleet, create_job, drover_test, start_operator};
use drover_e2e::refusals::{self, LogSince};
use drover_e2e::{error_chain, ports, wait};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use kube::api::{Api, ListParams};
use serde_json::json;

const JOBS: usize = 100;

#[tokio::test]
async fn every_job_succeeds_once_after_the_operator_is_killed_mid_burst() {
    let test = drover_test("crash").await;
    let (env, drover, client, ns) = test.parts();
    let effects = env.control_plane.state_dir().join("effects-crash");
    std::fs::create_dir_all(&effects).expect("effects dir");

    let fleet = PipelineWorkerBuilder::sleep("burst")
        .queue("crash-jobs", "crash-jobs-sub")
        .concurrency(8)
        .replicas(1, 3)
        .jobs_per_replica(8);
    apply_fleet(&client, &ns, fleet.build()).await;

    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    for i in 0..JOBS {
        let job = JobBuilder::new(&format!("j-{i}"), "burst")
            .input(json!({"durationMillis": 50, "effectsDir": effects.display().to_string()}))
            .build();
        create_job(&client, &ns, job).await;
        if i == JOBS / 2 {
            drover.operator.kill_hard();
        }
    }
    let port = ports::free_loopback_ports(1).expect("port")[0];
    let kubeconfig = drover_e2e::identity::operator_kubeconfig(env)
        .await
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let successor = start_operator(
        env,
        &OperatorOptions {
            identity: "operator-1".into(),
            lease_seconds: 15,
            metrics_port: port,
            kubeconfig,
            failpoints: None,
        },
    )
    .unwrap_or_else(|e| panic!("cannot start the second operator: {}", error_chain(&e)));

    wait::until("every Job to succeed", Duration::from_secs(120), || async {
        let list = jobs
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let done = list
            .items
            .iter()
            .filter(|j| j.status.as_ref().map(|s| s.phase) == Some(JobPhase::Succeeded))
            .count();
        if done == JOBS {
            Ok(())
        } else {
            Err(format!("{done} of {JOBS} succeeded"))
        }
    })
    .await;
    // One file per completed run, named <namespace>_<job>_<attempt>.
    let runs: Vec<String> = std::fs::read_dir(&effects)
        .expect("effects")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    let jobs_run: std::collections::BTreeSet<&str> =
        runs.iter().filter_map(|r| r.split('_').nth(1)).collect();
    assert_eq!(runs.len(), JOBS, "{} runs for {JOBS} Jobs", runs.len());
    assert_eq!(jobs_run.len(), JOBS, "some Job ran twice, another never");
    refusals::assert_none(
        "the successor operator",
        &[LogSince::whole(successor.log_path())],
    );
}
