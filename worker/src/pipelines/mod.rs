//! The pipelines a worker runs. Each has named steps (they become
//! `status.steps`) and returns a small JSON result or a failure that says
//! whether another attempt may succeed.

pub mod assembly;
pub mod consensus;
pub mod render;
pub mod sleep;

use drover_crds::{ExternalWait, FailureReason, Pipeline, PipelineWorkerSpec};
use serde_json::Value;

use crate::progress::Progress;

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Written to `status.error.reason`.
    pub reason: FailureReason,
    pub message: String,
    pub retryable: bool,
}

/// Who is running: for effects and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub namespace: String,
    pub name: String,
    /// The Job's uid: a recreated Job under the same name is another Job.
    pub uid: String,
    pub attempt: i32,
}

/// What a pipeline gets for one attempt besides its input.
pub struct Context<'a> {
    pub attempt: Attempt,
    /// The fleet's spec as the worker saw it when the attempt started:
    /// model and personas, sample rate, storage settings.
    pub fleet: &'a PipelineWorkerSpec,
    /// Where the pipeline runs its named steps (see [`Progress::step`]).
    pub progress: Progress,
    /// What a step that waits for an outside provider needs.
    pub external: External,
}

/// A waiting step's side of the attempt: where the provider calls back, and
/// the request this attempt already made, when it resumes after a wait.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct External {
    /// The Job's callback URL (from its message), when the operator serves
    /// callbacks and the fleet wants them.
    pub callback_url: Option<String>,
    /// The request of this very attempt, when it waited already
    /// (`status.external` of the same attempt).
    pub resume: Option<ExternalWait>,
}

/// How one run of an attempt ends when it does not fail.
#[derive(Clone, Debug, PartialEq)]
pub enum Done {
    /// The attempt produced its result.
    Finished(Value),
    /// A step handed work to an outside provider: the Job waits, and a
    /// worker picks the attempt up again when the provider is done.
    Wait(ExternalWait),
}

/// The step names of a fleet's pipeline, in order; they become
/// `status.steps`, so every step a pipeline runs must be listed here.
pub fn steps(fleet: &PipelineWorkerSpec) -> Vec<String> {
    match fleet.pipeline {
        Pipeline::Sleep => vec![sleep::STEP.to_owned()],
        Pipeline::Consensus => consensus::steps(fleet.consensus.as_ref()),
        Pipeline::Assembly => assembly::STEPS.iter().map(|s| (*s).to_owned()).collect(),
        Pipeline::Render => render::STEPS.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Runs the pipeline for one attempt, to its result or to a wait.
pub async fn run(input: &Value, ctx: &Context<'_>) -> Result<Done, Failure> {
    match ctx.fleet.pipeline {
        Pipeline::Sleep => sleep::run(input, ctx).await.map(Done::Finished),
        Pipeline::Consensus => consensus::run(input, ctx).await.map(Done::Finished),
        Pipeline::Assembly => assembly::run(input, ctx).await.map(Done::Finished),
        Pipeline::Render => render::run(input, ctx).await,
    }
}

/// Contexts for pipeline unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::stats::Stats;

    /// A fleet spec from its JSON form, with the required queue filled in.
    pub fn fleet(mut spec: Value) -> PipelineWorkerSpec {
        spec["queue"] = serde_json::json!({"topic": "t", "subscription": "s"});
        serde_json::from_value(spec).expect("a valid fleet spec")
    }

    pub fn context(fleet: &PipelineWorkerSpec, attempt: i32) -> Context<'_> {
        Context {
            attempt: Attempt {
                namespace: "ns".into(),
                name: "job".into(),
                uid: "uid-1".into(),
                attempt,
            },
            fleet,
            progress: Progress::new(
                fleet.pipeline,
                steps(fleet),
                Duration::from_secs(fleet.timeouts.step_seconds.unsigned_abs()),
                Arc::new(Stats::default()),
            ),
            external: External::default(),
        }
    }
}
