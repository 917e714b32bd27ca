//! The consensus pipeline against a scripted OpenAI-compatible server:
//! valid answers, repairs, rate limits, server errors, timeouts, refusals,
//! and reviews that really run in parallel.

use std::time::{Duration, Instant};

use drover_crds::FailureReason;
use drover_crds::{PipelineWorkerSpec, StepPhase, StepStatus};
use drover_testkit::llm::{Call, Reply, ScriptedLlm};
use serde_json::{Value, json};

use super::prompts::{EXPAND_OPENING, persona_marker};
use super::*;
use crate::pipelines::testing;

const KEY: &str = "sk-test-123";

fn input() -> Value {
    json!({"text": "Cache billing reads", "context": "Reads are 90% of load."})
}

/// A consensus fleet against `llm` with these personas; `extra` overrides
/// consensus settings.
fn fleet(llm: &ScriptedLlm, personas: &[&str], extra: Value) -> PipelineWorkerSpec {
    let personas: Vec<Value> = personas
        .iter()
        .map(|p| json!({"name": p, "prompt": format!("You speak for {p}.")}))
        .collect();
    let mut consensus = json!({
        "baseUrl": llm.base_url(), "model": "test-model", "temperature": 0.3,
        "personas": personas, "maxRetriesPerPersona": 2, "initialBackoffMillis": 10,
        "requestTimeoutSeconds": 5,
    });
    if let (Value::Object(consensus), Value::Object(extra)) = (&mut consensus, extra) {
        consensus.extend(extra);
    }
    // The scripted server listens on loopback, which a fleet must allow.
    testing::fleet(json!({
        "pipeline": "consensus", "consensus": consensus,
        "egress": {"allowedCidrs": ["127.0.0.1/32"]},
    }))
}

fn is_expand(call: &Call) -> bool {
    call.system.starts_with(EXPAND_OPENING)
}

fn is_persona(call: &Call, name: &str) -> bool {
    call.system.contains(&persona_marker(name))
}

fn review(verdict: &str, score: f64, summary: &str) -> Reply {
    Reply::Json(
        json!({"verdict": verdict, "score": score, "summary": summary, "concerns": [format!("{summary} (concern)")]}),
    )
}

/// Good answers: a proposal, and an approving review from every persona.
fn well_behaved(call: &Call) -> Reply {
    if is_expand(call) {
        Reply::Json(
            json!({"title": "Cache billing reads", "proposal": "A read-through cache in front of billing, 5 minute TTL."}),
        )
    } else {
        review("approve", 8.0, "Looks sound")
    }
}

/// A server that gives `persona` `reply` for its first `times` calls (a
/// repair request counts) and is well behaved otherwise.
async fn llm_where(persona: &'static str, times: usize, reply: Reply) -> ScriptedLlm {
    ScriptedLlm::start(move |call| {
        if is_persona(call, persona) && call.nth < times {
            reply.clone()
        } else {
            well_behaved(call)
        }
    })
    .await
    .unwrap()
}

struct Ran {
    outcome: Result<Value, Failure>,
    steps: Vec<StepStatus>,
    took: Duration,
}

impl Ran {
    fn step(&self, name: &str) -> &StepStatus {
        self.steps
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no step {name} in {:?}", self.steps))
    }

    fn failure(&self) -> &Failure {
        self.outcome
            .as_ref()
            .err()
            .unwrap_or_else(|| panic!("expected a failure, got {:?}", self.outcome))
    }

    fn result(&self) -> &Value {
        self.outcome
            .as_ref()
            .unwrap_or_else(|f| panic!("expected a result, got {f:?}"))
    }
}

async fn run_fleet(fleet: &PipelineWorkerSpec, input: &Value) -> Ran {
    let ctx = testing::context(fleet, 1);
    let started = Instant::now();
    let outcome = run_with_key(input, &ctx, Some(KEY.into())).await;
    Ran {
        outcome,
        steps: ctx.progress.snapshot(),
        took: started.elapsed(),
    }
}

#[test]
fn steps_are_expand_then_one_review_per_persona_in_order_then_aggregate() {
    let spec: ConsensusSpec = serde_json::from_value(json!({
        "baseUrl": "http://llm/v1", "model": "m",
        "personas": [{"name": "user", "prompt": "p"}, {"name": "skeptic", "prompt": "p"}],
    }))
    .unwrap();
    assert_eq!(
        steps(Some(&spec)),
        ["expand", "review:user", "review:skeptic", "aggregate"]
    );
}

