//! A consensus Job end to end: the operator publishes it, a worker process
//! (run by the process kubelet, its API key resolved from a Secret) pulls and
//! claims it, talks to a scripted OpenAI-compatible server on this machine,
//! and writes the decision and every step to the Job's status.

use std::time::Duration;

use drover_crds::{Job, JobPhase, StepPhase};
use drover_e2e::drover::drover_test;
use drover_e2e::wait;
use drover_testkit::llm::{Call, Reply, ScriptedLlm};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;

const API_KEY: &str = "sk-e2e-consensus";

fn persona(call: &Call) -> Option<&str> {
    ["skeptic", "operator", "user"]
        .into_iter()
        .find(|name| call.system.contains(&format!("reviewer named \"{name}\"")))
}

/// A proposal for the expand call, a review per persona; the operator
/// persona is rate limited once, so the worker's retry shows in the status.
fn script(call: &Call) -> Reply {
    let review = |verdict: &str, score: f64, summary: &str| {
        Reply::Json(json!({"verdict": verdict, "score": score, "summary": summary, "concerns": []}))
    };
    match persona(call) {
        None => Reply::Json(
            json!({"title": "Cache billing reads", "proposal": "A read-through cache with a 5 minute TTL."}),
        ),
        Some("skeptic") => review("revise", 6.0, "Stale invoices for five minutes"),
        Some("operator") if call.nth == 0 => Reply::TooManyRequests {
            retry_after_seconds: 0,
        },
        Some("operator") => review("approve", 8.0, "Cheap to run and roll back"),
        Some(_) => review("approve", 9.0, "Pages load faster"),
    }
}

#[tokio::test]
async fn a_consensus_job_succeeds_through_a_worker_pod_with_the_key_from_its_secret() {
    let t = drover_test("consensus").await;
    let (client, ns) = (t.client.clone(), t.namespace.clone());
    let llm = ScriptedLlm::start(script)
        .await
        .expect("the scripted LLM server starts");

    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "llm-api"},
        "stringData": {"apiKey": API_KEY},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("the Secret is created");
    let fleet = PipelineWorkerBuilder::consensus("reviewers", &llm.base_url(), "scripted")
        // The scripted model listens on loopback: the fleet allows exactly it.
        .egress_allowed(&["127.0.0.1/32"])
        .queue(&format!("{ns}-jobs"), &format!("{ns}-jobs-sub"))
        .ack_deadline_seconds(10)
        .replicas(1, 1)
        .timeouts(30, 60)
        .max_attempts(2)
        // The default multiplier (2): the spec named only the first and the last wait.
        .backoff(1, 2.0, 2)
        .api_key_secret("llm-api", "apiKey")
        .persona_retries(2, 200)
        .persona("skeptic", "You look for the weakest assumption.")
        .persona("operator", "You run this in production.")
        .persona("user", "You are the person this is for.");
    t.apply_fleet(fleet.build()).await;
    t.create_job(
        JobBuilder::new("review-cache", "reviewers")
            .input(json!({"text": "Cache billing reads", "context": "Reads are 90% of load."}))
            .build(),
    )
    .await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);

    let status = wait::job_finished(&jobs, "review-cache", Duration::from_secs(120)).await;

    assert_eq!(status.phase, JobPhase::Succeeded, "{status:?}");
    assert_eq!(status.attempt, 1, "{status:?}");
    let result = status.result.expect("a result");
    assert_eq!(result["decision"], "approve", "{result}");
    assert_eq!(result["score"], 7.7, "{result}");
    assert_eq!(result["agreement"], 0.33, "{result}");
    let summary = result["summary"].as_str().expect("a summary");
    for persona in [
        "skeptic (revise, 6/10)",
        "operator (approve, 8/10)",
        "user (approve, 9/10)",
    ] {
        assert!(summary.contains(persona), "{summary}");
    }

    let steps: Vec<(&str, StepPhase, i32)> = status
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.phase, s.attempts))
        .collect();
    assert_eq!(
        steps,
        [
            ("expand", StepPhase::Succeeded, 1),
            ("review:skeptic", StepPhase::Succeeded, 1),
            ("review:operator", StepPhase::Succeeded, 2),
            ("review:user", StepPhase::Succeeded, 1),
            ("aggregate", StepPhase::Succeeded, 1),
        ]
    );

    let seen = llm.seen();
    assert_eq!(seen.len(), 5, "expand, three reviews, one retry");
    for call in &seen {
        assert_eq!(
            call.authorization.as_deref(),
            Some(format!("Bearer {API_KEY}").as_str()),
            "the worker did not send the key from the Secret"
        );
    }
}
