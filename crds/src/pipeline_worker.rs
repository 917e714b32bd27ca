//! The `PipelineWorker` resource: a fleet of workers that run one pipeline and
//! pull their Jobs from one Pub/Sub subscription.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EnvFromSource, EnvVar, ResourceRequirements, SecretKeySelector, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pub/Sub resource ids: 3-255 characters, starting with a letter, and never
/// starting with `goog` (reserved by Google).
const PUBSUB_ID_RULE: &str =
    "self.matches('^[A-Za-z][A-Za-z0-9._~%+-]{2,254}$') && !self.startsWith('goog')";
const PUBSUB_ID_MESSAGE: &str = "must be a Pub/Sub id: 3-255 letters, digits or ._~%+-, starting with a letter and not with 'goog'";

/// A fleet of workers that run one pipeline. The operator turns it into a
/// Deployment scaled on the depth of its queue, plus the ServiceAccount, RBAC
/// and Service the workers need, and keeps the Pub/Sub topic and subscription
/// in place.
// Several printer columns share a `type_`; clippy reads that as a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "drover.dev",
    version = "v1alpha1",
    kind = "PipelineWorker",
    plural = "pipelineworkers",
    shortname = "pw",
    category = "drover",
    namespaced,
    status = "PipelineWorkerStatus",
    doc = "A fleet of queue-driven workers that run one pipeline (see `kubectl explain pipelineworker.spec`).",
    scale(
        spec_replicas_path = ".spec.scaling.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Pipeline", type_ = "string", json_path = ".spec.pipeline"),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas"
    ),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Queued",
        type_ = "integer",
        json_path = ".status.backlog.queued"
    ),
    printcolumn(
        name = "Running",
        type_ = "integer",
        json_path = ".status.backlog.running"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = kube::core::Rule::new("self.pipeline != 'consensus' || has(self.consensus)")
    .message("spec.consensus is required when pipeline is consensus (it names the model and the personas)"))]
#[serde(rename_all = "camelCase")]
pub struct PipelineWorkerSpec {
    /// The pipeline every worker of this fleet runs: `consensus` (LLM expand,
    /// persona reviews, aggregation), `assembly` (podcast episode audio) or
    /// `sleep` (a diagnostic pipeline for load and fault tests).
    pub pipeline: Pipeline,

    /// Container image of the worker. Defaults to the image the operator was
    /// configured with (`--worker-image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Compute resources of the worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels a worker pod must match to be scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Tolerations of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// ServiceAccount the workers run as. Defaults to one the operator creates
    /// with exactly the permissions a worker needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Extra environment variables for the worker container. The worker reads
    /// its settings from this object, not from env; use this for things such
    /// as proxy settings or credentials a library reads from env. The names the
    /// operator sets itself (`DROVER_*`, `PUBSUB_*`, and the storage and model
    /// credential variables) are refused: they say who a worker is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = kube::core::Rule::new("self.all(e, !e.name.startsWith('DROVER_') && !e.name.startsWith('PUBSUB_'))")
        .message("DROVER_* and PUBSUB_* variables are set by the operator (they say who a worker is and where it pulls from); spec.env may not set them"))]
    pub env: Option<Vec<EnvVar>>,

    /// Extra environment sources (ConfigMaps, Secrets) for the worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_from: Option<Vec<EnvFromSource>>,

    /// The Pub/Sub topic Jobs are published to and the subscription workers pull from.
    pub queue: QueueSpec,

    /// How many Jobs one worker replica runs at once. Default 1.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 1000))]
    pub concurrency: i32,

    /// How the fleet is scaled on queue depth.
    #[serde(default)]
    pub scaling: ScalingSpec,

    /// Step and Job time limits.
    #[serde(default)]
    pub timeouts: TimeoutsSpec,

    /// How failed attempts are retried.
    #[serde(default)]
    pub retry: RetrySpec,

    /// Seconds after a Job finishes (Succeeded, Failed or Cancelled) before it
    /// is deleted. Unset keeps finished Jobs; a Job may override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,

    /// Private addresses this fleet's workers may still reach on a Job's
    /// behalf (Job input URLs, the model API). Unset: none, so loopback,
    /// link-local (the cloud metadata server) and the cluster's Pod and
    /// Service ranges are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressSpec>,

    /// Settings of the consensus pipeline; required when `pipeline` is `consensus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consensus: Option<ConsensusSpec>,

    /// Settings of the assembly pipeline; defaults apply when unset. The
    /// render pipeline stores its outputs with `assembly.storage` too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assembly: Option<AssemblySpec>,

    /// Settings of the render pipeline (an outside provider); required when
    /// `pipeline` is `render`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render: Option<RenderSpec>,

    // --- admission (see docs/architecture.md, "Admission") ---
    /// Bounds on what the operator hands this fleet: per-key concurrency, a
    /// rate, and the priorities its Jobs may claim. Unset: no bounds beyond
    /// the fleet's capacity (`maxReplicas x concurrency` plus a prefetch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
}

