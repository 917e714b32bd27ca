//! The `Job` resource: one unit of work for a PipelineWorker fleet.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// One unit of work. The operator validates it, publishes it to its worker's
/// queue and retries it; a worker claims it, runs its pipeline and reports
/// every step here.
// Several printer columns share a `type_`; clippy reads that as a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "drover.dev",
    version = "v1alpha1",
    kind = "Job",
    plural = "jobs",
    shortname = "pjob",
    category = "drover",
    namespaced,
    status = "JobStatus",
    doc = "One unit of work for a PipelineWorker fleet (see `kubectl explain pjob.spec`).",
    printcolumn(name = "Worker", type_ = "string", json_path = ".spec.worker"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Attempt", type_ = "integer", json_path = ".status.attempt"),
    printcolumn(name = "Progress", type_ = "integer", json_path = ".status.progress"),
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(
        name = "Waiting",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Admitted\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = kube::core::Rule::new("self.worker == oldSelf.worker")
    .message("spec.worker is immutable: create a new Job to run on another worker"))]
#[x_kube(validation = kube::core::Rule::new("self.input == oldSelf.input")
    .message("spec.input is immutable: create a new Job to run other input"))]
#[x_kube(validation = kube::core::Rule::new("!oldSelf.cancel || self.cancel || self.retries > oldSelf.retries")
    .message("spec.cancel cannot be undone once set, except by a retry (raising spec.retries)"))]
#[x_kube(validation = kube::core::Rule::new("self.retries >= oldSelf.retries")
    .message("spec.retries only grows"))]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    /// Name of the PipelineWorker (in this namespace) that runs this Job.
    #[schemars(length(min = 1, max = 253))]
    pub worker: String,

    /// The pipeline's input, checked against the pipeline's input schema
    /// before the Job is queued. Keep it small: large data goes by URL.
    #[schemars(schema_with = "json_object_schema")]
    pub input: serde_json::Value,

    /// A key the submitter chooses to recognise retries of the same request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub idempotency_key: Option<String>,

    /// Overrides the worker's `retry.maxAttempts` for this Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: Option<i32>,

    /// Overrides the worker's `timeouts.jobSeconds` for this Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: Option<i64>,

    /// Overrides the worker's `ttlSecondsAfterFinished` for this Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,

    /// Set to true to stop the Job: a queued Job is not run, a running one is
    /// stopped by its worker. Cannot be undone.
    #[serde(default)]
    pub cancel: bool,

    /// Raise by one to run a Failed or Cancelled Job again with a fresh
    /// attempt budget (`kubectl drover retry`); its attempt numbers go on and
    /// its Events stay. Raising it also lets `cancel` go back to false.
    /// Default 0.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub retries: i32,

    // --- admission (see docs/architecture.md, "Admission") ---
    /// Higher runs first among this worker's waiting Jobs. Default 0; the
    /// worker may bound it (`limits.minPriority`, `limits.maxPriority`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1000000, max = 1000000))]
    pub priority: Option<i32>,

    /// Who this Job is for (a tenant, a team): Jobs of the same priority
    /// are shared out in turn between fairness keys, first come first
    /// served inside one. Unset: all such Jobs share one key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub fairness_key: Option<String>,

    /// What this Job uses that bounds how many may run at once (an API
    /// account, a database): at most the worker's `limits.perKeyConcurrency`
    /// Jobs with one key are out at a time. Unset: no such bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub concurrency_key: Option<String>,
}

impl Job {
    /// The phase of this version of the Job (Pending before any status).
    pub fn phase(&self) -> JobPhase {
        self.status.as_ref().map(|s| s.phase).unwrap_or_default()
    }
}

/// The apiserver keeps any JSON object here; the pipeline checks its shape.
fn json_object_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Where a Job stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum JobPhase {
    /// Created; not yet published.
    #[default]
    Pending,
    /// Published to the worker's topic; waiting for a worker.
    Queued,
    /// A worker has claimed it and runs it.
    Running,
    /// A step handed work to an outside provider: no worker holds the Job
    /// until the provider calls back or a poll is due (`status.external`).
    Waiting,
    /// An attempt failed with a retryable error; waiting for the next attempt.
    Backoff,
    /// Finished with a result.
    Succeeded,
    /// Finished without a result; `error` says why.
    Failed,
    /// Stopped because `spec.cancel` was set.
    Cancelled,
}

impl JobPhase {
    pub const ALL: [JobPhase; 8] = [
        JobPhase::Pending,
        JobPhase::Queued,
        JobPhase::Running,
        JobPhase::Waiting,
        JobPhase::Backoff,
        JobPhase::Succeeded,
        JobPhase::Failed,
        JobPhase::Cancelled,
    ];

