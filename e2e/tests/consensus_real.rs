//! The consensus sample against a real model: config/samples' fleet and Job
//! (three personas, the sample's retry settings and step timeouts), pointed
//! at llama.cpp's server with SmolLM2-135M on this machine, through a real
//! worker pod. No answer is scripted: the Job must Succeed on what the model
//! decodes under the JSON Schemas the worker sends.

use std::time::{Duration, Instant};

use drover_crds::{Job, JobPhase, PipelineWorker, StepPhase};
use drover_e2e::drover::drover_test;
use drover_e2e::local_model::{self, LocalModel};
use drover_e2e::{manifests, wait, workspace_root};
use kube::ResourceExt;
use serde_json::Value;

/// The sample's object of `kind`, typed.
fn sample<T: serde::de::DeserializeOwned>(file: &str, kind: &str) -> T {
    let path = workspace_root().join("config/samples").join(file);
    let manifests = manifests::read_file(&path)
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
    let found = manifests
        .into_iter()
        .find(|m| m.object.types.as_ref().is_some_and(|t| t.kind == kind))
        .unwrap_or_else(|| panic!("no {kind} in {}", path.display()));
    let value = serde_json::to_value(&found.object).expect("a manifest is JSON");
    serde_json::from_value(value).unwrap_or_else(|e| panic!("the sample {kind} is invalid: {e}"))
}

/// Checks `result` against the consensus result's documented shape
/// (docs/pipelines.md): the decision and each review's verdict are one of
/// three words, scores are 0-10, votes add up, every persona is there.
fn assert_schema_valid(result: &Value, personas: &[String]) {
    let verdicts = ["approve", "revise", "reject"];
    let verdict = |v: &Value| v.as_str().is_some_and(|v| verdicts.contains(&v));
    let score = |v: &Value| v.as_f64().is_some_and(|s| (0.0..=10.0).contains(&s));
    let text = |v: &Value| v.as_str().is_some_and(|s| !s.trim().is_empty());
    assert!(verdict(&result["decision"]), "decision: {result}");
    assert!(score(&result["score"]), "score: {result}");
    let agreement = result["agreement"].as_f64().expect("agreement");
    assert!((0.0..=1.0).contains(&agreement), "agreement: {result}");
    assert!(text(&result["title"]), "title: {result}");
    assert!(text(&result["summary"]), "summary: {result}");
    let votes: u64 = verdicts
        .iter()
        .map(|v| result["votes"][v].as_u64().expect("a vote count"))
        .sum();
    assert_eq!(votes, personas.len() as u64, "votes: {result}");
    let reviews = result["reviews"].as_array().expect("reviews");
    let names: Vec<&str> = reviews
        .iter()
        .map(|r| r["persona"].as_str().expect("persona"))
        .collect();
    assert_eq!(names, personas, "{result}");
    for review in reviews {
        assert!(verdict(&review["verdict"]), "verdict: {review}");
        assert!(score(&review["score"]), "score: {review}");
        assert!(text(&review["summary"]), "summary: {review}");
        let concerns = review["concerns"].as_array().expect("concerns");
        assert!(concerns.iter().all(text), "concerns: {review}");
    }
}

fn seconds(
    from: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    to: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> f64 {
    (to.0.as_millisecond() - from.0.as_millisecond()) as f64 / 1000.0
}

#[tokio::test]
async fn the_consensus_sample_succeeds_on_a_real_local_model_through_a_worker_pod() {
    let t = drover_test("consensus-real").await;
    let log_dir =
        std::env::temp_dir().join(format!("drover-e2e-local-model-{}", std::process::id()));
    let mut progress = |line: &str| eprintln!("local model: {line}");
    let model = LocalModel::start(&log_dir, &mut progress)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the local model must serve: {}",
                drover_e2e::error_chain(&e)
            )
        });

    let mut fleet: PipelineWorker = sample("pipelineworker-consensus.yaml", "PipelineWorker");
    let step_seconds = fleet.spec.timeouts.step_seconds;
    let job_seconds = fleet.spec.timeouts.job_seconds;
    let personas: Vec<String> = {
        let consensus = fleet
            .spec
            .consensus
            .as_mut()
            .expect("the sample is a consensus fleet");
        consensus.base_url = model.base_url();
        consensus.model = local_model::MODEL_NAME.to_owned();
        // A local server takes no key.
        consensus.api_key_secret_ref = None;
        consensus.personas.iter().map(|p| p.name.clone()).collect()
    };
    assert_eq!(personas.len(), 3, "the sample has three personas");
    // The local model listens on loopback: the fleet allows exactly it.
    fleet.spec.egress = Some(drover_crds::pipeline_worker::EgressSpec {
        allowed_cidrs: vec!["127.0.0.1/32".into()],
    });
    fleet.spec.queue.topic = t.unique("reviewers");
    fleet.spec.queue.subscription = t.unique("reviewers-sub");
    fleet.metadata.namespace = None;
    let fleet_name = fleet.name_any();
    t.apply_fleet(fleet).await;
    // The topic and subscription first, as a person would wait for them.
    let fleets = t.api::<PipelineWorker>();
    wait::until("the fleet's queue", Duration::from_secs(30), || async {
        let fleet = fleets.get(&fleet_name).await.map_err(|e| e.to_string())?;
        let conditions = fleet.status.map(|s| s.conditions).unwrap_or_default();
        conditions
            .iter()
            .find(|c| c.type_ == "QueueReady" && c.status == "True")
            .map(|_| ())
            .ok_or_else(|| format!("{conditions:?}"))
    })
    .await;

    let mut job: Job = sample("job-consensus.yaml", "Job");
    job.spec.worker = fleet_name;
    job.metadata.namespace = None;
    let job_name = job.name_any();
    let started = Instant::now();
    let created = t.create_job(job).await;

    // The Job's own bound, plus the time a fleet scaled to zero takes to get a pod.
    let status = wait::job_finished(
        &t.api::<Job>(),
        &job_name,
        Duration::from_secs(job_seconds.unsigned_abs() + 60),
    )
    .await;
    let took = started.elapsed();

    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    let result = status.result.as_ref().expect("a result");
    assert_schema_valid(result, &personas);
    let mut timings = Vec::new();
    for step in &status.steps {
        assert_eq!(step.phase, StepPhase::Succeeded, "{step:?}");
        let (Some(from), Some(to)) = (&step.started_at, &step.finished_at) else {
            panic!("{step:?} has no start or finish");
        };
        let step_took = seconds(from, to);
        assert!(
            step_took <= step_seconds as f64,
            "{} took {step_took:.1} s, over the sample's {step_seconds} s step timeout",
            step.name
        );
        timings.push(format!(
            "{} {step_took:.1} s ({} tries)",
            step.name, step.attempts
        ));
    }
    let claimed_after = match (&created.metadata.creation_timestamp, &status.started_at) {
        (Some(from), Some(to)) => format!("{:.1} s", seconds(from, to)),
        _ => "?".into(),
    };
    eprintln!(
        "consensus on {} (server up in {:.1} s): Job {job_name} Succeeded in {:.1} s from creation (claimed after {claimed_after}), attempt {}; steps: {}; decision {} score {}",
        local_model::MODEL_FILE,
        model.started_in().as_secs_f64(),
        took.as_secs_f64(),
        status.attempt,
        timings.join(", "),
        result["decision"],
        result["score"],
    );
}
