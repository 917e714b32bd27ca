//! Each real pipeline on the real node, as a user's cluster runs it: the
//! chart installed with helm, an assembly fleet and a consensus fleet of real
//! worker containers, 20 Jobs each, all Succeeded. The assembly workers fetch
//! their media over HTTP from this machine (a container sees none of its
//! files) and write each episode into their own `/tmp`. The consensus
//! workers reach models on this machine's loopback at the node's address,
//! which their fleet allows by name: the 20 Jobs a scripted
//! OpenAI-compatible server (a 135M model decodes a few tokens a second on
//! two busy cores: 20 Jobs of it would take many minutes), and one more
//! the local model itself (SmolLM2-135M on llama.cpp's server). Each worker proves who it is with its mounted
//! ServiceAccount token (the SelfSubjectReview it logs at start names its
//! fleet's ServiceAccount), and no container log holds an RBAC refusal.
//!
//! One test on purpose: it owns the node (one per test binary). It fails,
//! never skips, when the node or the model cannot start.

use std::f64::consts::TAU;
use std::path::Path;
use std::time::{Duration, Instant};

use drover_crds::{Job, JobPhase};
use drover_e2e::drover::{apply_fleet, create_job};
use drover_e2e::local_model::{self, LocalModel};
use drover_e2e::media_server::MediaServer;
use drover_e2e::node::{NODE_PREFIX, chart};
use drover_e2e::node_drover::{self, NodeDrover, NodeDroverOptions};
use drover_e2e::refusals;
use drover_e2e::{ensure_built, error_chain, wait};
use drover_testkit::llm::{Call, Reply, ScriptedLlm};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use kube::Api;
use serde_json::json;

const JOBS: usize = 20;
/// Jobs on the local model: one, for a 135M model decodes a few tokens a
/// second on two busy cores (three Jobs took up to four minutes here).
const MODEL_JOBS: usize = 1;
const TIMEOUT: Duration = Duration::from_secs(600);

fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "node pipelines test: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assembly_and_consensus_fleets_run_twenty_jobs_each_in_real_containers() {
    let started = Instant::now();
    let mut progress = |line: &str| say(line);
    let bins = ensure_built(&mut progress)
        .unwrap_or_else(|e| panic!("the test environment binaries: {}", error_chain(&e)));
    let state_dir = std::env::temp_dir().join(format!("{NODE_PREFIX}{}", std::process::id()));
    let options = NodeDroverOptions {
        install_chart: true,
        prometheus: false,
    };
    let mut stack = NodeDrover::start(&bins, &state_dir, options, &mut progress)
        .await
        .unwrap_or_else(|e| panic!("Drover on the real node: {}", error_chain(&e)));
    let client = stack.client().await.expect("admin client");
    let namespace = stack
        .node
        .control_plane()
        .create_namespace("pipelines")
        .await
        .expect("test namespace");

    // The episodes' pieces, served to pods over HTTP.
    let media = state_dir.join("media");
    std::fs::create_dir_all(&media).expect("media dir");
    write_wav(&media.join("intro.wav"), 44_100, 2, 1.0, 440.0);
    write_wav(&media.join("main.wav"), 48_000, 1, 3.0, 150.0);
    write_wav(&media.join("outro.wav"), 44_100, 2, 1.0, 330.0);
    let server = MediaServer::start(&media).expect("media server");
    let media_at = stack.expose(server.port()).expect("expose the media");
    let media_url = format!("http://{media_at}/");

    // The model, on this machine's loopback, reached by pods at the node's address.
    let model = LocalModel::start(&state_dir, &mut progress)
        .await
        .unwrap_or_else(|e| panic!("the local model must serve: {}", error_chain(&e)));
    let (model_url, model_port) = node_drover::pod_url_for_loopback(&model.base_url())
        .expect("the local model listens on loopback");
    stack.expose(model_port).expect("expose the model");
    let scripted = ScriptedLlm::start(script)
        .await
        .expect("the scripted model");
    let (scripted_url, scripted_port) = node_drover::pod_url_for_loopback(&scripted.base_url())
        .expect("the scripted model listens on loopback");
    stack
        .expose(scripted_port)
        .expect("expose the scripted model");
    let node_range = node_drover::node_ip_range();

    let episodes = PipelineWorkerBuilder::assembly("episodes")
        .queue("node-episodes", "node-episodes-workers")
        .allowed_prefixes(&[&media_url, "file:///tmp/episodes/"])
        .egress_allowed(&[&node_range])
        .manual_replicas(2)
        .concurrency(2)
        // Debug builds are slow at DSP; the bound only guards a hang.
        .timeouts(300, 600)
        .build();
    // One persona: a Job is two model calls (expand, the review).
    let consensus = |name: &str, url: &str, model: &str, concurrency: i32| {
        PipelineWorkerBuilder::consensus(name, url, model)
            .persona(
                "operator",
                "You run this in production. You care about cost and rollback.",
            )
            .persona_retries(3, 1000)
            .queue(&format!("node-{name}"), &format!("node-{name}-workers"))
            .egress_allowed(&[&node_range])
            .manual_replicas(1)
            .concurrency(concurrency)
            .timeouts(240, 600)
            .max_attempts(3)
            .build()
    };
    apply_fleet(&client, &namespace, episodes).await;
    let reviewers = consensus("reviewers", &scripted_url, "scripted", 4);
    apply_fleet(&client, &namespace, reviewers).await;
    let model_reviewers = consensus(
        "model-reviewers",
        &model_url,
        local_model::MODEL_NAME,
        MODEL_JOBS as i32,
    );
    apply_fleet(&client, &namespace, model_reviewers).await;

    let batch_started = Instant::now();
    for i in 0..JOBS {
        let input = json!({
            "episodeId": i.to_string(),
            "mainUrl": format!("{media_url}main.wav"),
            "template": {
                "introUrl": format!("{media_url}intro.wav"),
                "outroUrl": format!("{media_url}outro.wav"),
                "crossfadeSeconds": 0.5,
                "format": "wav",
            },
            "outputUrl": format!("file:///tmp/episodes/episode-{i}.wav"),
        });
        let job = JobBuilder::new(&format!("episode-{i}"), "episodes")
            .input(input)
            .build();
        create_job(&client, &namespace, job).await;
        let input = json!({
            "text": format!("Cache the billing report for {} minutes.", i + 1),
        });
        let job = JobBuilder::new(&format!("review-{i}"), "reviewers")
            .input(input.clone())
            .build();
        create_job(&client, &namespace, job).await;
        if i < MODEL_JOBS {
            let job = JobBuilder::new(&format!("model-review-{i}"), "model-reviewers")
                .input(input)
                .build();
            create_job(&client, &namespace, job).await;
        }
    }
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    for (prefix, count) in [
        ("episode", JOBS),
        ("review", JOBS),
        ("model-review", MODEL_JOBS),
    ] {
        for i in 0..count {
            let name = format!("{prefix}-{i}");
            let status = wait::job_finished(&jobs, &name, TIMEOUT).await;
            assert_eq!(status.phase, JobPhase::Succeeded, "{name}: {status:?}");
            let result = status.result.as_ref().expect("a result");
            if prefix == "episode" {
                // 1 + 3 + 1 s joined by two 0.5 s crossfades.
                let seconds = result["durationSeconds"].as_f64().unwrap_or_default();
                assert!((seconds - 4.0).abs() < 0.01, "{name}: {result}");
                assert_eq!(
                    result["outputUrl"],
                    json!(format!("file:///tmp/episodes/episode-{i}.wav")),
                    "{name}"
                );
            } else {
                assert!(result["decision"].is_string(), "{name}: {result}");
            }
        }
        say(&format!(
            "{count} {prefix} Jobs Succeeded after {:.1} s",
            batch_started.elapsed().as_secs_f64()
        ));
    }

    // Real containers from the chart's image, on the node.
    let containers = chart::containers(&client, &namespace)
        .await
        .expect("list pods");
    for container in &containers {
        say(&format!("{container}"));
        assert!(
            container.container_id.starts_with("containerd://"),
            "{container}"
        );
        assert_eq!(container.image, chart::chart_image("drover-worker"));
    }
    assert_eq!(containers.len(), 4, "{containers:?}");

    // Each worker authenticated with its mounted token, as its fleet's
    // ServiceAccount; nothing was refused.
    let pods_dir = state_dir.join("var-log/pods");
    for fleet in ["episodes", "reviewers", "model-reviewers"] {
        let user = format!("system:serviceaccount:{namespace}:{fleet}-worker");
        let lines = log_lines(&pods_dir, &format!("{namespace}_{fleet}-worker-"));
        let authenticated: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("\"authenticated\"") && l.contains(&user))
            .collect();
        let pods = containers
            .iter()
            .filter(|c| c.pod.starts_with(&format!("{fleet}-worker-")))
            .count();
        assert_eq!(
            authenticated.len(),
            pods,
            "each {fleet} pod logs that it authenticated as {user}"
        );
        say(&format!("{fleet}: {}", authenticated[0]));
    }
    let mut logs = refusals::pod_logs(&pods_dir, chart::OPERATOR_NAMESPACE);
    logs.extend(refusals::pod_logs(&pods_dir, &namespace));
    assert!(
        logs.len() >= 4,
        "container logs under {}",
        pods_dir.display()
    );
    refusals::assert_none("Drover's pipelines on the real node", &logs);

    assert!(
        scripted.seen().len() >= 2 * JOBS,
        "the scripted model answered {} calls",
        scripted.seen().len()
    );
    drop(server);
    drop(scripted);
    drop(model);
    drop(client);
    let teardown = stack
        .stop()
        .unwrap_or_else(|e| panic!("stopping the node: {}", error_chain(&e)));
    teardown.assert_clean();
    say(&format!(
        "whole test {:.1} s",
        started.elapsed().as_secs_f64()
    ));
}

