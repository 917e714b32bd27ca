//! Typed test objects: `PipelineWorkerBuilder::sleep("w").queue("t", "s").build()`
//! and `JobBuilder::new("j", "w").input(json!({..})).build()`. Every setting a
//! test does not name keeps the default a user would get, because the builder
//! starts from the same serde defaults as the API.

use drover_crds::pipeline_worker::{
    AssemblySpec, ConsensusSpec, EgressSpec, Persona, RenderSpec, ScalingMode,
};
use drover_crds::{Job, JobSpec, Pipeline, PipelineWorker, PipelineWorkerSpec};
use k8s_openapi::api::core::v1::SecretKeySelector;
use serde_json::{Value, json};

/// Builds a [`PipelineWorker`] one setting at a time.
#[derive(Clone, Debug)]
pub struct PipelineWorkerBuilder {
    pw: PipelineWorker,
}

impl PipelineWorkerBuilder {
    /// A fleet of `pipeline` named `name`, queued on topic `name` and
    /// subscription `name-sub`, everything else defaulted.
    pub fn new(name: &str, pipeline: Pipeline) -> Self {
        let spec: PipelineWorkerSpec = serde_json::from_value(json!({
            "pipeline": pipeline,
            "queue": {"topic": name, "subscription": format!("{name}-sub")},
        }))
        .expect("a pipeline and a queue are all a spec needs");
        Self {
            pw: PipelineWorker::new(name, spec),
        }
    }

    /// A fleet of the diagnostic sleep pipeline.
    pub fn sleep(name: &str) -> Self {
        Self::new(name, Pipeline::Sleep)
    }

    /// A consensus fleet asking `model` at `base_url`, with no personas yet.
    pub fn consensus(name: &str, base_url: &str, model: &str) -> Self {
        let consensus: ConsensusSpec = serde_json::from_value(json!({
            "baseUrl": base_url, "model": model, "personas": [],
        }))
        .expect("a base URL, a model and personas are all consensus needs");
        let mut builder = Self::new(name, Pipeline::Consensus);
        builder.pw.spec.consensus = Some(consensus);
        builder
    }

    /// An assembly fleet with the default output settings.
    pub fn assembly(name: &str) -> Self {
        let assembly: AssemblySpec =
            serde_json::from_value(json!({})).expect("every assembly setting has a default");
        let mut builder = Self::new(name, Pipeline::Assembly);
        builder.pw.spec.assembly = Some(assembly);
        builder
    }

    /// A render fleet whose provider takes requests at `submit_url` and
    /// answers their status at `status_url` (with `{requestId}`), storing
    /// outputs under `output_prefix` (which it also allows as storage).
    pub fn render(name: &str, submit_url: &str, status_url: &str, output_prefix: &str) -> Self {
        let render: RenderSpec = serde_json::from_value(json!({
            "submitUrl": submit_url, "statusUrl": status_url, "outputPrefix": output_prefix,
        }))
        .expect("the URLs and an output prefix are all render needs");
        let mut builder = Self::assembly(name).allowed_prefixes(&[output_prefix]);
        builder.pw.spec.pipeline = Pipeline::Render;
        builder.pw.spec.render = Some(render);
        builder
    }

