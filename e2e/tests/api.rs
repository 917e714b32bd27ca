//! The drover.dev API against a real kube-apiserver: samples apply, invalid
//! objects are refused with messages a person understands, kubectl shows the
//! printer columns.

use std::process::Command;

use drover_crds::{Job, PipelineWorker};
use drover_e2e::{TestEnv, manifests, shared, workspace_root};
use drover_testkit::JobBuilder;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::ApiResource;
use serde_json::{Value, json};

async fn client_and_namespace(env: &TestEnv, prefix: &str) -> (kube::Client, String) {
    let client = env
        .control_plane
        .client()
        .await
        .expect("client for the test apiserver");
    let ns = env
        .control_plane
        .create_namespace(prefix)
        .await
        .expect("test namespace");
    (client, ns)
}

fn pipeline_worker(spec: Value) -> Value {
    json!({
        "apiVersion": "drover.dev/v1alpha1",
        "kind": "PipelineWorker",
        "metadata": { "name": "pw" },
        "spec": spec,
    })
}

fn job(spec: Value) -> Value {
    json!({
        "apiVersion": "drover.dev/v1alpha1",
        "kind": "Job",
        "metadata": { "name": "job" },
        "spec": spec,
    })
}

fn sleep_spec() -> Value {
    json!({
        "pipeline": "sleep",
        "queue": { "topic": "jobs-topic", "subscription": "jobs-sub" },
    })
}

/// Creates `object` and returns the apiserver's refusal message.
async fn refusal<K: kube::Resource<DynamicType = ()>>(
    client: &kube::Client,
    ns: &str,
    object: Value,
) -> String {
    let resource = ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let object: DynamicObject = serde_json::from_value(object).expect("well-formed test object");
    match api.create(&PostParams::default(), &object).await {
        Ok(created) => panic!("the apiserver accepted an invalid object: {created:?}"),
        Err(kube::Error::Api(status)) => status.message,
        Err(other) => panic!("expected a validation error, got {other}"),
    }
}

