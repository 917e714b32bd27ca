//! The worker Deployment of a PipelineWorker, built as a pure function of the
//! PipelineWorker, the operator's configuration and the replica count.

use std::collections::BTreeMap;

use drover_crds::PipelineWorker;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecretKeySelector, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::config::OperatorConfig;
use crate::labels;

/// Port of the worker's /healthz, /readyz, /status and /metrics server.
pub const HTTP_PORT: i32 = 8080;

/// Pod annotation that changes whenever a setting the worker reads at start
/// changes, so such an edit rolls the fleet. Scaling settings are left out:
/// resizing a fleet must never restart it.
pub const CONFIG_HASH_ANNOTATION: &str = "drover.dev/config-hash";

/// Extra seconds of grace beyond the job timeout, for releasing claims and acking.
const SHUTDOWN_MARGIN_SECONDS: i64 = 30;
/// Of the grace, what a draining worker keeps for handing back what did not
/// finish and flushing its acks; the rest it lets running Jobs finish.
const HAND_BACK_SECONDS: i64 = 10;

/// Most a worker pod's `/tmp` (scratch for fetched inputs and decoded
/// audio) may hold; past it the kubelet evicts the pod.
pub const SCRATCH_SIZE_LIMIT: &str = "8Gi";

/// The non-root user of the distroless-style worker image.
const WORKER_UID: i64 = 65532;

pub fn worker_deployment(
    pw: &PipelineWorker,
    config: &OperatorConfig,
    replicas: i32,
) -> Deployment {
    let spec = &pw.spec;
    let mut pod_labels = labels::labels(pw);
    pod_labels.retain(|k, _| k != "app.kubernetes.io/managed-by");
    let annotations = BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_owned(), config_hash(pw))]);

    let container = Container {
        name: "worker".into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| config.worker_image.clone()),
        ),
        env: Some(worker_env(pw, config)),
        env_from: spec.env_from.clone(),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(http_probe("/readyz", 2, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        resources: spec.resources.clone(),
        security_context: Some(hardened_container()),
        // A worker that dies before it could say why leaves its last log
        // lines as the termination message, which `Degraded` then quotes.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };

    Deployment {
        metadata: labels::child_meta(pw),
        spec: DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels::selector_labels(pw)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                // Surge first: a rolling fleet never has fewer pullers than asked for.
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(
                        spec.service_account_name
                            .clone()
                            .unwrap_or_else(|| labels::child_name(pw)),
                    ),
                    // A draining worker gets the job timeout to finish what it runs.
                    termination_grace_period_seconds: Some(grace_seconds(pw)),
                    node_selector: spec.node_selector.clone(),
                    tolerations: spec.tolerations.clone(),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(WORKER_UID),
                        run_as_group: Some(WORKER_UID),
                        fs_group: Some(WORKER_UID),
                        seccomp_profile: Some(runtime_default_seccomp()),
                        ..PodSecurityContext::default()
                    }),
                    volumes: Some(vec![Volume {
                        name: "tmp".into(),
                        // A hostile or huge input fails its Job, never the node's disk.
                        empty_dir: Some(EmptyDirVolumeSource {
                            size_limit: Some(Quantity(SCRATCH_SIZE_LIMIT.into())),
                            ..EmptyDirVolumeSource::default()
                        }),
                        ..Volume::default()
                    }]),
                    containers: vec![container],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

/// The worker learns only who it is from env; everything else it reads from
/// its PipelineWorker. Secrets the pipeline needs come by reference.
fn worker_env(pw: &PipelineWorker, config: &OperatorConfig) -> Vec<EnvVar> {
    let mut env = vec![
        field_env("DROVER_NAMESPACE", "metadata.namespace"),
        value_env(
            "DROVER_WORKER_NAME",
            pw.metadata.name.as_deref().unwrap_or_default(),
        ),
        field_env("DROVER_POD_NAME", "metadata.name"),
        field_env("DROVER_POD_IP", "status.podIP"),
        // Bind to the pod IP: right in a cluster, and lets several replicas
        // share one host network under the test kubelet.
        value_env("DROVER_HTTP_ADDR", &format!("$(DROVER_POD_IP):{HTTP_PORT}")),
        // The operator's default project, for a queue that names none: both
        // sides resolve the same subscription.
        value_env("PUBSUB_PROJECT_ID", &config.pubsub_project),
    ];
    if let Some(host) = &config.pubsub_emulator_host {
        env.push(value_env("PUBSUB_EMULATOR_HOST", host));
    }
    // The worker judges resolved addresses by the operator's own ranges.
    let cidrs: Vec<String> = config
        .cluster_cidrs
        .iter()
        .map(ToString::to_string)
        .collect();
    env.push(value_env("DROVER_CLUSTER_CIDRS", &cidrs.join(",")));
    // The pod's own grace, less the hand-back time: the worker cannot read
    // its termination grace period any other way.
    env.push(value_env(
        "DROVER_DRAIN_SECONDS",
        &(grace_seconds(pw) - HAND_BACK_SECONDS).max(1).to_string(),
    ));
    env.extend(
        pipeline_secrets(pw)
            .into_iter()
            .map(|secret| secret_env(secret.env_var, secret.selector)),
    );
    // The fleet's own variables come last but never replace one the
    // operator set: those say who the worker is and where it reports.
    let user_env: Vec<EnvVar> = pw
        .spec
        .env
        .iter()
        .flatten()
        .filter(|e| !is_reserved_env(&e.name, &env))
        .cloned()
        .collect();
    env.extend(user_env);
    env
}

/// Whether `spec.env` may not set `name`: every variable the operator sets,
/// and the prefixes it keeps for itself.
pub fn is_reserved_env(name: &str, operator_env: &[EnvVar]) -> bool {
    name.starts_with("DROVER_")
        || name.starts_with("PUBSUB_")
        || operator_env.iter().any(|e| e.name == name)
}

/// A Secret key a fleet's pods read, and the env var it arrives in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PipelineSecret<'a> {
    /// The worker env var that carries the value.
    pub env_var: &'static str,
    /// The Secret name and key (and whether it is optional).
    pub selector: &'a SecretKeySelector,
}