/// What the operator admits to a fleet beyond its capacity.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("!has(self.minPriority) || !has(self.maxPriority) || self.minPriority <= self.maxPriority")
    .message("minPriority must not be greater than maxPriority"))]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// At most this many Jobs with one `spec.concurrencyKey` are published
    /// and unfinished at once; the others wait (`KeyConcurrencyLimit`).
    /// Unset: no per-key bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub per_key_concurrency: Option<i32>,

    /// At most this many Jobs are published per minute (a token bucket
    /// holding one second's worth, for a downstream API's quota); the others
    /// wait (`RateLimited`). Retries count, republishes of lost messages do
    /// not. Unset: no rate bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub jobs_per_minute: Option<i32>,

    /// Lowest `spec.priority` a Job counts with; a lower one is raised to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1000000, max = 1000000))]
    pub min_priority: Option<i32>,

    /// Highest `spec.priority` a Job counts with; a higher one is lowered to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1000000, max = 1000000))]
    pub max_priority: Option<i32>,
}

fn default_concurrency() -> i32 {
    1
}

/// The pipelines a worker can run.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Pipeline {
    /// LLM consensus: expand the input, review it with several personas in
    /// parallel, aggregate their verdicts.
    Consensus,
    /// Podcast episode assembly: fetch, decode, resample, normalize, mix, encode, upload.
    Assembly,
    /// Diagnostic: sleeps for the input's duration and can be told to fail.
    Sleep,
    /// An outside provider renders the output (an HTTP API that takes
    /// minutes): submit, wait without holding a worker, store the output.
    Render,
}

impl Pipeline {
    pub fn as_str(self) -> &'static str {
        match self {
            Pipeline::Consensus => "consensus",
            Pipeline::Assembly => "assembly",
            Pipeline::Sleep => "sleep",
            Pipeline::Render => "render",
        }
    }
}

/// Where the Jobs of this fleet are queued.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// Google Cloud project of the topic and subscription. Defaults to the
    /// operator's `--pubsub-project`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z][a-z0-9-]{4,28}[a-z0-9]$')")
        .message("must be a Google Cloud project id: 6-30 lowercase letters, digits or hyphens, starting with a letter"))]
    #[schemars(length(max = 30))]
    pub project: Option<String>,

    /// Topic id (not the full path) that the operator publishes Jobs to.
    #[x_kube(validation = kube::core::Rule::new(PUBSUB_ID_RULE).message(PUBSUB_ID_MESSAGE))]
    #[schemars(length(max = 255))]
    pub topic: String,

    /// Subscription id (not the full path) that the workers pull from.
    #[x_kube(validation = kube::core::Rule::new(PUBSUB_ID_RULE).message(PUBSUB_ID_MESSAGE))]
    #[schemars(length(max = 255))]
    pub subscription: String,

    /// When true (the default) the operator creates the topic, the
    /// subscription and the dead-letter topic if they are missing; when false
    /// it only checks that they exist and reports what is missing.
    #[serde(default = "default_true")]
    pub create: bool,

    /// Seconds a worker has to acknowledge a message before Pub/Sub
    /// redelivers it; the worker extends it while a Job runs. Default 60.
    #[serde(default = "default_ack_deadline")]
    #[schemars(range(min = 10, max = 600))]
    pub ack_deadline_seconds: i32,

    /// Topic id that receives a message for every Job that fails for good
    /// (MaxAttemptsExceeded). Unset: no dead-letter messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(PUBSUB_ID_RULE).message(PUBSUB_ID_MESSAGE))]
    #[schemars(length(max = 255))]
    pub dead_letter_topic: Option<String>,
}