#[tokio::test]
async fn samples_apply_and_read_back_unchanged() {
    let env = shared().await;
    let (client, ns) = client_and_namespace(env, "samples").await;
    let samples =
        manifests::read_dir(&workspace_root().join("config/samples")).expect("samples parse");
    let applied = manifests::apply(&client, &ns, &samples)
        .await
        .expect("samples apply");
    assert!(applied.len() >= 7, "applied {applied:?}");

    for manifest in &samples {
        let kind = manifest.object.types.as_ref().map(|t| t.kind.as_str());
        let name = manifest.object.metadata.name.as_deref().unwrap_or_default();
        let sent = serde_json::to_value(&manifest.object).expect("sample serializes");
        match kind {
            Some("PipelineWorker") => {
                let stored = Api::<PipelineWorker>::namespaced(client.clone(), &ns)
                    .get(name)
                    .await
                    .expect("PipelineWorker reads back");
                let expected: PipelineWorker =
                    serde_json::from_value(sent).expect("sample is a PipelineWorker");
                // Server-side defaults and the Rust defaults are one source, so they agree.
                assert_eq!(stored.spec, expected.spec, "{}", manifest.describe());
            }
            Some("Job") => {
                let stored = Api::<Job>::namespaced(client.clone(), &ns)
                    .get(name)
                    .await
                    .expect("Job reads back");
                let expected: Job = serde_json::from_value(sent).expect("sample is a Job");
                assert_eq!(stored.spec, expected.spec, "{}", manifest.describe());
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn max_replicas_below_min_replicas_is_refused() {
    let env = shared().await;
    let (client, ns) = client_and_namespace(env, "minmax").await;
    let mut spec = sleep_spec();
    spec["scaling"] = json!({ "minReplicas": 5, "maxReplicas": 2 });
    let message = refusal::<PipelineWorker>(&client, &ns, pipeline_worker(spec)).await;
    assert!(
        message.contains("spec.scaling: Invalid value")
            && message.contains("minReplicas must not be greater than maxReplicas"),
        "{message}"
    );
}

#[tokio::test]
async fn unknown_pipeline_is_refused_with_the_known_ones() {
    let env = shared().await;
    let (client, ns) = client_and_namespace(env, "pipeline").await;
    let mut spec = sleep_spec();
    spec["pipeline"] = json!("transcode");
    let message = refusal::<PipelineWorker>(&client, &ns, pipeline_worker(spec)).await;
    assert!(
        message.contains(r#"spec.pipeline: Unsupported value: "transcode""#)
            && message.contains(r#""consensus", "assembly", "sleep""#),
        "{message}"
    );
}

#[tokio::test]
async fn consensus_without_its_settings_is_refused() {
    let env = shared().await;
    let (client, ns) = client_and_namespace(env, "consensus").await;
    let mut spec = sleep_spec();
    spec["pipeline"] = json!("consensus");
    let message = refusal::<PipelineWorker>(&client, &ns, pipeline_worker(spec)).await;
    assert!(
        message.contains("spec.consensus is required when pipeline is consensus"),
        "{message}"
    );
}

#[tokio::test]
async fn negative_timeouts_are_refused() {
    let env = shared().await;
    let (client, ns) = client_and_namespace(env, "timeouts").await;
    let mut spec = sleep_spec();
    spec["timeouts"] = json!({ "stepSeconds": -5, "jobSeconds": 60 });
    let message = refusal::<PipelineWorker>(&client, &ns, pipeline_worker(spec)).await;
    assert!(
        message.contains("spec.timeouts.stepSeconds: Invalid value: -5")
            && message.contains("should be greater than or equal to 1"),
        "{message}"
    );

    let message = refusal::<Job>(
        &client,
        &ns,
        job(json!({ "worker": "pw", "input": {}, "timeoutSeconds": -1 })),
    )
    .await;
    assert!(
        message.contains("spec.timeoutSeconds: Invalid value: -1"),
        "{message}"
    );
}

#[tokio::test]
async fn job_without_worker_is_refused() {
    let env = shared().await;
    let (client, ns) = client_and_namespace(env, "noworker").await;
    let message = refusal::<Job>(
        &client,
        &ns,
        job(json!({ "input": { "durationMillis": 10 } })),
    )
    .await;
    assert!(message.contains("spec.worker: Required value"), "{message}");
}

#[tokio::test]
async fn pubsub_ids_are_checked() {
    let env = shared().await;
    let (client, ns) = client_and_namespace(env, "queueids").await;
    let mut spec = sleep_spec();
    spec["queue"]["topic"] = json!("goog-reserved");
    let message = refusal::<PipelineWorker>(&client, &ns, pipeline_worker(spec)).await;
    assert!(
        message.contains("spec.queue.topic") && message.contains("must be a Pub/Sub id"),
        "{message}"
    );
}

#[tokio::test]
async fn job_worker_and_cancel_cannot_be_changed_back() {
    let env = shared().await;
    let (client, ns) = client_and_namespace(env, "immutable").await;
    let jobs = Api::<Job>::namespaced(client.clone(), &ns);
    let created = JobBuilder::new("job", "pw")
        .input(json!({ "durationMillis": 1 }))
        .cancelled()
        .build();
    let created = jobs
        .create(&PostParams::default(), &created)
        .await
        .expect("job is created");

    let mut moved = created.clone();
    moved.spec.worker = "other".into();
    let err = jobs
        .replace("job", &PostParams::default(), &moved)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("spec.worker is immutable"),
        "{err}"
    );

    let mut uncancelled = created;
    uncancelled.spec.cancel = false;
    let err = jobs
        .replace("job", &PostParams::default(), &uncancelled)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("spec.cancel cannot be undone"),
        "{err}"
    );

    // Only a retry lifts a cancel (`kubectl drover retry`), and retries only grow.
    uncancelled.spec.retries = 1;
    let retried = jobs
        .replace("job", &PostParams::default(), &uncancelled)
        .await
        .expect("a retry lifts the cancel");
    assert_eq!((retried.spec.cancel, retried.spec.retries), (false, 1));
    let mut fewer = retried;
    fewer.spec.retries = 0;
    let err = jobs
        .replace("job", &PostParams::default(), &fewer)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spec.retries only grows"), "{err}");
}

#[tokio::test]
async fn wrongly_typed_field_is_refused_with_its_path() {
    let env = shared().await;
    let (client, ns) = client_and_namespace(env, "types").await;
    let mut spec = sleep_spec();
    spec["concurrency"] = json!("lots");
    let message = refusal::<PipelineWorker>(&client, &ns, pipeline_worker(spec)).await;
    assert!(
        message.contains("spec.concurrency") && message.contains("must be of type integer"),
        "{message}"
    );
}

fn kubectl(env: &TestEnv, args: &[&str]) -> std::process::Output {
    Command::new(&env.binaries.kubectl)
        .arg("--kubeconfig")
        .arg(env.control_plane.kubeconfig_path())
        .args(args)
        .output()
        .expect("the built kubectl runs")
}

fn stdout_of(env: &TestEnv, args: &[&str]) -> String {
    let out = kubectl(env, args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn kubectl_shows_printer_columns_and_the_drover_category() {
    let env = shared().await;
    let (client, ns) = client_and_namespace(env, "columns").await;
    let samples = [
        workspace_root().join("config/samples/pipelineworker-sleep.yaml"),
        workspace_root().join("config/samples/job-sleep.yaml"),
    ];
    for path in samples {
        let objects = manifests::read_file(&path).expect("sample parses");
        manifests::apply(&client, &ns, &objects)
            .await
            .expect("sample applies");
    }

    let pw = stdout_of(env, &["get", "pw", "-n", &ns]);
    let header: Vec<&str> = pw
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME", "PIPELINE", "DESIRED", "READY", "QUEUED", "RUNNING", "STATUS", "AGE"
        ],
        "{pw}"
    );
    assert!(
        pw.lines()
            .nth(1)
            .unwrap_or_default()
            .starts_with("sleeper "),
        "{pw}"
    );

    let jobs = stdout_of(env, &["get", "pjob", "-n", &ns]);
    let header: Vec<&str> = jobs
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME", "WORKER", "PHASE", "ATTEMPT", "PROGRESS", "PRIORITY", "WAITING", "AGE"
        ],
        "{jobs}"
    );
    let row: Vec<&str> = jobs
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..2], ["nap", "sleeper"], "{jobs}");

    let all = stdout_of(env, &["get", "drover", "-n", &ns, "-o", "name"]);
    assert!(
        all.contains("pipelineworker.drover.dev/sleeper") && all.contains("job.drover.dev/nap"),
        "{all}"
    );

    // `kubectl get jobs` keeps meaning batch Jobs.
    let batch = kubectl(env, &["get", "jobs", "-n", &ns]);
    let batch_err = String::from_utf8_lossy(&batch.stderr);
    assert!(batch_err.contains("No resources found"), "{batch_err}");
}

#[tokio::test]
async fn malformed_yaml_is_reported_by_kubectl_and_by_the_harness() {
    let env = shared().await;
    let dir = env.control_plane.state_dir().join("fixtures");
    std::fs::create_dir_all(&dir).expect("fixture dir");
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "apiVersion: drover.dev/v1alpha1\nkind: PipelineWorker\nmetadata:\n  name: bad\nspec:\n  pipeline: sleep\n  queue: {topic: [unclosed\n",
    )
    .expect("write fixture");

    let out = kubectl(
        env,
        &[
            "apply",
            "-n",
            "default",
            "-f",
            path.to_str().unwrap_or_default(),
        ],
    );
    assert!(!out.status.success(), "kubectl accepted malformed YAML");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("line 7"),
        "{stderr}"
    );

    let err = manifests::read_file(&path).unwrap_err().to_string();
    assert!(
        err.contains("bad.yaml: document 1 is not valid YAML") && err.contains("line 7"),
        "{err}"
    );
}
