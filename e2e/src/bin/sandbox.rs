//! The local sandbox: a real control plane and Pub/Sub emulator on this
//! machine, with Drover's CRDs and samples applied, up until Ctrl-C.
//!
//! `cargo run -p drover-e2e --bin sandbox` — see the README's quick start.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use drover_e2e::drover::{PUBSUB_PROJECT as PROJECT_ID, start_drover_with_args, start_kubelet};
use drover_e2e::local_model::{self, LocalModel};
use drover_e2e::{TestEnv, error_chain, manifests, workspace_root};
use tokio::signal::unix::{SignalKind, signal};

/// Runs Drover's local sandbox: builds what is missing, starts etcd,
/// kube-apiserver, kube-controller-manager and the Pub/Sub emulator, installs
/// the CRDs, applies config/samples and stays up until SIGINT or SIGTERM.
#[derive(Parser, Debug)]
#[command(name = "sandbox", about)]
struct Args {
    /// Where the kubeconfig, the env file, PKI, etcd data and logs go. It is
    /// emptied at start.
    #[arg(long, default_value_os_t = workspace_root().join(".drover-sandbox"))]
    state_dir: PathBuf,

    /// Namespace the samples are applied to.
    #[arg(long, default_value = "default")]
    namespace: String,

    /// Directory of sample manifests to apply.
    #[arg(long, default_value_os_t = workspace_root().join("config/samples"))]
    samples: PathBuf,

    /// Apply no samples.
    #[arg(long)]
    no_samples: bool,

    /// Start no operator process, only the process kubelet: for installing the
    /// operator with Helm or config/install (README, "Install").
    #[arg(long)]
    no_operator: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            say(&format!("sandbox failed: {message}"));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let started = Instant::now();
    // Install the handlers first: a Ctrl-C during a long build must still tear down.
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;

    let state_dir = absolute(&args.state_dir)?;
    reset_state_dir(&state_dir)?;
    say(&format!("state directory {}", state_dir.display()));
    // The Go-built parts first: without Go the sandbox stops here, at once.
    say(
        "[1/4] control plane and Pub/Sub emulator (etcd, kube-apiserver, kube-controller-manager, kubectl, pubsub-emulator)",
    );

    let mut progress = |line: &str| say(&format!("      {line}"));
    let env = tokio::select! {
        env = TestEnv::start(&state_dir, &mut progress) => env.map_err(|e| error_chain(&e))?,
        _ = interrupt.recv() => return Err("interrupted while starting".into()),
        _ = terminate.recv() => return Err("terminated while starting".into()),
    };

    say("[2/4] drover-operator and drover-worker");
    build_drover_binaries()?;
    let mut helm_progress = |line: &str| say(&format!("      {line}"));
    let helm = drover_e2e::testenv::ensure_helm(&mut helm_progress).map_err(|e| error_chain(&e))?;
    say("[3/4] operator and process kubelet");
    // The Job archive, when PostgreSQL is installed; held until teardown.
    let mut archive = None;
    let drover = if args.no_operator {
        let kubelet = start_kubelet(&env).await.map_err(|e| error_chain(&e))?;
        say("      no operator (--no-operator): install it with helm or kubectl, see the README");
        Running::KubeletOnly(kubelet)
    } else {
        let mut archive_progress = |line: &str| say(&format!("      {line}"));
        archive = drover_e2e::sandbox_archive::start(&state_dir, &mut archive_progress).await;
        let archive_args = archive.as_ref().map(|a| a.operator_args.clone());
        let drover = start_drover_with_args(&env, &archive_args.unwrap_or_default())
            .await
            .map_err(|e| error_chain(&e))?;
        say(&format!(
            "      operator running (logs {}), metrics at {}",
            drover.operator.log_path().display(),
            drover.operator_metrics
        ));
        Running::Drover(Box::new(drover))
    };
    say("      pods run as local processes on node drover-node");

    say("[4/4] samples");
    // Held until teardown: the consensus sample's model server, when no
    // endpoint is configured.
    let mut local_model = None;
    if args.no_samples {
        say("      skipped (--no-samples)");
    } else if args.no_operator {
        say("      skipped (--no-operator): apply them after installing the operator");
    } else {
        write_assembly_media()?;
        let llm = match configured_llm() {
            Some(llm) => llm,
            None => {
                say(
                    "      no DROVER_LLM_BASE_URL: serving the local model for the consensus sample (it proves the pipeline, it does not judge ideas)",
                );
                let mut model_progress = |line: &str| say(&format!("      {line}"));
                let model = LocalModel::start(&state_dir, &mut model_progress)
                    .await
                    .map_err(|e| error_chain(&e))?;
                let llm = Llm {
                    base_url: model.base_url(),
                    model: Some(local_model::MODEL_NAME.to_owned()),
                    api_key: None,
                };
                local_model = Some(model);
                llm
            }
        };
        apply_samples(&env, &args.samples, &args.namespace, &llm).await?;
    }