fn default_true() -> bool {
    true
}

fn default_ack_deadline() -> i32 {
    60
}

/// How the fleet is scaled.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("self.minReplicas <= self.maxReplicas")
    .message("minReplicas must not be greater than maxReplicas"))]
#[x_kube(validation = kube::core::Rule::new("self.mode != 'Manual' || has(self.replicas)")
    .message("replicas is required when mode is Manual"))]
#[serde(rename_all = "camelCase")]
pub struct ScalingSpec {
    /// `Auto` (the default) scales on queue depth; `Manual` keeps `replicas`
    /// (set it with `kubectl scale pw NAME --replicas N`).
    #[serde(default)]
    pub mode: ScalingMode,

    /// Fewest replicas. 0 (the default) lets an idle fleet scale to zero.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,

    /// Most replicas. Default 10.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,

    /// Backlog (queued, due for retry and running Jobs) one replica is sized
    /// for. Defaults to `concurrency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub jobs_per_replica: Option<i32>,

    /// Seconds the backlog must have wanted fewer replicas before the fleet
    /// shrinks; scaling up is immediate. Default 300.
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: i32,

    /// Replica count in `Manual` mode; the target of the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            mode: ScalingMode::default(),
            min_replicas: 0,
            max_replicas: default_max_replicas(),
            jobs_per_replica: None,
            scale_down_stabilization_seconds: default_stabilization(),
            replicas: None,
        }
    }
}

fn default_max_replicas() -> i32 {
    10
}

fn default_stabilization() -> i32 {
    300
}

/// Who decides the replica count.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ScalingMode {
    /// The operator scales on queue depth.
    #[default]
    Auto,
    /// `spec.scaling.replicas` is kept as set.
    Manual,
}

/// Time limits. A step or Job that runs longer fails with a retryable timeout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("self.stepSeconds <= self.jobSeconds")
    .message("stepSeconds must not be greater than jobSeconds"))]
#[serde(rename_all = "camelCase")]
pub struct TimeoutsSpec {
    /// Longest one step may run, in seconds. Default 600.
    #[serde(default = "default_step_seconds")]
    #[schemars(range(min = 1))]
    pub step_seconds: i64,

    /// Longest one attempt of a Job may run, in seconds. Default 3600. Worker
    /// pods get this much grace to finish their Jobs when they are stopped.
    #[serde(default = "default_job_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub job_seconds: i64,
}

impl Default for TimeoutsSpec {
    fn default() -> Self {
        Self {
            step_seconds: default_step_seconds(),
            job_seconds: default_job_seconds(),
        }
    }
}

fn default_step_seconds() -> i64 {
    600
}

fn default_job_seconds() -> i64 {
    3600
}