/// Every Secret key the pipeline settings reference. The worker env and the
/// fleet's SecretNotFound check both read this one list, so they cannot drift.
pub fn pipeline_secrets(pw: &PipelineWorker) -> Vec<PipelineSecret<'_>> {
    let mut secrets = Vec::new();
    let mut read = |env_var, selector| secrets.push(PipelineSecret { env_var, selector });
    if let Some(key) = pw
        .spec
        .consensus
        .as_ref()
        .and_then(|c| c.api_key_secret_ref.as_ref())
    {
        read("DROVER_LLM_API_KEY", key);
    }
    if let Some(key) = pw
        .spec
        .render
        .as_ref()
        .and_then(|r| r.auth_secret_ref.as_ref())
    {
        read("DROVER_RENDER_TOKEN", key);
    }
    if let Some(assembly) = &pw.spec.assembly {
        if let Some(s3) = &assembly.s3 {
            read("AWS_ACCESS_KEY_ID", &s3.access_key_id_secret_ref);
            read("AWS_SECRET_ACCESS_KEY", &s3.secret_access_key_secret_ref);
        }
        if let Some(key) = assembly
            .gcs
            .as_ref()
            .and_then(|g| g.service_account_key_secret_ref.as_ref())
        {
            read("GOOGLE_SERVICE_ACCOUNT_KEY", key);
        }
    }
    secrets
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn secret_env(name: &str, key: &SecretKeySelector) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(key.clone()),
            ..EnvVarSource::default()
        }),
    }
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn hardened_container() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

/// FNV-1a over the JSON of the spec minus scaling: stable across Rust
/// releases (unlike `DefaultHasher`), so an operator upgrade rolls nothing.
/// Seconds a worker pod has between SIGTERM and SIGKILL.
fn grace_seconds(pw: &PipelineWorker) -> i64 {
    pw.spec.timeouts.job_seconds + SHUTDOWN_MARGIN_SECONDS
}