    /// Places the object in `namespace`.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.pw.metadata.namespace = Some(namespace.to_owned());
        self
    }

    /// The topic Jobs are published to and the subscription workers pull from.
    pub fn queue(mut self, topic: &str, subscription: &str) -> Self {
        self.pw.spec.queue.topic = topic.to_owned();
        self.pw.spec.queue.subscription = subscription.to_owned();
        self
    }

    /// Where Jobs that gave up (and foreign messages) go.
    pub fn dead_letter_topic(mut self, topic: &str) -> Self {
        self.pw.spec.queue.dead_letter_topic = Some(topic.to_owned());
        self
    }

    /// The subscription's ack deadline.
    pub fn ack_deadline_seconds(mut self, seconds: i32) -> Self {
        self.pw.spec.queue.ack_deadline_seconds = seconds;
        self
    }

    /// `queue.create: false`: the topic and subscription must exist already.
    pub fn existing_queue(mut self) -> Self {
        self.pw.spec.queue.create = false;
        self
    }

    /// Jobs per replica at once.
    pub fn concurrency(mut self, jobs: i32) -> Self {
        self.pw.spec.concurrency = jobs;
        self
    }

    /// Automatic scaling between `min` and `max` replicas.
    pub fn replicas(mut self, min: i32, max: i32) -> Self {
        self.pw.spec.scaling.min_replicas = min;
        self.pw.spec.scaling.max_replicas = max;
        self
    }

    /// At least `min` replicas, the default maximum.
    pub fn min_replicas(mut self, min: i32) -> Self {
        self.pw.spec.scaling.min_replicas = min;
        self
    }

    /// At most `max` replicas, the default minimum.
    pub fn max_replicas(mut self, max: i32) -> Self {
        self.pw.spec.scaling.max_replicas = max;
        self
    }

    /// The backlog one replica is meant to carry.
    pub fn jobs_per_replica(mut self, jobs: i32) -> Self {
        self.pw.spec.scaling.jobs_per_replica = Some(jobs);
        self
    }

    /// How long an idle fleet waits before it scales down.
    pub fn scale_down_stabilization_seconds(mut self, seconds: i32) -> Self {
        self.pw.spec.scaling.scale_down_stabilization_seconds = seconds;
        self
    }

    /// Manual scaling: `replicas` workers, whatever the backlog.
    pub fn manual_replicas(mut self, replicas: i32) -> Self {
        self.pw.spec.scaling.mode = ScalingMode::Manual;
        self.pw.spec.scaling.replicas = Some(replicas);
        self
    }

    /// Attempts per Job before it fails.
    pub fn max_attempts(mut self, attempts: i32) -> Self {
        self.pw.spec.retry.max_attempts = attempts;
        self
    }

    /// The first retry's wait.
    pub fn initial_backoff_seconds(mut self, seconds: i64) -> Self {
        self.pw.spec.retry.initial_backoff_seconds = seconds;
        self
    }

    /// The retry back-off: the first wait, its growth per attempt, its cap.
    pub fn backoff(mut self, initial_seconds: i64, multiplier: f64, max_seconds: i64) -> Self {
        self.pw.spec.retry.initial_backoff_seconds = initial_seconds;
        self.pw.spec.retry.backoff_multiplier = multiplier;
        self.pw.spec.retry.max_backoff_seconds = max_seconds;
        self
    }

    /// The step and the whole-Job timeouts.
    pub fn timeouts(mut self, step_seconds: i64, job_seconds: i64) -> Self {
        self.pw.spec.timeouts.step_seconds = step_seconds;
        self.pw.spec.timeouts.job_seconds = job_seconds;
        self
    }

    /// How long finished Jobs are kept.
    pub fn ttl_seconds_after_finished(mut self, seconds: i64) -> Self {
        self.pw.spec.ttl_seconds_after_finished = Some(seconds);
        self
    }

    /// The worker image.
    pub fn image(mut self, image: &str) -> Self {
        self.pw.spec.image = Some(image.to_owned());
        self
    }

    /// Adds a consensus persona (a consensus fleet only).
    pub fn persona(mut self, name: &str, prompt: &str) -> Self {
        if let Some(consensus) = self.pw.spec.consensus.as_mut() {
            consensus.personas.push(Persona {
                name: name.to_owned(),
                prompt: prompt.to_owned(),
            });
        }
        self
    }

    /// How often a consensus persona's call is retried, and the first wait.
    pub fn persona_retries(mut self, retries: i32, initial_backoff_millis: i64) -> Self {
        if let Some(consensus) = self.pw.spec.consensus.as_mut() {
            consensus.max_retries_per_persona = retries;
            consensus.initial_backoff_millis = initial_backoff_millis;
        }
        self
    }

    /// The consensus API key, from `key` of Secret `secret`.
    pub fn api_key_secret(mut self, secret: &str, key: &str) -> Self {
        if let Some(consensus) = self.pw.spec.consensus.as_mut() {
            consensus.api_key_secret_ref = Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: None,
            });
        }
        self
    }

    /// The assembly output: sample rate, loudness target and true-peak
    /// ceiling (an assembly fleet only).
    pub fn assembly_output(
        mut self,
        sample_rate: i32,
        loudness_lufs: f64,
        true_peak_dbtp: f64,
    ) -> Self {
        if let Some(assembly) = self.pw.spec.assembly.as_mut() {
            assembly.sample_rate = sample_rate;
            assembly.default_loudness_lufs = loudness_lufs;
            assembly.true_peak_ceiling_dbtp = true_peak_dbtp;
        }
        self
    }

    /// The storage URL prefixes the fleet's Jobs may use (an assembly fleet only).
    pub fn allowed_prefixes(mut self, prefixes: &[&str]) -> Self {
        if let Some(assembly) = self.pw.spec.assembly.as_mut() {
            assembly.storage.allowed_prefixes = prefixes.iter().map(|p| (*p).to_owned()).collect();
        }
        self
    }

    /// Private IP ranges the fleet's workers may reach anyway (a local model server).
    pub fn egress_allowed(mut self, cidrs: &[&str]) -> Self {
        self.pw.spec.egress = Some(EgressSpec {
            allowed_cidrs: cidrs.iter().map(|c| (*c).to_owned()).collect(),
        });
        self
    }

    /// Any other setting, on the typed spec.
    pub fn with(mut self, change: impl FnOnce(&mut PipelineWorkerSpec)) -> Self {
        change(&mut self.pw.spec);
        self
    }

    /// The PipelineWorker.
    pub fn build(self) -> PipelineWorker {
        self.pw
    }
}