/// Retries of failed attempts, owned by the operator: after a retryable
/// failure the Job waits `initialBackoffSeconds * backoffMultiplier^(attempt-1)`
/// (at most `maxBackoffSeconds`) and is queued again.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("self.initialBackoffSeconds <= self.maxBackoffSeconds")
    .message("initialBackoffSeconds must not be greater than maxBackoffSeconds"))]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Attempts a Job gets before it fails with MaxAttemptsExceeded. Default 3.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: i32,

    /// Wait before the second attempt, in seconds. Default 5.
    #[serde(default = "default_initial_backoff")]
    #[schemars(range(min = 0))]
    pub initial_backoff_seconds: i64,

    /// Factor the wait grows by with each further attempt. Default 2.
    #[serde(default = "default_backoff_multiplier")]
    #[schemars(range(min = 1.0, max = 10.0))]
    pub backoff_multiplier: f64,

    /// Longest wait between attempts, in seconds. Default 300.
    #[serde(default = "default_max_backoff")]
    #[schemars(range(min = 0))]
    pub max_backoff_seconds: i64,
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            initial_backoff_seconds: default_initial_backoff(),
            backoff_multiplier: default_backoff_multiplier(),
            max_backoff_seconds: default_max_backoff(),
        }
    }
}

fn default_max_attempts() -> i32 {
    3
}

fn default_initial_backoff() -> i64 {
    5
}

fn default_backoff_multiplier() -> f64 {
    2.0
}

fn default_max_backoff() -> i64 {
    300
}

/// Settings of the consensus pipeline.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("self.personas.all(p, self.personas.exists_one(q, q.name == p.name))")
    .message("persona names must be unique"))]
#[serde(rename_all = "camelCase")]
pub struct ConsensusSpec {
    /// Base URL of an OpenAI-compatible chat-completions API, for example
    /// `https://api.openai.com/v1` or `http://vllm.models:8000/v1`.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^https?://.+')")
        .message("must be an http:// or https:// URL"))]
    #[schemars(length(max = 2048))]
    pub base_url: String,

    /// Model name passed to the API.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,

    /// Sampling temperature. Default 0.2.
    #[serde(default = "default_temperature")]
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: f64,

    /// The reviewers. Each becomes a `review:<name>` step.
    #[schemars(length(min = 1, max = 16))]
    pub personas: Vec<Persona>,

    /// Secret key holding the API key, sent as a bearer token. Unset: no key
    /// (local servers such as Ollama or llama.cpp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeySelector>,

    /// Tries per persona after the first, for 429, 5xx, timeouts, lost
    /// connections and output that is still invalid after a repair request;
    /// other 4xx answers are not retried. The `expand` step retries the same
    /// way. Default 3.
    #[serde(default = "default_persona_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub max_retries_per_persona: i32,

    /// Wait before a persona's first retry, in milliseconds; each further
    /// retry waits `backoffMultiplier` times longer (at most 60 s, or longer
    /// when a 429 answer asks for it with Retry-After). Default 1000.
    #[serde(default = "default_persona_backoff_ms")]
    #[schemars(range(min = 0, max = 60000))]
    pub initial_backoff_millis: i64,

    /// Factor a persona's wait between tries grows by. Default 2.
    #[serde(default = "default_backoff_multiplier")]
    #[schemars(range(min = 1.0, max = 10.0))]
    pub backoff_multiplier: f64,

    /// Longest one model request may take, in seconds. Default 120.
    #[serde(default = "default_request_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub request_timeout_seconds: i64,
}

fn default_temperature() -> f64 {
    0.2
}

fn default_persona_retries() -> i32 {
    3
}

fn default_persona_backoff_ms() -> i64 {
    1000
}

fn default_request_timeout() -> i64 {
    120
}

/// One reviewer of the consensus pipeline.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Persona {
    /// Short name, used in step names (`review:<name>`) and in the summary.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$')")
        .message("must be 1-40 lowercase letters, digits or hyphens"))]
    #[schemars(length(max = 40))]
    pub name: String,

    /// What this reviewer cares about; becomes its system prompt.
    #[schemars(length(min = 1, max = 4000))]
    pub prompt: String,
}