pub fn config_hash(pw: &PipelineWorker) -> String {
    let spec = &pw.spec;
    // Only what a worker reads once, at start; it reads the rest of its
    // PipelineWorker again for every Job, so editing retries, TTLs, scaling
    // or pipeline settings restarts nothing.
    let read_at_start = serde_json::json!({
        "pipeline": spec.pipeline,
        "queue": spec.queue,
        "concurrency": spec.concurrency,
        "jobSeconds": spec.timeouts.job_seconds,
    });
    let bytes = serde_json::to_vec(&read_at_start).unwrap_or_default();
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_crds::PipelineWorkerSpec;

    fn sample() -> PipelineWorker {
        let spec: PipelineWorkerSpec = serde_json::from_value(serde_json::json!({
            "pipeline": "sleep",
            "queue": {"topic": "jobs", "subscription": "jobs-sub"},
            "timeouts": {"stepSeconds": 60, "jobSeconds": 900},
        }))
        .unwrap();
        let mut pw = PipelineWorker::new("sleeper", spec);
        pw.metadata.namespace = Some("team-a".into());
        pw.metadata.uid = Some("uid-1".into());
        pw
    }

    fn config() -> OperatorConfig {
        OperatorConfig {
            worker_image: "drover-worker:test".into(),
            ..OperatorConfig::default()
        }
    }

    fn pod_spec(d: &Deployment) -> &PodSpec {
        d.spec.template.spec.as_ref().unwrap()
    }

    #[test]
    fn deployment_is_owned_by_its_pipeline_worker() {
        let d = worker_deployment(&sample(), &config(), 2);
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("PipelineWorker", "sleeper")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(d.metadata.name.as_deref(), Some("sleeper-worker"));
        assert_eq!(d.spec.replicas, Some(2));
    }

    #[test]
    fn spec_env_cannot_replace_the_identity_the_operator_sets() {
        let mut pw = sample();
        pw.spec.env = Some(vec![
            value_env("DROVER_NAMESPACE", "someone-else"),
            value_env("DROVER_WORKER_NAME", "their-fleet"),
            value_env("PUBSUB_EMULATOR_HOST", "evil:8085"),
            value_env("DROVER_CLUSTER_CIDRS", ""),
            value_env("HTTPS_PROXY", "http://proxy:3128"),
        ]);
        let d = worker_deployment(&pw, &config(), 1);
        let env = pod_spec(&d).containers[0].env.clone().unwrap();
        let named = |name: &str| env.iter().filter(|e| e.name == name).count();
        for name in [
            "DROVER_NAMESPACE",
            "DROVER_WORKER_NAME",
            "DROVER_CLUSTER_CIDRS",
        ] {
            assert_eq!(named(name), 1, "{name}");
        }
        assert_eq!(named("PUBSUB_EMULATOR_HOST"), 0);
        let worker = env.iter().find(|e| e.name == "DROVER_WORKER_NAME").unwrap();
        assert_eq!(worker.value.as_deref(), Some("sleeper"));
        assert_eq!(named("HTTPS_PROXY"), 1, "other variables pass");
    }

    #[test]
    fn worker_gets_only_its_identity_from_env() {
        let d = worker_deployment(&sample(), &config(), 1);
        let names: Vec<_> = pod_spec(&d).containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "DROVER_NAMESPACE",
                "DROVER_WORKER_NAME",
                "DROVER_POD_NAME",
                "DROVER_POD_IP",
                "DROVER_HTTP_ADDR",
                "PUBSUB_PROJECT_ID",
                // The operator's cluster ranges, for the outbound guard.
                "DROVER_CLUSTER_CIDRS",
                // A fact of the pod (its grace), not a fleet setting.
                "DROVER_DRAIN_SECONDS",
            ]
        );
    }

    #[test]
    fn grace_period_covers_the_job_timeout() {
        let d = worker_deployment(&sample(), &config(), 1);
        assert_eq!(pod_spec(&d).termination_grace_period_seconds, Some(930));
    }

    #[test]
    fn container_is_hardened() {
        let d = worker_deployment(&sample(), &config(), 1);
        let sc = pod_spec(&d).containers[0]
            .security_context
            .as_ref()
            .unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    }

    #[test]
    fn image_defaults_to_the_operators() {
        let mut pw = sample();
        assert_eq!(
            pod_spec(&worker_deployment(&pw, &config(), 1)).containers[0]
                .image
                .as_deref(),
            Some("drover-worker:test")
        );
        pw.spec.image = Some("registry.example/worker:1".into());
        assert_eq!(
            pod_spec(&worker_deployment(&pw, &config(), 1)).containers[0]
                .image
                .as_deref(),
            Some("registry.example/worker:1")
        );
    }

    #[test]
    fn api_key_comes_from_a_secret_reference_only() {
        let mut pw = sample();
        pw.spec.pipeline = drover_crds::Pipeline::Consensus;
        pw.spec.consensus = Some(
            serde_json::from_value(serde_json::json!({
                "baseUrl": "http://llm:8000/v1", "model": "m",
                "personas": [{"name": "a", "prompt": "p"}],
                "apiKeySecretRef": {"name": "llm", "key": "apiKey"},
            }))
            .unwrap(),
        );
        let d = worker_deployment(&pw, &config(), 1);
        let env = pod_spec(&d).containers[0].env.clone().unwrap();
        let key = env.iter().find(|e| e.name == "DROVER_LLM_API_KEY").unwrap();
        assert!(key.value.is_none());
        let secret = key
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            ("llm", "apiKey")
        );
        assert_eq!(pipeline_secrets(&pw).len(), 1);
    }

    #[test]
    fn every_pipeline_secret_reaches_the_env_by_reference() {
        let mut pw = sample();
        pw.spec.pipeline = drover_crds::Pipeline::Assembly;
        pw.spec.assembly = Some(
            serde_json::from_value(serde_json::json!({
                "s3": {
                    "region": "eu-west-1",
                    "accessKeyIdSecretRef": {"name": "s3", "key": "id"},
                    "secretAccessKeySecretRef": {"name": "s3", "key": "secret"},
                },
                "gcs": {"serviceAccountKeySecretRef": {"name": "gcs", "key": "json"}},
            }))
            .unwrap(),
        );
        let d = worker_deployment(&pw, &config(), 1);
        let env = pod_spec(&d).containers[0].env.clone().unwrap();
        let secrets = pipeline_secrets(&pw);
        assert_eq!(secrets.len(), 3);
        for secret in secrets {
            let var = env.iter().find(|e| e.name == secret.env_var).unwrap();
            let from = var
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref());
            assert_eq!(from, Some(secret.selector));
        }
    }

    #[test]
    fn scaling_edits_do_not_change_the_config_hash_but_other_edits_do() {
        let pw = sample();
        let mut scaled = pw.clone();
        scaled.spec.scaling.max_replicas = 99;
        assert_eq!(config_hash(&pw), config_hash(&scaled));
        let mut retuned = pw.clone();
        retuned.spec.concurrency = 7;
        assert_ne!(config_hash(&pw), config_hash(&retuned));
    }

    #[test]
    fn retry_and_ttl_edits_roll_nothing() {
        let pw = sample();
        let mut edited = pw.clone();
        edited.spec.retry.max_attempts = 9;
        edited.spec.ttl_seconds_after_finished = Some(5);
        assert_eq!(
            worker_deployment(&pw, &config(), 1).spec.template,
            worker_deployment(&edited, &config(), 1).spec.template
        );
    }

    #[test]
    fn the_worker_drains_for_its_grace_less_the_hand_back_time() {
        let d = worker_deployment(&sample(), &config(), 1);
        let env = pod_spec(&d).containers[0].env.clone().unwrap_or_default();
        let drain = env.iter().find(|e| e.name == "DROVER_DRAIN_SECONDS");
        assert_eq!(drain.and_then(|e| e.value.as_deref()), Some("920"));
    }
}