/// Builds a [`Job`] one setting at a time.
#[derive(Clone, Debug)]
pub struct JobBuilder {
    job: Job,
}

impl JobBuilder {
    /// A Job named `name` for the fleet `worker`, with empty input.
    pub fn new(name: &str, worker: &str) -> Self {
        let spec: JobSpec = serde_json::from_value(json!({"worker": worker, "input": {}}))
            .expect("a worker and an input are all a Job needs");
        Self {
            job: Job::new(name, spec),
        }
    }

    /// Places the object in `namespace`.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.job.metadata.namespace = Some(namespace.to_owned());
        self
    }

    /// The pipeline input.
    pub fn input(mut self, input: Value) -> Self {
        self.job.spec.input = input;
        self
    }

    /// A per-Job override of the fleet's attempts.
    pub fn max_attempts(mut self, attempts: i32) -> Self {
        self.job.spec.max_attempts = Some(attempts);
        self
    }

    /// A per-Job override of how long finished Jobs are kept.
    pub fn ttl_seconds_after_finished(mut self, seconds: i64) -> Self {
        self.job.spec.ttl_seconds_after_finished = Some(seconds);
        self
    }

    /// Asks for the Job to be cancelled.
    pub fn cancelled(mut self) -> Self {
        self.job.spec.cancel = true;
        self
    }

    /// The Job.
    pub fn build(self) -> Job {
        self.job
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unnamed_settings_keep_the_api_defaults() {
        let built = PipelineWorkerBuilder::sleep("w").build();
        let parsed: PipelineWorkerSpec = serde_json::from_value(json!({
            "pipeline": "sleep", "queue": {"topic": "w", "subscription": "w-sub"},
        }))
        .unwrap();
        assert_eq!(built.spec, parsed);
    }

    #[test]
    fn a_sleep_fleet_serializes_as_a_user_would_write_it() {
        let pw = PipelineWorkerBuilder::sleep("w")
            .namespace("ns")
            .queue("t", "s")
            .dead_letter_topic("dead")
            .max_attempts(3)
            .manual_replicas(0)
            .build();
        let value = serde_json::to_value(&pw).unwrap();
        assert_eq!(value["kind"], "PipelineWorker");
        assert_eq!(value["metadata"]["namespace"], "ns");
        assert_eq!(value["spec"]["queue"]["deadLetterTopic"], "dead", "{value}");
        assert_eq!(value["spec"]["retry"]["maxAttempts"], 3);
        assert_eq!(value["spec"]["scaling"]["mode"], "Manual");
        assert_eq!(value["spec"]["scaling"]["replicas"], 0);
    }

    #[test]
    fn consensus_settings_land_in_the_consensus_spec() {
        let pw = PipelineWorkerBuilder::consensus("c", "http://127.0.0.1:9/v1", "m")
            .persona("skeptic", "Find the flaw.")
            .api_key_secret("llm", "apiKey")
            .build();
        let consensus = pw.spec.consensus.unwrap();
        assert_eq!(consensus.personas[0].name, "skeptic");
        assert_eq!(
            consensus.api_key_secret_ref.map(|s| s.name),
            Some("llm".to_owned())
        );
    }

    #[test]
    fn a_job_carries_its_worker_input_and_overrides() {
        let job = JobBuilder::new("j", "w")
            .input(json!({"durationMillis": 5}))
            .max_attempts(1)
            .build();
        let value = serde_json::to_value(&job).unwrap();
        assert_eq!(value["kind"], "Job");
        assert_eq!(value["metadata"]["name"], "j");
        assert_eq!(value["spec"]["worker"], "w");
        assert_eq!(value["spec"]["input"]["durationMillis"], 5);
        assert_eq!(value["spec"]["maxAttempts"], 1);
        assert!(value.get("status").is_none(), "{value}");
    }
}