    /// Succeeded, Failed and Cancelled: nothing runs any more. Only a retry
    /// someone asks for (`spec.retries`) moves a Failed or Cancelled Job again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobPhase::Succeeded | JobPhase::Failed | JobPhase::Cancelled
        )
    }
}

/// What is known about a Job's progress.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// Pending, Queued, Running, Waiting, Backoff, Succeeded, Failed or Cancelled.
    #[serde(default)]
    pub phase: JobPhase,

    /// The current attempt, from 1. Messages of older attempts are skipped.
    #[serde(default)]
    pub attempt: i32,

    /// Conditions for `kubectl wait`: `Complete` and `Failed`, mirroring batch Jobs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// When the current attempt was published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at: Option<Time>,

    /// When a worker started the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,

    /// When the Job reached Succeeded, Failed or Cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,

    /// When a Job in Backoff is queued again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Time>,

    /// Pub/Sub message id of the current attempt's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,

    /// The worker pod that holds the Job while it runs. A claim not renewed
    /// within `leaseSeconds` is expired and the Job is queued again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,

    /// The pipeline's steps, in order, with their own progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepStatus>,

    /// Overall progress, 0-100.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub progress: i32,

    /// The pipeline's result, when small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "json_object_schema")]
    pub result: Option<serde_json::Value>,

    /// URL of the result, when it is stored elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_ref: Option<String>,

    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,

    /// Times a draining worker handed the Job back unfinished; past a bound
    /// the Job fails (`ReleasedTooOften`) instead of starting over forever.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub releases: i32,

    /// The `spec.retries` the operator has acted on.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: i32,

    /// Attempts spent before the last retry: the attempt budget
    /// (`maxAttempts`) counts from here.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt_base: i32,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The outside provider a step handed work to: its request, what the
    /// provider last said, and the callback received, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalWait>,
}

/// A step's request at an outside provider (see docs/pipelines.md, "render").
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalWait {
    /// The step that waits.
    pub step: String,
    /// The attempt that submitted the request: a later attempt submits anew.
    pub attempt: i32,
    /// The provider's id of the request.
    pub request_id: String,
    /// When the request was submitted; `waitTimeoutSeconds` counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<Time>,
    /// When the Job last began to wait (after the submit or a poll);
    /// `pollAfterSeconds` counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<Time>,
    /// Times a worker asked the provider's status API.
    #[serde(default)]
    pub polls: i32,
    /// What the provider last said of the request (its own status word).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_status: Option<String>,
    /// The output the provider named, when it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_url: Option<String>,
    /// When the provider's callback for this wait was received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_at: Option<Time>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

impl JobStatus {
    /// Attempts counted against the budget: those since the last retry.
    pub fn attempts_used(&self) -> i32 {
        self.attempt.saturating_sub(self.attempt_base)
    }

    /// Whether `spec_retries` asks for a retry this status has not had yet.
    pub fn retry_requested(&self, spec_retries: i32) -> bool {
        spec_retries > self.retries
    }
}

/// A worker's hold on a running Job.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    /// This claim's own identity, new for every claim: every later write of
    /// the attempt is fenced on it and on the Job's uid, so a recreated Job
    /// or a restarted container never takes another claim's writes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Name of the worker pod.
    pub pod: String,
    /// When the worker last renewed the claim.
    pub renew_time: Time,
    /// Seconds after `renewTime` at which the claim expires.
    pub lease_seconds: i32,
}

/// One step of a pipeline run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    /// Step name, for example `expand`, `review:security` or `normalize`.
    pub name: String,
    /// Pending, Running, Waiting, Succeeded, Failed or Skipped.
    pub phase: StepPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// When the step started.
    pub started_at: Option<Time>,
    /// When the step finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Tries the step took (a step may retry inside one Job attempt).
    #[serde(default)]
    pub attempts: i32,
    /// Step progress, 0-100.
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub progress: i32,
    /// A short human note: what the step is doing or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where a step stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepPhase {
    Pending,
    Running,
    /// Handed to an outside provider; no worker runs it meanwhile.
    Waiting,
    Succeeded,
    Failed,
    Skipped,
}

/// Why an attempt failed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobError {
    /// A machine-readable reason in CamelCase, such as InvalidInput,
    /// WorkerNotFound, StepTimeout, WorkerLost or MaxAttemptsExceeded.
    pub reason: String,
    /// What happened, for a person.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}
