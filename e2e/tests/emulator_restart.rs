//! Restart the Pub/Sub emulator in the middle of a run: it comes back empty,
//! without topics, subscriptions or messages. Two fleets show the two ways
//! this hurts:
//! * `live` has a worker pulling through the restart. Jobs created after it
//!   find their topic gone: the operator recreates the queue on the failed
//!   publish, and the worker's streaming pull reconnects to it.
//! * `parked` has no workers while its Jobs are Queued, so their messages
//!   exist only in the emulator and are lost. The watchdog republishes them
//!   once the fleet scales up.
//!
//! Every Job still succeeds exactly once. Own test binary, so the restart
//! disturbs no other test.

use std::collections::BTreeSet;
use std::time::Duration;

use drover_crds::{Job, JobPhase};
use drover_e2e::drover::{create_job, drover_test};
use drover_e2e::observe::http_get;
use drover_e2e::{error_chain, wait};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use kube::api::{Api, ListParams};
use serde_json::json;

const PER_FLEET: usize = 12;

#[tokio::test]
async fn every_job_succeeds_once_after_the_emulator_loses_every_message() {
    let test = drover_test("amnesia").await;
    let (env, drover, client, ns) = test.parts();
    let effects = env.control_plane.state_dir().join("effects-amnesia");
    std::fs::create_dir_all(&effects).expect("effects dir");

    let apply_fleet = |name: &'static str, replicas: i32| {
        let fleet = PipelineWorkerBuilder::sleep(name)
            .queue(&format!("{name}-jobs"), &format!("{name}-jobs-sub"))
            .ack_deadline_seconds(10)
            .concurrency(4)
            .manual_replicas(replicas)
            // 3 x 4 slots: all 12 parked Jobs are admitted and published.
            .max_replicas(3)
            .build();
        drover_e2e::drover::apply_fleet(&client, &ns, fleet)
    };
    apply_fleet("live", 1).await;
    apply_fleet("parked", 0).await;

    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let create = |fleet: &'static str, i: usize| {
        let job = JobBuilder::new(&format!("{fleet}-{i}"), fleet)
            .input(json!({"durationMillis": 300, "effectsDir": effects.display().to_string()}))
            .build();
        create_job(&client, &ns, job)
    };
    let statuses = || async {
        let list = jobs
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(
            list.items
                .into_iter()
                .map(|j| {
                    (
                        j.metadata.name.unwrap_or_default(),
                        j.status.unwrap_or_default(),
                    )
                })
                .collect::<Vec<_>>(),
        )
    };

    // A first Job through `live`, so its worker is connected and pulling.
    create("live", 0).await;
    for i in 0..PER_FLEET {
        create("parked", i).await;
    }
    wait::until(
        "live-0 done, parked Jobs queued",
        Duration::from_secs(60),
        || async {
            let all = statuses().await?;
            let live_done = all
                .iter()
                .any(|(n, s)| n == "live-0" && s.phase == JobPhase::Succeeded);
            let parked_queued = all
                .iter()
                .filter(|(n, s)| n.starts_with("parked") && s.phase == JobPhase::Queued)
                .count();
            if live_done && parked_queued == PER_FLEET {
                Ok(())
            } else {
                Err(format!(
                    "live-0 done: {live_done}, {parked_queued} parked queued"
                ))
            }
        },
    )
    .await;

    let republished_before = republished(&drover.operator_metrics).await;
    env.pubsub
        .restart()
        .await
        .unwrap_or_else(|e| panic!("cannot restart the emulator: {}", error_chain(&e)));

    for i in 1..PER_FLEET {
        create("live", i).await;
    }
    apply_fleet("parked", 2).await;

    wait::until("every Job to succeed", Duration::from_secs(150), || async {
        let all = statuses().await?;
        let pending: Vec<_> = all
            .iter()
            .filter(|(_, s)| s.phase != JobPhase::Succeeded)
            .map(|(n, s)| format!("{n}: {:?}", s.phase))
            .collect();
        if pending.is_empty() && all.len() == 2 * PER_FLEET {
            Ok(())
        } else {
            Err(format!(
                "{} of {} not done: {pending:?}",
                pending.len(),
                all.len()
            ))
        }
    })
    .await;

    // The parked Jobs ran from messages published after the restart: the
    // watchdog's republish, not a message that survived somewhere. (Their
    // `queuedAt` cannot show it: a worker may claim the republished message
    // before the operator's Queued write, which then rightly loses.)
    let republishes = republished(&drover.operator_metrics).await - republished_before;
    assert!(
        republishes >= PER_FLEET as f64,
        "{republishes} republishes for {PER_FLEET} lost messages"
    );
    // One file per completed run, named <namespace>_<job>_<attempt>.
    let runs: Vec<String> = std::fs::read_dir(&effects)
        .expect("effects")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    let jobs_run: BTreeSet<&str> = runs.iter().filter_map(|r| r.split('_').nth(1)).collect();
    assert_eq!(runs.len(), 2 * PER_FLEET, "{} runs: {runs:?}", runs.len());
    assert_eq!(
        jobs_run.len(),
        2 * PER_FLEET,
        "some Job ran twice, another never"
    );
}

/// The operator's count of watchdog republishes.
async fn republished(metrics_url: &str) -> f64 {
    let addr = metrics_url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let (code, body) = http_get(addr, "/metrics")
        .await
        .unwrap_or_else(|e| panic!("cannot scrape the operator: {e}"));
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find(|l| l.starts_with("drover_operator_jobs_published_total{kind=\"republish\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("the republish counter is exported from the start")
}