    let env_file = write_env_file(&env, &helm, &state_dir)?;
    if let Some(archive) = &archive {
        archive.append_env(&env_file)?;
    }
    say(&format!("      wrote {}", env_file.display()));

    say(&format!(
        "up in {:.1} s\n\n  In another shell:\n    source {}\n    $KUBECTL get drover -A\n    $KUBECTL apply -f config/samples/job-sleep.yaml\n    $KUBECTL get pjob -w\n    $KUBECTL get pw,deploy,pods\n    $KUBECTL drover submit -w sleeper --set durationMillis=2000 --watch\n\n  Logs: {}\n  Stop with Ctrl-C.",
        started.elapsed().as_secs_f64(),
        env_file.display(),
        state_dir.display()
    ));
    // The exact stdout line scripts wait for.
    println!("sandbox ready");
    let _ = std::io::stdout().flush();

    let client = env
        .control_plane
        .client()
        .await
        .map_err(|e| error_chain(&e))?;
    tokio::select! {
        _ = interrupt.recv() => say("SIGINT: tearing down"),
        _ = terminate.recv() => say("SIGTERM: tearing down"),
        () = report_jobs(client) => say("the Job watch ended"),
    }
    // Workers and operator first, while the apiserver is still there for them.
    drop(drover);
    drop(archive);
    drop(local_model);
    drop(env);
    say("sandbox stopped");
    Ok(())
}

async fn apply_samples(
    env: &TestEnv,
    dir: &Path,
    namespace: &str,
    llm: &Llm,
) -> Result<(), String> {
    let mut samples = manifests::read_dir(dir).map_err(|e| e.to_string())?;
    point_consensus_samples_at_llm(&mut samples, llm);
    // Fleets before their Jobs, so a Job never waits on a missing worker.
    samples.sort_by_key(|m| match m.object.types.as_ref().map(|t| t.kind.as_str()) {
        Some("Job") => 2,
        Some("PipelineWorker") => 1,
        _ => 0,
    });
    let client = env
        .control_plane
        .client()
        .await
        .map_err(|e| error_chain(&e))?;
    let applied = manifests::apply(&client, namespace, &samples)
        .await
        .map_err(|e| error_chain(&e))?;
    for name in applied {
        say(&format!("      applied {name} in namespace {namespace}"));
    }
    Ok(())
}

/// The OpenAI-compatible endpoint the consensus samples use.
struct Llm {
    base_url: String,
    /// Replaces the sample's model name when set.
    model: Option<String>,
    api_key: Option<String>,
}

/// `DROVER_LLM_BASE_URL` (and optionally `DROVER_LLM_MODEL` and
/// `DROVER_LLM_API_KEY`), when set.
fn configured_llm() -> Option<Llm> {
    let var = |name| {
        std::env::var(name)
            .ok()
            .filter(|v: &String| !v.trim().is_empty())
    };
    Some(Llm {
        base_url: var("DROVER_LLM_BASE_URL")?,
        model: var("DROVER_LLM_MODEL"),
        api_key: var("DROVER_LLM_API_KEY"),
    })
}