#[tokio::test]
async fn valid_answers_become_a_decision_that_cites_every_persona() {
    let llm = ScriptedLlm::start(|call| {
        if is_persona(call, "skeptic") {
            review("revise", 5.0, "The TTL hides stale invoices")
        } else if is_persona(call, "user") {
            review("revise", 6.0, "Faster pages would help")
        } else {
            well_behaved(call)
        }
    })
    .await
    .unwrap();
    let fleet = fleet(&llm, &["skeptic", "operator", "user"], json!({}));
    let ran = run_fleet(&fleet, &input()).await;

    let result = ran.result();
    assert_eq!(result["decision"], "revise");
    assert_eq!(result["score"], 6.3);
    assert_eq!(result["agreement"], 0.33);
    assert_eq!(
        result["votes"],
        json!({"approve": 1, "revise": 2, "reject": 0})
    );
    assert_eq!(result["title"], "Cache billing reads");
    let summary = result["summary"].as_str().unwrap();
    for cited in [
        "skeptic (revise, 5/10): The TTL hides stale invoices.",
        "operator (approve, 8/10): Looks sound.",
        "user (revise, 6/10): Faster pages would help.",
    ] {
        assert!(summary.contains(cited), "{summary}");
    }
    let personas: Vec<&str> = result["reviews"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["persona"].as_str().unwrap())
        .collect();
    assert_eq!(personas, ["skeptic", "operator", "user"]);
    assert_eq!(
        result["reviews"][0]["concerns"],
        json!(["The TTL hides stale invoices (concern)"])
    );

    for step in &ran.steps {
        assert_eq!(
            (step.phase, step.attempts),
            (StepPhase::Succeeded, 1),
            "{step:?}"
        );
    }
    let seen = llm.seen();
    assert_eq!(seen.len(), 4, "one expand and three reviews");
    for s in &seen {
        assert_eq!(s.path, "/v1/chat/completions");
        assert_eq!(s.authorization.as_deref(), Some("Bearer sk-test-123"));
        assert_eq!(s.call.body["model"], "test-model");
        assert_eq!(s.call.body["temperature"], 0.3);
        let shape = if is_expand(&s.call) {
            &schema::PROPOSAL
        } else {
            &schema::REVIEW
        };
        assert_eq!(
            s.call.body["response_format"],
            json!({"type": "json_schema", "json_schema": {
                "name": shape.name, "strict": true, "schema": shape.json_schema().to_value(),
            }})
        );
    }
    // The reviewers read the expanded proposal and the context.
    let review_request = &llm.seen_with(&persona_marker("user"))[0].call;
    assert!(review_request.last_message().contains("5 minute TTL"));
    assert!(
        review_request
            .last_message()
            .contains("Reads are 90% of load.")
    );
}

#[test]
fn the_key_is_trimmed_and_a_blank_key_is_none() {
    assert_eq!(api_key(Some("sk-1\n".into())).as_deref(), Some("sk-1"));
    assert_eq!(api_key(Some(" \n".into())), None);
    assert_eq!(api_key(None), None);
}

#[tokio::test]
async fn no_key_sends_no_authorization() {
    let llm = ScriptedLlm::start(well_behaved).await.unwrap();
    let fleet = fleet(&llm, &["a"], json!({}));
    let ctx = testing::context(&fleet, 1);
    run_with_key(&input(), &ctx, None).await.unwrap();
    assert!(llm.seen().iter().all(|s| s.authorization.is_none()));
}

#[tokio::test]
async fn malformed_json_gets_a_repair_request_and_the_repair_is_used() {
    let garbled = "Sure! Here is my review: {\"verdict\": approve";
    let llm = llm_where("skeptic", 1, Reply::Text(garbled.into())).await;
    let fleet = fleet(&llm, &["skeptic", "user"], json!({}));
    let ran = run_fleet(&fleet, &input()).await;

    assert_eq!(ran.result()["decision"], "approve");
    let calls = llm.seen_with(&persona_marker("skeptic"));
    assert_eq!(calls.len(), 2, "the answer and its repair");
    let repair = &calls[1].call;
    assert!(
        repair
            .last_message()
            .starts_with("That answer cannot be used: the answer is not valid JSON"),
        "{}",
        repair.last_message()
    );
    assert_eq!(
        repair.body["messages"][2],
        json!({"role": "assistant", "content": garbled})
    );
    // A repaired answer is still the first try.
    assert_eq!(ran.step("review:skeptic").attempts, 1);
}

