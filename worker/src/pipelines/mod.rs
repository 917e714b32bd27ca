//! The pipelines a worker runs. Each has named steps (they become
//! `status.steps`) and returns a small JSON result or a failure that says
//! whether another attempt may succeed.

pub mod sleep;

use drover_crds::Pipeline;
use serde_json::Value;

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// CamelCase, for `status.error.reason`.
    pub reason: &'static str,
    pub message: String,
    pub retryable: bool,
}

/// Who is running: for effects and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub namespace: String,
    pub name: String,
    pub attempt: i32,
}

/// The step names of a pipeline, in order.
pub fn steps(pipeline: Pipeline) -> Vec<String> {
    match pipeline {
        Pipeline::Sleep => vec![sleep::STEP.to_owned()],
        Pipeline::Consensus | Pipeline::Assembly => Vec::new(),
    }
}

/// Runs the whole pipeline for one attempt.
pub async fn run(pipeline: Pipeline, input: &Value, attempt: &Attempt) -> Result<Value, Failure> {
    match pipeline {
        Pipeline::Sleep => sleep::run(input, attempt).await,
        Pipeline::Consensus | Pipeline::Assembly => Err(Failure {
            reason: "PipelineUnavailable",
            message: format!(
                "this drover-worker build does not run the {} pipeline yet",
                pipeline.as_str()
            ),
            retryable: false,
        }),
    }
}
