//! Clocks are not trusted across machines. A worker whose clock runs 60 s
//! behind the operator's (libfaketime preloaded into its process) writes
//! `renewTime` and `startedAt` a minute in the past. Judged on the
//! operator's clock those would read as a claim long expired and an attempt
//! past its deadline; judged, as Drover does, from when the operator itself
//! saw the claim change, the Job simply runs to its end once.

use std::time::Duration;

use drover_crds::{Job, JobPhase};
use drover_e2e::drover::drover_test;
use drover_e2e::wait;
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use serde_json::json;

/// Where Debian's libfaketime puts its preload library.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

#[tokio::test]
async fn a_worker_clock_a_minute_behind_causes_no_worker_lost_and_no_deadline() {
    assert!(
        std::path::Path::new(LIBFAKETIME).is_file(),
        "{LIBFAKETIME} is missing: install Debian's faketime package (`cargo xtask test` does)"
    );
    let test = drover_test("skew").await;
    let effects = test.env.control_plane.state_dir().join("effects-skew");
    std::fs::create_dir_all(&effects).expect("effects dir");
    test.apply_fleet(
        PipelineWorkerBuilder::sleep("behind")
            .queue(&test.unique("jobs"), &test.unique("jobs-sub"))
            .manual_replicas(1)
            // Shorter than the minute of skew: on the worker's own clock the
            // attempt is past its deadline the moment it starts.
            .timeouts(40, 40)
            .with(|spec| {
                spec.env = Some(vec![
                    env("LD_PRELOAD", LIBFAKETIME),
                    env("FAKETIME", "-60"),
                    // Timers and timeouts keep real time; only the wall clock is off.
                    env("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
                ]);
            })
            .build(),
    )
    .await;
    let jobs: Api<Job> = test.api();
    let job = test
        .create_job(
            JobBuilder::new("slow", "behind")
                .input(
                    json!({"durationMillis": 25_000, "effectsDir": effects.display().to_string()}),
                )
                .build(),
        )
        .await;

    // The window is open: the worker's claim says it renewed a minute ago.
    let skew = wait::until(
        "a claim from the skewed worker",
        Duration::from_secs(60),
        || async {
            let status = jobs
                .get("slow")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            match &status.claim {
                Some(claim) => Ok(Timestamp::now().duration_since(claim.renew_time.0)),
                None => Err(format!("{status:?}")),
            }
        },
    )
    .await;
    assert!(
        skew.as_secs() >= 50,
        "the worker's clock is not behind (renewTime {skew:?} old): libfaketime did not take"
    );

    let status = wait::job_finished(&jobs, "slow", Duration::from_secs(120)).await;
    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    assert_eq!(
        status.attempt, 1,
        "a live attempt was taken for lost: {status:?}"
    );
    assert_eq!(
        status.result,
        Some(json!({"sleptMillis": 25_000, "jobUid": job.uid().expect("uid")}))
    );
}