/// Points every consensus fleet of the samples at `llm`, and puts its API
/// key in the fleet's key Secret (or drops the key reference when there is
/// none).
fn point_consensus_samples_at_llm(samples: &mut [manifests::Manifest], llm: &Llm) {
    let kind = |m: &manifests::Manifest| m.object.types.as_ref().map(|t| t.kind.clone());
    let name = |m: &manifests::Manifest| m.object.metadata.name.clone().unwrap_or_default();
    // Each consensus fleet, with the Secret key reference of its API key.
    let fleets: Vec<(String, serde_json::Value)> = samples
        .iter()
        .filter(|m| kind(m).as_deref() == Some("PipelineWorker"))
        .filter(|m| m.object.data["spec"]["pipeline"] == "consensus")
        .map(|m| {
            (
                name(m),
                m.object.data["spec"]["consensus"]["apiKeySecretRef"].clone(),
            )
        })
        .collect();
    let is_fleet = |n: &str| fleets.iter().any(|(fleet, _)| fleet == n);
    let key_ref = |secret: &str| {
        fleets
            .iter()
            .find(|(_, r)| r["name"] == secret)
            .map(|(_, r)| r.clone())
    };
    let (base_url, model, api_key) = (&llm.base_url, &llm.model, &llm.api_key);
    for m in samples.iter_mut() {
        match kind(m).as_deref() {
            Some("PipelineWorker") if is_fleet(&name(m)) => {
                let consensus = &mut m.object.data["spec"]["consensus"];
                consensus["baseUrl"] = base_url.clone().into();
                if let Some(model) = &model {
                    consensus["model"] = model.clone().into();
                }
                if api_key.is_none()
                    && let Some(settings) = consensus.as_object_mut()
                {
                    settings.remove("apiKeySecretRef");
                }
                // A model on this machine is on loopback, which the outbound
                // guard refuses unless the fleet allows it by name.
                if let Some(range) = loopback_range(base_url) {
                    m.object.data["spec"]["egress"] = serde_json::json!({"allowedCidrs": [range]});
                }
                say(&format!(
                    "      consensus fleet {} uses {base_url}, model {}, {}",
                    name(m),
                    m.object.data["spec"]["consensus"]["model"]
                        .as_str()
                        .unwrap_or("?"),
                    if api_key.is_some() {
                        "with the key from DROVER_LLM_API_KEY"
                    } else {
                        "without an API key"
                    },
                ));
            }
            Some("Secret") => {
                if let (Some(reference), Some(key)) = (key_ref(&name(m)), &api_key)
                    && let Some(field) = reference["key"].as_str()
                {
                    m.object.data["stringData"][field] = key.clone().into();
                }
            }
            _ => {}
        }
    }
}

/// Prints every Job phase change, so the sandbox shows its Jobs finish.
async fn report_jobs(client: kube::Client) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let jobs: kube::Api<drover_crds::Job> = kube::Api::all(client);
    let mut seen = std::collections::HashMap::new();
    let mut events = watcher(jobs, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = events.next().await {
        let Ok(job) = event else { continue };
        let status = job.status.clone().unwrap_or_default();
        let key = format!(
            "{}/{}",
            job.metadata.namespace.as_deref().unwrap_or_default(),
            job.metadata.name.as_deref().unwrap_or_default()
        );
        let phase = format!("{:?}", status.phase);
        if seen.get(&key) == Some(&phase) {
            continue;
        }
        let detail = match (&status.error, &status.result) {
            (Some(error), _) if status.phase.is_terminal() => {
                format!(" ({}: {})", error.reason, error.message)
            }
            (_, Some(result)) => format!(" result {result}"),
            _ => String::new(),
        };
        say(&format!(
            "job {key}: {phase} (attempt {}){detail}",
            status.attempt
        ));
        seen.insert(key, phase);
    }
}

/// The sandbox runs the operator and workers as local processes; build them
/// with the same cargo profile the sandbox itself was built with.
fn build_drover_binaries() -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command.current_dir(workspace_root()).args([
        "build",
        "-p",
        "drover-operator",
        "-p",
        "drover-worker",
        "-p",
        "drover-cli",
    ]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot run cargo to build the operator, worker and CLI: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "building drover-operator, drover-worker and kubectl-drover failed ({status})"
        ))
    }
}