/// A proposal for each expand call, an approving review for each persona call.
fn script(call: &Call) -> Reply {
    if call.system.contains("reviewer named") {
        Reply::Json(json!({
            "verdict": "approve", "score": 8.0, "summary": "Cheap to run and roll back", "concerns": [],
        }))
    } else {
        Reply::Json(json!({
            "title": "Cache the billing report", "proposal": "A read-through cache with a short TTL.",
        }))
    }
}

/// Every line of the container logs of the pods whose log directory starts
/// with `prefix` (`<namespace>_<pod>_<uid>`).
fn log_lines(pods_dir: &Path, prefix: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let Ok(pods) = std::fs::read_dir(pods_dir) else {
        return lines;
    };
    for pod in pods.flatten() {
        if !pod.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let Ok(containers) = std::fs::read_dir(pod.path()) else {
            continue;
        };
        for container in containers.flatten() {
            let Ok(files) = std::fs::read_dir(container.path()) else {
                continue;
            };
            for file in files.flatten() {
                if let Ok(text) = std::fs::read_to_string(file.path()) {
                    lines.extend(text.lines().map(str::to_owned));
                }
            }
        }
    }
    lines
}

/// A 16-bit PCM WAV of a sine at `pitch` Hz, with a slow swell so the
/// loudness normalization has something to measure.
fn write_wav(path: &Path, rate: u32, channels: u16, seconds: f64, pitch: f64) {
    let swelling_sine = |t: f64, _channel: usize| {
        let swell = 0.5 + 0.3 * (TAU * 0.5 * t).sin();
        swell * 0.5 * (TAU * pitch * t).sin()
    };
    drover_e2e::wav::write_pcm16(path, rate, channels, seconds, swelling_sine)
        .expect("write a WAV");
}