#[tokio::test]
async fn output_still_invalid_after_the_repair_counts_as_a_failed_try() {
    // Valid JSON, wrong schema: the score is out of range, twice.
    let out_of_range = json!({"verdict": "approve", "score": 42, "summary": "Great"});
    let llm = llm_where("skeptic", 2, Reply::Json(out_of_range)).await;
    let fleet = fleet(&llm, &["skeptic"], json!({}));
    let ran = run_fleet(&fleet, &input()).await;

    assert_eq!(ran.result()["decision"], "approve");
    let calls = llm.seen_with(&persona_marker("skeptic"));
    assert_eq!(calls.len(), 3, "answer, repair, then a fresh try");
    assert!(calls[1].call.last_message().contains("\"score\" is 42"));
    // The fresh try starts the conversation over.
    assert_eq!(calls[2].call.body["messages"].as_array().unwrap().len(), 2);
    let step = ran.step("review:skeptic");
    assert_eq!(step.attempts, 2);
    assert!(
        step.message
            .as_deref()
            .unwrap()
            .contains("still after a repair request"),
        "{step:?}"
    );
}

#[tokio::test]
async fn a_rate_limit_is_retried_after_the_wait_the_server_asks_for() {
    let rate_limited = Reply::TooManyRequests {
        retry_after_seconds: 1,
    };
    let llm = llm_where("skeptic", 1, rate_limited).await;
    let fleet = fleet(&llm, &["skeptic", "user"], json!({}));
    let ran = run_fleet(&fleet, &input()).await;

    assert_eq!(ran.result()["decision"], "approve");
    let calls = llm.seen_with(&persona_marker("skeptic"));
    assert_eq!(calls.len(), 2);
    let waited = calls[1].received - calls[0].received;
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured; waited {waited:?}"
    );
    let step = ran.step("review:skeptic");
    assert_eq!(step.attempts, 2);
    assert!(
        step.message.as_deref().unwrap().contains("HTTP 429"),
        "{step:?}"
    );
    assert_eq!(ran.step("review:user").attempts, 1);
}

#[tokio::test]
async fn server_errors_until_retries_run_out_fail_the_job_retryably_naming_the_persona() {
    let llm = llm_where(
        "operator",
        usize::MAX,
        Reply::Status(500, "upstream exploded".into()),
    )
    .await;
    let fleet = fleet(
        &llm,
        &["skeptic", "operator"],
        json!({"maxRetriesPerPersona": 2, "initialBackoffMillis": 100, "backoffMultiplier": 3.0}),
    );
    let ran = run_fleet(&fleet, &input()).await;

    let failure = ran.failure();
    assert_eq!(
        (failure.reason, failure.retryable),
        (FailureReason::PersonaFailed, true)
    );
    assert!(
        failure.message.starts_with(
            "persona operator: gave up after 3 tries; the last: HTTP 500: upstream exploded"
        ),
        "{}",
        failure.message
    );
    let calls = llm.seen_with(&persona_marker("operator"));
    assert_eq!(calls.len(), 3, "the first try and two retries");
    // Exponential backoff: 100 ms, then 300 ms.
    let gaps: Vec<Duration> = calls
        .windows(2)
        .map(|w| w[1].received - w[0].received)
        .collect();
    assert!(gaps[0] >= Duration::from_millis(100), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(300), "{gaps:?}");
    let step = ran.step("review:operator");
    assert_eq!((step.phase, step.attempts), (StepPhase::Failed, 3));
    assert_eq!(ran.step("aggregate").phase, StepPhase::Pending);
}

