//! The consensus pipeline: `expand` asks the model to turn the Job's idea
//! into a full proposal, one `review:<persona>` step per persona reviews it
//! (all at once, each with its own retries and backoff), and `aggregate`
//! turns the reviews into a decision. Every request carries its answer's
//! JSON Schema; every answer is still checked against it, and an invalid
//! one gets one repair request, after which it counts as a failed try. A
//! refused key fails the Job for good; a persona that fails for good stops
//! its siblings, and each stopped step says why.
//!
//! The pure parts (prompts, schemas, backoff, the decision rule) are in
//! their own modules; this one only runs the steps.

mod aggregate;
mod client;
mod prompts;
mod retry;
mod schema;
#[cfg(test)]
mod tests;

use drover_crds::FailureReason;
use drover_crds::Pipeline;
use drover_crds::input::ConsensusInput;
use drover_crds::pipeline_worker::ConsensusSpec;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;

use self::aggregate::PersonaReview;
use self::client::{CallError, ChatClient, ChatMessage};
use self::retry::RetryPolicy;
use self::schema::Shape;
use super::{Context, Failure};
use crate::egress;
use crate::progress::Progress;

pub const EXPAND: &str = "expand";
pub const AGGREGATE: &str = "aggregate";

/// Where the operator puts the API key from `apiKeySecretRef` (see
/// `drover_operator::deployment`); it is never part of the spec.
pub const API_KEY_ENV: &str = "DROVER_LLM_API_KEY";

/// The step that runs one persona's review.
pub fn review_step(persona: &str) -> String {
    format!("review:{persona}")
}

/// `expand`, `review:<persona>` for each persona in spec order, `aggregate`.
pub fn steps(spec: Option<&ConsensusSpec>) -> Vec<String> {
    let personas = spec.map(|s| s.personas.as_slice()).unwrap_or_default();
    std::iter::once(EXPAND.to_owned())
        .chain(personas.iter().map(|p| review_step(&p.name)))
        .chain(std::iter::once(AGGREGATE.to_owned()))
        .collect()
}

pub async fn run(input: &Value, ctx: &Context<'_>) -> Result<Value, Failure> {
    run_with_key(input, ctx, api_key(std::env::var(API_KEY_ENV).ok())).await
}

/// A Secret made from a file often ends in a newline, which is no part of
/// the key (and not valid in a header); a blank key is no key.
fn api_key(raw: Option<String>) -> Option<String> {
    raw.map(|key| key.trim().to_owned())
        .filter(|key| !key.is_empty())
}

async fn run_with_key(
    input: &Value,
    ctx: &Context<'_>,
    api_key: Option<String>,
) -> Result<Value, Failure> {
    let input = parse(input)?;
    let Some(spec) = ctx.fleet.consensus.as_ref() else {
        return Err(Failure {
            reason: FailureReason::ConsensusNotConfigured,
            message: "the PipelineWorker has no spec.consensus (model, base URL, personas)".into(),
            retryable: false,
        });
    };
    let policy = egress::policy(ctx.fleet);
    egress::check_url(&spec.base_url, &policy).map_err(|why| Failure {
        reason: FailureReason::AddressRefused,
        message: format!("spec.consensus.baseUrl {why}"),
        retryable: false,
    })?;
    let client = ChatClient::new(spec, api_key, &policy).map_err(|message| Failure {
        reason: FailureReason::HttpClientUnavailable,
        message,
        retryable: true,
    })?;
    let caller = Caller {
        client: &client,
        policy: RetryPolicy::from_spec(spec),
        progress: &ctx.progress,
    };

    let expand = prompts::expand(&input);
    let proposal = ctx
        .progress
        .step(EXPAND, async {
            caller
                .ask(EXPAND, &expand, &schema::PROPOSAL, schema::parse_proposal)
                .await
                .map_err(|why| why.failure(FailureReason::ExpandFailed, EXPAND))
        })
        .await?;

    // All reviews at once. The first persona to fail for good ends the
    // attempt: it tells the others, which stop and say so in their step.
    let (failed_tx, failed_rx) = watch::channel(None::<(String, Failure)>);
    let outcomes = futures::future::join_all(spec.personas.iter().map(|persona| {
        let step = review_step(&persona.name);
        let messages = prompts::review(persona, &proposal, input.context.as_deref());
        let (caller, failed_tx, mut failed_rx) = (&caller, &failed_tx, failed_rx.clone());
        async move {
            let who = format!("persona {}", persona.name);
            let review = ctx
                .progress
                .step(&step, async {
                    tokio::select! {
                        answer = caller.ask(&step, &messages, &schema::REVIEW, schema::parse_review) => {
                            answer.map_err(|why| why.failure(FailureReason::PersonaFailed, &who))
                        }
                        first = failed_rx.wait_for(Option::is_some) => {
                            let cause = first.ok().and_then(|f| f.clone());
                            Err(stopped_by(cause.as_ref().map(|(name, f)| (name.as_str(), f))))
                        }
                    }
                })
                .await
                .inspect_err(|failure| {
                    // Only the first failure counts; stopped siblings send nothing.
                    failed_tx.send_if_modified(|first| {
                        let is_first = first.is_none() && !failure.message.starts_with(STOPPED);
                        if is_first {
                            *first = Some((persona.name.clone(), failure.clone()));
                        }
                        is_first
                    });
                })?;
            Ok::<_, Failure>(PersonaReview {
                persona: persona.name.clone(),
                review,
            })
        }
    }))
    .await;
    if let Some((_, first)) = failed_tx.borrow().clone() {
        return Err(first);
    }
    let reviews = outcomes.into_iter().collect::<Result<Vec<_>, Failure>>()?;

    ctx.progress
        .step(AGGREGATE, async {
            let decision = aggregate::decide(&reviews);
            tracing::info!(
                decision = decision.verdict.as_str(),
                score = decision.score,
                agreement = decision.agreement,
                "consensus reached"
            );
            Ok(aggregate::result(&proposal, &reviews, &decision))
        })
        .await
}