/// Settings of the render pipeline: an outside provider's HTTP API.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RenderSpec {
    /// URL a worker POSTs the Job's `input.request` to (JSON).
    #[schemars(length(min = 1, max = 2048))]
    pub submit_url: String,
    /// URL a worker GETs for a request's status; `{requestId}` is replaced
    /// by the provider's id of the request.
    #[schemars(length(min = 1, max = 2048))]
    pub status_url: String,
    /// Secret key holding the provider's token, sent as
    /// `Authorization: Bearer <token>`. Unset: no credentials are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret_ref: Option<SecretKeySelector>,
    /// JSON pointer to the request id in the submit answer (and in a
    /// callback). Default `/id`.
    #[serde(default = "default_request_id_pointer")]
    pub request_id_pointer: String,
    /// JSON pointer to the request's status in a status answer or a
    /// callback. Default `/status`.
    #[serde(default = "default_status_pointer")]
    pub status_pointer: String,
    /// JSON pointer to the output URL in a status answer or a callback.
    /// Default `/outputUrl`.
    #[serde(default = "default_output_pointer")]
    pub output_url_pointer: String,
    /// Status words that mean the output is ready. Default `succeeded`.
    #[serde(default = "default_succeeded_values")]
    pub succeeded_values: Vec<String>,
    /// Status words that mean the request failed for good. Default `failed`.
    #[serde(default = "default_failed_values")]
    pub failed_values: Vec<String>,
    /// Whether the provider is given a callback URL (in the submit body's
    /// `callbackUrl`) when the operator serves callbacks. False: the
    /// operator only polls. Default true.
    #[serde(default = "default_true")]
    pub callbacks: bool,
    /// Seconds a step waits for a callback before a worker asks the
    /// provider's status API; also the interval between polls. Default 60.
    #[serde(default = "default_poll_after")]
    #[schemars(range(min = 1, max = 86400))]
    pub poll_after_seconds: i64,
    /// Seconds after the submit at which a request that has not finished
    /// fails the Job as ProviderTimeout. Default 3600.
    #[serde(default = "default_wait_timeout")]
    #[schemars(range(min = 1, max = 604800))]
    pub wait_timeout_seconds: i64,
    /// Where outputs are stored, a prefix under `assembly.storage.allowedPrefixes`
    /// (`s3://renders/out/`, `file:///tmp/renders/`): each Job's output goes
    /// to `<outputPrefix><namespace>/<name>-<uid><extension>`.
    #[schemars(length(min = 1, max = 1024))]
    pub output_prefix: String,
}

fn default_request_id_pointer() -> String {
    "/id".into()
}

fn default_status_pointer() -> String {
    "/status".into()
}

fn default_output_pointer() -> String {
    "/outputUrl".into()
}

fn default_succeeded_values() -> Vec<String> {
    vec!["succeeded".into()]
}

fn default_failed_values() -> Vec<String> {
    vec!["failed".into()]
}

fn default_poll_after() -> i64 {
    60
}

fn default_wait_timeout() -> i64 {
    3600
}

/// Settings of the assembly pipeline.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AssemblySpec {
    /// Sample rate everything is resampled to, in Hz. Default 44100.
    #[serde(default = "default_sample_rate")]
    #[schemars(range(min = 8000, max = 192000))]
    pub sample_rate: i32,

    /// Loudness target used when a Job's template sets none, in LUFS. Default -16.
    #[serde(default = "default_loudness")]
    #[schemars(range(min = -40.0, max = -5.0))]
    pub default_loudness_lufs: f64,

    /// True-peak ceiling, in dBTP. Default -1.
    #[serde(default = "default_true_peak")]
    #[schemars(range(min = -9.0, max = 0.0))]
    pub true_peak_ceiling_dbtp: f64,

    /// Where Jobs may read their audio and write their episodes.
    #[serde(default)]
    pub storage: StorageSpec,

    /// Credentials for `s3://` URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,

    /// Credentials for `gs://` URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsStorage>,
}