/// What runs Drover in the sandbox: held until teardown, then dropped (which
/// stops it) before the control plane.
enum Running {
    Drover(#[allow(dead_code)] Box<drover_e2e::drover::DroverProcesses>),
    KubeletOnly(#[allow(dead_code)] drover_e2e::kubelet::ProcessKubelet),
}

/// Shell lines that point another terminal at this sandbox.
fn write_env_file(env: &TestEnv, helm: &Path, state_dir: &Path) -> Result<PathBuf, String> {
    let path = state_dir.join("env");
    let cli = drover_e2e::drover::binary("kubectl-drover").map_err(|e| e.to_string())?;
    let cli_dir = cli.parent().unwrap_or(Path::new("."));
    let text = format!(
        "# Written by the Drover sandbox; `source` it to reach the sandbox.\n\
         export KUBECONFIG={}\n\
         export PUBSUB_EMULATOR_HOST={}\n\
         export PUBSUB_PROJECT_ID={PROJECT_ID}\n\
         export KUBECTL={}\n\
         export HELM={}\n\
         # `kubectl drover ...` finds the plugin on PATH.\n\
         export DROVER_CLI={}\n\
         export PATH={}:\"$PATH\"\n",
        shell_quote(env.control_plane.kubeconfig_path()),
        env.pubsub.host_port(),
        shell_quote(&env.binaries.kubectl),
        shell_quote(helm),
        shell_quote(&cli),
        shell_quote(cli_dir),
    );
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

fn absolute(path: &Path) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("cannot resolve {}: {e}", path.display()))
}

/// Every start is a fresh cluster: an old etcd data dir or a kubeconfig with a
/// stale port would only confuse.
fn reset_state_dir(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("cannot empty {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

/// Progress goes to stderr, unbuffered, so it shows while a build runs.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "sandbox: {line}");
}

/// The one-address range of a loopback model URL, for the fleet's allowance.
fn loopback_range(base_url: &str) -> Option<String> {
    let authority = base_url.split_once("://")?.1.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.split(':').next()?,
    };
    let ip: std::net::IpAddr = match host {
        "localhost" => std::net::Ipv4Addr::LOCALHOST.into(),
        other => other.parse().ok()?,
    };
    ip.is_loopback().then(|| match ip {
        std::net::IpAddr::V4(v4) => format!("{v4}/32"),
        std::net::IpAddr::V6(v6) => format!("{v6}/128"),
    })
}

/// Where config/samples/job-assembly.yaml reads its audio and writes its
/// episode; worker pods are local processes here, so a local path works.
const ASSEMBLY_MEDIA: &str = "/tmp/drover-sandbox-media";

/// Makes the assembly sample's inputs: synthetic, so the sandbox needs no
/// media tools. A chord for the intro and outro, a low pad for the bed, and
/// a buzzing "voice" in syllables and phrases at 48 kHz, so the episode is
/// resampled, normalized, crossfaded and ducked like a real one.
fn write_assembly_media() -> Result<(), String> {
    use std::f64::consts::TAU;
    let dir = Path::new(ASSEMBLY_MEDIA);
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let chord = |t: f64, c: usize| {
        let root = if c == 0 { 330.0 } else { 440.0 };
        0.3 * (TAU * root * t).sin() + 0.2 * (TAU * root * 1.5 * t).sin()
    };
    let voice = |t: f64, _: usize| {
        let syllable = (TAU * 4.0 * t).sin().max(0.0);
        let phrase = if t % 4.0 < 3.2 { 1.0 } else { 0.0 };
        let pitch = 140.0 + 20.0 * (TAU * 0.5 * t).sin();
        let buzz: f64 = (1..6)
            .map(|h| (TAU * pitch * f64::from(h) * t).sin() / f64::from(h))
            .sum();
        0.2 * syllable * phrase * buzz
    };
    let pad = |t: f64, c: usize| 0.2 * (TAU * (110.0 + 55.0 * c as f64) * t).sin();
    write_wav(&dir.join("intro.wav"), 44_100, 2, 4.0, chord)?;
    write_wav(&dir.join("episode-42-main.wav"), 48_000, 1, 30.0, voice)?;
    write_wav(&dir.join("outro.wav"), 44_100, 2, 5.0, chord)?;
    write_wav(&dir.join("music-bed.wav"), 44_100, 2, 8.0, pad)?;
    say(&format!(
        "      wrote the assembly sample's audio to {ASSEMBLY_MEDIA}"
    ));
    Ok(())
}

/// A 16-bit PCM WAV of `signal(t, channel)`.
fn write_wav(
    path: &Path,
    rate: u32,
    channels: u16,
    seconds: f64,
    signal: impl Fn(f64, usize) -> f64,
) -> Result<(), String> {
    let frames = (seconds * f64::from(rate)) as u32;
    let data_len = frames * u32::from(channels) * 2;
    let mut bytes = Vec::with_capacity(44 + data_len as usize);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data_len).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes()); // PCM
    bytes.extend_from_slice(&channels.to_le_bytes());
    bytes.extend_from_slice(&rate.to_le_bytes());
    bytes.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
    bytes.extend_from_slice(&(channels * 2).to_le_bytes());
    bytes.extend_from_slice(&16u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..frames {
        let t = f64::from(i) / f64::from(rate);
        for c in 0..usize::from(channels) {
            let sample = (signal(t, c).clamp(-1.0, 1.0) * 32767.0) as i16;
            bytes.extend_from_slice(&sample.to_le_bytes());
        }
    }
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