/// How a stopped sibling's step message begins.
const STOPPED: &str = "stopped: ";

/// The failure a review step ends with when another persona (its name and
/// failure) failed first.
fn stopped_by(cause: Option<(&str, &Failure)>) -> Failure {
    let (reason, retryable, message) = match cause {
        Some((persona, cause)) => (
            cause.reason,
            cause.retryable,
            format!(
                "{STOPPED}persona {persona} failed for good ({}), so this review was not finished",
                cause.reason
            ),
        ),
        None => (
            FailureReason::PersonaFailed,
            true,
            format!("{STOPPED}another persona failed for good"),
        ),
    };
    Failure {
        reason,
        message,
        retryable,
    }
}

/// Why [`Caller::ask`] gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
enum GaveUp {
    /// The API refused the key (401, 403).
    Unauthorized(String),
    /// Tries ran out, or the error is one no try fixes.
    Failed(String),
}

impl GaveUp {
    /// The attempt's failure; `who` is the step or persona, `reason` the
    /// one for anything but a refused key.
    fn failure(self, reason: FailureReason, who: &str) -> Failure {
        match self {
            GaveUp::Unauthorized(why) => Failure {
                reason: FailureReason::ModelUnauthorized,
                message: format!(
                    "{who}: {why} (the model API refused the key: check the fleet's \
                     apiKeySecretRef and its Secret; not retried, no attempt can fix it)"
                ),
                retryable: false,
            },
            GaveUp::Failed(why) => Failure {
                reason,
                message: format!("{who}: {why}"),
                retryable: true,
            },
        }
    }
}

/// Asks the model with one step's retry policy.
struct Caller<'a> {
    client: &'a ChatClient,
    policy: RetryPolicy,
    progress: &'a Progress,
}

impl Caller<'_> {
    /// Tries up to `policy.tries()` times; returns the parsed answer, or why
    /// it gave up.
    async fn ask<T>(
        &self,
        step: &str,
        messages: &[ChatMessage],
        shape: &Shape,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<T, GaveUp> {
        let tries = self.policy.tries();
        let mut last: Option<CallError> = None;
        for number in 1..=tries {
            if let Some(previous) = &last {
                let server_asked = match previous {
                    CallError::Retryable { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let wait = self.policy.wait_before(number - 1, server_asked);
                self.progress.retried(
                    step,
                    &format!(
                        "try {number} of {tries} after {} ms: {}",
                        wait.as_millis(),
                        previous.message()
                    ),
                );
                tokio::time::sleep(wait).await;
            }
            match self.try_once(step, messages, shape, parse).await {
                Ok(value) => return Ok(value),
                Err(CallError::Unauthorized { message }) => {
                    return Err(GaveUp::Unauthorized(message));
                }
                Err(CallError::Permanent { message } | CallError::SchemaRefused { message }) => {
                    return Err(GaveUp::Failed(format!(
                        "{message} (not retried: only 408, 429, 5xx, timeouts, lost connections and invalid output are)"
                    )));
                }
                Err(error) => {
                    tracing::info!(
                        step,
                        try_number = number,
                        tries,
                        error = error.message(),
                        "model try failed"
                    );
                    last = Some(error);
                }
            }
        }
        let last = last.as_ref().map_or("", CallError::message);
        let plural = if tries == 1 { "try" } else { "tries" };
        Err(GaveUp::Failed(format!(
            "gave up after {tries} {plural}; the last: {last}"
        )))
    }

    /// One try: a request, and a repair request if the answer does not fit
    /// the schema.
    async fn try_once<T>(
        &self,
        step: &str,
        messages: &[ChatMessage],
        shape: &Shape,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<T, CallError> {
        let answer = self.client.complete(step, messages, shape).await?;
        let problem = match parse(&answer) {
            Ok(value) => return Ok(value),
            Err(problem) => problem,
        };
        tracing::info!(step, problem = %problem, "invalid model output; asking for a repair");
        let repair = prompts::repair(messages, &answer, &problem);
        let repaired = self.client.complete(step, &repair, shape).await?;
        parse(&repaired).map_err(|problem| CallError::Retryable {
            message: format!("invalid output, still after a repair request: {problem}"),
            retry_after: None,
        })
    }
}

/// The operator checked the input before queueing; this guards against a
/// Job edited by hand or a newer operator.
fn parse(input: &Value) -> Result<ConsensusInput, Failure> {
    let invalid = |message: String| Failure {
        reason: FailureReason::InvalidInput,
        message,
        retryable: false,
    };
    drover_crds::input::validate(Pipeline::Consensus, input).map_err(|e| invalid(e.to_string()))?;
    ConsensusInput::deserialize(input)
        .map_err(|e| invalid(format!("spec.input is not valid consensus input: {e}")))
}