fn default_sample_rate() -> i32 {
    44100
}

fn default_loudness() -> f64 {
    -16.0
}

fn default_true_peak() -> f64 {
    -1.0
}

/// The storage a fleet's Jobs may use.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// URL prefixes every input and output URL of a Job must lie under, for
    /// example `s3://media/`, `gs://brand/jingles/` or `https://cdn.example/`
    /// (presigned query strings are kept). A prefix ends at a path segment:
    /// `s3://media` allows `s3://media/a.wav`, not `s3://media-old/a.wav`.
    /// `file://` prefixes must lie under `file:///tmp/`, the one volume a
    /// worker mounts for data. Empty (the default): Jobs may use no storage.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(max = 1024)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(p, p.matches('^(s3|gs)://[a-z0-9][^/]*') || p.matches('^https?://[^/@?#]+') || p.startsWith('file:///tmp/'))")
        .message("each prefix must be an s3://, gs:// or https:// URL naming a bucket or host, or a file:///tmp/ path"))]
    pub allowed_prefixes: Vec<String>,

    /// Largest input object a worker fetches, in bytes; a larger one fails
    /// the Job (ObjectTooLarge) before it fills the worker's disk or memory.
    /// Default 2147483648 (2 GiB).
    #[serde(default = "default_max_object_bytes")]
    #[schemars(range(min = 1))]
    pub max_object_bytes: i64,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            allowed_prefixes: Vec::new(),
            max_object_bytes: default_max_object_bytes(),
        }
    }
}

fn default_max_object_bytes() -> i64 {
    2 << 30
}

/// Exceptions to the outbound guard.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EgressSpec {
    /// IP ranges (`127.0.0.1/32`, `10.8.0.0/16`, `fd00::/8`) workers may reach
    /// although they are loopback, link-local or cluster-internal: a model
    /// server in the pod or an in-cluster mirror. Every other private address
    /// stays refused, on the address a name resolves to, redirects included.
    #[serde(default)]
    #[schemars(length(max = 32), inner(length(max = 64)))]
    #[x_kube(validation = kube::core::Rule::new("self.all(c, isCIDR(c))")
        .message("each entry must be an IP range such as 127.0.0.1/32 or fd00::/8"))]
    pub allowed_cidrs: Vec<String>,
}

/// S3 (or S3-compatible) storage access.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    /// Region of the buckets.
    pub region: String,
    /// Endpoint of an S3-compatible service (MinIO, R2); unset for AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Secret key holding the access key id.
    pub access_key_id_secret_ref: SecretKeySelector,
    /// Secret key holding the secret access key.
    pub secret_access_key_secret_ref: SecretKeySelector,
}

/// Google Cloud Storage access.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GcsStorage {
    /// Secret key holding a service account key (JSON). Unset: the pod's
    /// workload identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_key_secret_ref: Option<SecretKeySelector>,
}

/// What the operator observed of the fleet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PipelineWorkerStatus {
    /// `Ready` (the fleet can take Jobs), `QueueReady` (topic and subscription
    /// exist) and `Degraded` (something needs a person; the reason says what).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// Worker pods that exist.
    #[serde(default)]
    pub replicas: i32,

    /// Worker pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Replicas the scaler wants now.
    #[serde(default)]
    pub desired_replicas: i32,

    /// Label selector of the worker pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Jobs of this fleet that are not finished.
    #[serde(default)]
    pub backlog: Backlog,

    /// When the replica count last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Unfinished Jobs by phase.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Backlog {
    /// Jobs waiting to be claimed (Pending or Queued).
    #[serde(default)]
    pub queued: i32,
    /// Jobs a worker is running.
    #[serde(default)]
    pub running: i32,
    /// Jobs waiting for their next attempt.
    #[serde(default)]
    pub backoff: i32,
}