#[tokio::test]
async fn a_client_error_is_not_retried() {
    let refused = Reply::Status(404, r#"{"error": {"message": "model not found"}}"#.into());
    let llm = llm_where("skeptic", usize::MAX, refused).await;
    let fleet = fleet(&llm, &["skeptic"], json!({}));
    let ran = run_fleet(&fleet, &input()).await;

    let failure = ran.failure();
    assert_eq!(
        (failure.reason, failure.retryable),
        (FailureReason::PersonaFailed, true)
    );
    assert!(
        failure.message.starts_with("persona skeptic: HTTP 404:"),
        "{}",
        failure.message
    );
    assert!(
        failure.message.contains("model not found"),
        "{}",
        failure.message
    );
    assert!(
        failure.message.contains("not retried"),
        "{}",
        failure.message
    );
    assert_eq!(llm.seen_with(&persona_marker("skeptic")).len(), 1);
}

#[tokio::test]
async fn a_refused_key_fails_the_job_for_good_and_the_stopped_siblings_say_why() {
    let refused = Reply::Status(401, r#"{"error": {"message": "invalid api key"}}"#.into());
    let llm = ScriptedLlm::start(move |call| {
        if is_persona(call, "skeptic") {
            refused.clone()
        } else if is_expand(call) {
            well_behaved(call)
        } else {
            // The siblings are still thinking when the skeptic is refused.
            Reply::after(Duration::from_secs(10), well_behaved(call))
        }
    })
    .await
    .unwrap();
    let fleet = fleet(&llm, &["skeptic", "operator", "user"], json!({}));
    let ran = run_fleet(&fleet, &input()).await;

    let failure = ran.failure();
    assert_eq!(
        (failure.reason, failure.retryable),
        (FailureReason::ModelUnauthorized, false)
    );
    assert!(
        failure.message.starts_with("persona skeptic: HTTP 401:"),
        "{}",
        failure.message
    );
    assert!(
        failure.message.contains("invalid api key") && failure.message.contains("apiKeySecretRef"),
        "{}",
        failure.message
    );
    assert_eq!(
        llm.seen_with(&persona_marker("skeptic")).len(),
        1,
        "no try can fix a wrong key"
    );
    assert!(ran.took < Duration::from_secs(5), "{:?}", ran.took);
    let skeptic = ran.step("review:skeptic");
    assert_eq!((skeptic.phase, skeptic.attempts), (StepPhase::Failed, 1));
    for sibling in ["review:operator", "review:user"] {
        let step = ran.step(sibling);
        assert_eq!(step.phase, StepPhase::Failed, "{step:?}");
        assert_eq!(
            step.message.as_deref(),
            Some(
                "stopped: persona skeptic failed for good (ModelUnauthorized), so this review was not finished"
            ),
            "{step:?}"
        );
    }
    assert_eq!(ran.step("aggregate").phase, StepPhase::Pending);
}

#[tokio::test]
async fn a_server_that_echoes_the_key_never_gets_it_into_the_failure() {
    let echo = Reply::Status(401, format!(r#"{{"error": "bad key Bearer {KEY}"}}"#));
    let llm = ScriptedLlm::start(move |_| echo.clone()).await.unwrap();
    let fleet = fleet(&llm, &["skeptic"], json!({}));
    let failure = run_fleet(&fleet, &input()).await.failure().clone();
    assert!(!failure.message.contains(KEY), "{}", failure.message);
    assert!(
        failure.message.contains("<redacted>"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn a_model_api_on_loopback_is_refused_unless_the_fleet_allows_it() {
    let llm = ScriptedLlm::start(well_behaved).await.unwrap();
    let mut fleet = fleet(&llm, &["skeptic"], json!({}));
    fleet.egress = None;
    let failure = run_fleet(&fleet, &input()).await.failure().clone();
    assert_eq!(
        (failure.reason, failure.retryable),
        (FailureReason::AddressRefused, false)
    );
    assert!(failure.message.contains("loopback"), "{}", failure.message);
    assert!(llm.seen().is_empty(), "the server was called");
}

#[tokio::test]
async fn a_forbidden_expand_is_unauthorized_too() {
    let llm = ScriptedLlm::start(|call| {
        if is_expand(call) {
            Reply::Status(403, "forbidden".into())
        } else {
            well_behaved(call)
        }
    })
    .await
    .unwrap();
    let fleet = fleet(&llm, &["skeptic"], json!({}));
    let ran = run_fleet(&fleet, &input()).await;

    let failure = ran.failure();
    assert_eq!(
        (failure.reason, failure.retryable),
        (FailureReason::ModelUnauthorized, false)
    );
    assert!(
        failure.message.starts_with("expand: HTTP 403: forbidden"),
        "{}",
        failure.message
    );
    assert_eq!(llm.seen().len(), 1);
}

fn asked_for_a_schema(seen: &drover_testkit::llm::Seen) -> bool {
    seen.call.body["response_format"]["type"] == "json_schema"
}

/// A server that answers a JSON Schema `response_format` the way OpenAI
/// answers it for a model without structured outputs.
fn refuses_schemas(call: &Call) -> Reply {
    if call.body["response_format"]["type"] == "json_schema" {
        Reply::Status(
            400,
            json!({"error": {"message": "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.", "param": "response_format"}}).to_string(),
        )
    } else {
        well_behaved(call)
    }
}

#[tokio::test]
async fn a_server_without_schemas_gets_json_mode_after_one_refusal_for_the_whole_fleet() {
    let llm = ScriptedLlm::start(refuses_schemas).await.unwrap();
    let refusing = fleet(&llm, &["skeptic", "operator", "user"], json!({}));

    let first = run_fleet(&refusing, &input()).await;
    assert_eq!(first.result()["decision"], "approve");
    let seen = llm.seen();
    let formats: Vec<Value> = seen
        .iter()
        .map(|s| s.call.body["response_format"]["type"].clone())
        .collect();
    assert_eq!(
        formats,
        [
            "json_schema",
            "json_object",
            "json_object",
            "json_object",
            "json_object"
        ],
        "one refused schema, the same expand again in JSON mode, then JSON mode for every review"
    );
    assert_eq!(seen[0].call.body["messages"], seen[1].call.body["messages"]);
    // The fallback is no retry: no step counts a second try.
    for step in &first.steps {
        assert_eq!(step.attempts, 1, "{step:?}");
    }

    // The next Job of the fleet does not ask again.
    let second = run_fleet(&refusing, &input()).await;
    assert_eq!(second.result()["decision"], "approve");
    assert_eq!(llm.seen().len(), 5 + 4);
    assert_eq!(
        llm.seen().iter().filter(|s| asked_for_a_schema(s)).count(),
        1
    );

    // Another fleet, with a server that takes schemas, still gets them.
    let other = ScriptedLlm::start(well_behaved).await.unwrap();
    let other_fleet = fleet(&other, &["skeptic"], json!({}));
    run_fleet(&other_fleet, &input()).await.result();
    assert!(other.seen().iter().all(asked_for_a_schema));
}

#[tokio::test]
async fn a_400_about_something_else_is_no_reason_to_drop_the_schema() {
    let llm = ScriptedLlm::start(|_| Reply::Status(400, "messages: too long".into()))
        .await
        .unwrap();
    let fleet = fleet(&llm, &["skeptic"], json!({}));
    let ran = run_fleet(&fleet, &input()).await;

    let failure = ran.failure();
    assert_eq!(failure.reason, FailureReason::ExpandFailed);
    assert!(
        failure.message.contains("HTTP 400: messages: too long"),
        "{}",
        failure.message
    );
    let seen = llm.seen();
    assert_eq!(seen.len(), 1);
    assert!(asked_for_a_schema(&seen[0]));
}

#[tokio::test]
async fn a_request_that_times_out_is_retried() {
    let too_late = Reply::after(Duration::from_secs(4), review("approve", 8.0, "Late"));
    let llm = llm_where("skeptic", 1, too_late).await;
    let fleet = fleet(&llm, &["skeptic"], json!({"requestTimeoutSeconds": 1}));
    let ran = run_fleet(&fleet, &input()).await;

    assert_eq!(ran.result()["decision"], "approve");
    let calls = llm.seen_with(&persona_marker("skeptic"));
    assert_eq!(calls.len(), 2);
    let gave_up_after = calls[1].received - calls[0].received;
    assert!(
        gave_up_after >= Duration::from_secs(1) && gave_up_after < Duration::from_secs(3),
        "the client should give up after the 1 s request timeout, not wait for the 4 s answer: {gave_up_after:?}"
    );
    let step = ran.step("review:skeptic");
    assert_eq!(step.attempts, 2);
    assert!(
        step.message.as_deref().unwrap().contains("no answer from"),
        "{step:?}"
    );
}

#[tokio::test]
async fn a_slow_persona_does_not_hold_the_others_back() {
    const SLOW: Duration = Duration::from_millis(2000);
    const FAST: Duration = Duration::from_millis(700);
    let llm = ScriptedLlm::start(|call| {
        if is_expand(call) {
            well_behaved(call)
        } else if is_persona(call, "slow") {
            Reply::after(SLOW, review("revise", 6.0, "Slowly considered"))
        } else {
            Reply::after(FAST, well_behaved(call))
        }
    })
    .await
    .unwrap();
    let names = ["slow", "a", "b", "c"];
    let fleet = fleet(&llm, &names, json!({}));
    let ran = run_fleet(&fleet, &input()).await;

    // Three approvals at 8 and a revise at 6: a mean of 7.5 approves.
    assert_eq!(ran.result()["decision"], "approve");
    // One after another the reviews would take 2 + 3 * 0.7 = 4.1 s.
    eprintln!(
        "4 reviews (one {SLOW:?}, three {FAST:?}) took {:?} in all",
        ran.took
    );
    assert!(ran.took >= SLOW, "{:?}", ran.took);
    assert!(
        ran.took < SLOW + FAST,
        "reviews did not run in parallel: {:?}",
        ran.took
    );
    let slow = &llm.seen_with(&persona_marker("slow"))[0];
    for name in ["a", "b", "c"] {
        let fast = &llm.seen_with(&persona_marker(name))[0];
        assert!(
            fast.received < slow.received + FAST,
            "{name} was asked only after the slow persona"
        );
        assert!(
            fast.answered.unwrap() < slow.answered.unwrap(),
            "{name} finished after the slow persona"
        );
    }
}

#[tokio::test]
async fn a_persona_failing_for_good_ends_the_attempt_without_waiting_for_the_rest() {
    let llm = ScriptedLlm::start(|call| {
        if is_persona(call, "broken") {
            Reply::Status(404, "model not found".into())
        } else if is_persona(call, "slow") {
            Reply::after(Duration::from_secs(10), well_behaved(call))
        } else {
            well_behaved(call)
        }
    })
    .await
    .unwrap();
    let fleet = fleet(&llm, &["slow", "broken"], json!({}));
    let ran = run_fleet(&fleet, &input()).await;

    assert_eq!(ran.failure().reason, FailureReason::PersonaFailed);
    assert!(ran.failure().message.starts_with("persona broken:"));
    assert!(ran.took < Duration::from_secs(5), "{:?}", ran.took);
    let slow = ran.step("review:slow");
    assert_eq!(slow.phase, StepPhase::Failed, "{slow:?}");
    assert_eq!(
        slow.message.as_deref(),
        Some(
            "stopped: persona broken failed for good (PersonaFailed), so this review was not finished"
        )
    );
}

#[tokio::test]
async fn an_expand_that_fails_for_good_reviews_nothing() {
    let llm = ScriptedLlm::start(|call| {
        if is_expand(call) {
            Reply::Status(503, "overloaded".into())
        } else {
            well_behaved(call)
        }
    })
    .await
    .unwrap();
    let fleet = fleet(
        &llm,
        &["skeptic"],
        json!({"maxRetriesPerPersona": 1, "initialBackoffMillis": 0}),
    );
    let ran = run_fleet(&fleet, &input()).await;

    let failure = ran.failure();
    assert_eq!(
        (failure.reason, failure.retryable),
        (FailureReason::ExpandFailed, true)
    );
    assert!(
        failure.message.contains("HTTP 503: overloaded"),
        "{}",
        failure.message
    );
    assert_eq!(llm.seen().len(), 2);
    assert_eq!(ran.step("review:skeptic").phase, StepPhase::Pending);
}

#[tokio::test]
async fn invalid_input_fails_for_good_without_a_model_call() {
    let llm = ScriptedLlm::start(well_behaved).await.unwrap();
    let fleet = fleet(&llm, &["skeptic"], json!({}));
    for input in [json!({"text": "  "}), json!({"idea": "x"})] {
        let ran = run_fleet(&fleet, &input).await;
        let failure = ran.failure();
        assert_eq!(
            (failure.reason, failure.retryable),
            (FailureReason::InvalidInput, false)
        );
        assert!(
            failure
                .message
                .starts_with("spec.input is not valid consensus input")
        );
    }
    assert!(llm.seen().is_empty());
}

#[tokio::test]
async fn a_base_url_that_is_no_url_fails_without_retries() {
    let fleet = testing::fleet(json!({"pipeline": "consensus", "consensus": {
        "baseUrl": "http://no such host/v1", "model": "m",
        "personas": [{"name": "a", "prompt": "p"}],
        "maxRetriesPerPersona": 3, "initialBackoffMillis": 1000,
    }}));
    let ran = run_fleet(&fleet, &input()).await;
    let failure = ran.failure();
    assert_eq!(failure.reason, FailureReason::ExpandFailed);
    assert!(
        failure
            .message
            .contains("cannot build a request to http://no such host/v1/chat/completions"),
        "{}",
        failure.message
    );
    assert!(
        failure.message.contains("not retried"),
        "{}",
        failure.message
    );
    assert_eq!(ran.step("expand").attempts, 1);
    assert!(ran.took < Duration::from_secs(1), "{:?}", ran.took);
}
