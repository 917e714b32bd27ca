//! The local sandbox: a real control plane and a real node (kubelet,
//! containerd, runc, CNI) on this machine, the Pub/Sub emulator, Drover
//! installed with its Helm chart (the operator and every worker a real
//! container from the project's images), Prometheus scraping pod IPs, and
//! the samples applied; up until Ctrl-C.
//!
//! `cargo run -p drover-e2e --bin sandbox` — see the README's quick start.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use drover_e2e::drover::PUBSUB_PROJECT as PROJECT_ID;
use drover_e2e::local_model::{self, LocalModel};
use drover_e2e::media_server::MediaServer;
use drover_e2e::node::{self, chart};
use drover_e2e::node_drover::{self, NodeDrover, NodeDroverOptions};
use drover_e2e::sandbox_archive::{self, SandboxArchive};
use drover_e2e::{ensure_built, error_chain, manifests, wav, workspace_root};
use tokio::signal::unix::{SignalKind, signal};

/// Runs Drover's local sandbox: builds what is missing, starts etcd,
/// kube-apiserver, kube-controller-manager and a real node (kubelet,
/// kube-scheduler, kube-proxy, containerd) with the Pub/Sub emulator,
/// installs the Helm chart, applies config/samples and stays up until SIGINT
/// or SIGTERM. The node runs as root.
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

    /// Install no operator, only start the node: for installing the operator
    /// with Helm or config/install yourself (README, "Install").
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
        "[1/4] test environment binaries (etcd, kube-apiserver, kube-controller-manager, kubelet, kube-scheduler, kube-proxy, kubectl, pubsub-emulator) and the node's runtime",
    );
    let mut progress = |line: &str| say(&format!("      {line}"));
    let bins = ensure_built(&mut progress).map_err(|e| error_chain(&e))?;
    ensure_node_packages()?;

    say("[2/4] drover-operator, drover-worker and kubectl-drover");
    build_drover_binaries()?;

    say(
        "[3/4] the node, the chart's images, the Pub/Sub emulator, Drover's Helm chart, Prometheus",
    );
    let options = NodeDroverOptions {
        install_chart: !args.no_operator,
        prometheus: true,
    };
    let node_dir = state_dir.join("node");
    let mut stack = tokio::select! {
        stack = NodeDrover::start(&bins, &node_dir, options, &mut progress) =>
            stack.map_err(|e| error_chain(&e))?,
        _ = interrupt.recv() => return Err("interrupted while starting".into()),
        _ = terminate.recv() => return Err("terminated while starting".into()),
    };
    let kubeconfig = stack.node.control_plane().kubeconfig_path().to_path_buf();
    for line in kubectl(&bins.kubectl, &kubeconfig, &["get", "nodes", "-o", "wide"])?.lines() {
        say(&format!("      {line}"));
    }
    // The Job archive, when PostgreSQL is installed; held until teardown.
    let mut archive = None;
    if args.no_operator {
        say("      no operator (--no-operator): install it with helm or kubectl, see the README");
    } else {
        archive = start_archive(&state_dir, &mut stack, &kubeconfig).await?;
        report_containers(&stack, chart::OPERATOR_NAMESPACE).await;
    }

    say("[4/4] samples");
    // Held until teardown: the consensus sample's model server (when no
    // endpoint is configured) and the assembly samples' media server.
    let mut local_model = None;
    let mut media = None;
    let mut sample_jobs = Vec::new();
    if args.no_samples {
        say("      skipped (--no-samples)");
    } else if args.no_operator {
        say("      skipped (--no-operator): apply them after installing the operator");
    } else {
        write_assembly_media()?;
        let server = MediaServer::start(std::path::Path::new(ASSEMBLY_MEDIA))
            .map_err(|e| format!("cannot serve {ASSEMBLY_MEDIA}: {e}"))?;
        let media_at = stack
            .expose(server.port())
            .map_err(|e| format!("cannot expose the media server to pods: {e}"))?;
        let media_url = format!("http://{media_at}/");
        say(&format!(
            "      pods fetch the assembly samples' media from {media_url} (this machine's {ASSEMBLY_MEDIA}); episodes go to the worker pod's own /tmp"
        ));
        media = Some(server);
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
                    allowed_range: None,
                };
                local_model = Some(model);
                llm
            }
        };
        let llm = llm_for_pods(llm, &mut stack)?;
        let client = stack.client().await.map_err(|e| error_chain(&e))?;
        sample_jobs =
            apply_samples(&client, &args.samples, &args.namespace, &llm, &media_url).await?;
    }

    let env_file = write_env_file(
        &EnvFile {
            kubeconfig: &kubeconfig,
            pubsub_host: stack.emulator.local_host(),
            pod_pubsub_host: stack.emulator.pod_host(),
            kubectl: &bins.kubectl,
            helm: &stack.helm,
            prometheus: stack.prometheus.as_ref().map(|p| p.address()),
        },
        &state_dir,
    )?;
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

    let client = stack.client().await.map_err(|e| error_chain(&e))?;
    let reports = async {
        tokio::join!(
            report_jobs(client.clone()),
            report_samples(&stack, &args.namespace, &sample_jobs),
        )
    };
    tokio::select! {
        _ = interrupt.recv() => say("SIGINT: tearing down"),
        _ = terminate.recv() => say("SIGTERM: tearing down"),
        _ = reports => say("the Job watch ended"),
    }
    drop(client);
    drop(local_model);
    drop(media);
    // The operator goes with the node; the database it wrote to after it.
    let stopped = stack.stop();
    drop(archive);
    // Its cluster is gone: a shell (or a test) that sourced it later would
    // talk to a dead apiserver. The logs stay.
    if let Err(e) = std::fs::remove_file(&env_file) {
        say(&format!("cannot remove {}: {e}", env_file.display()));
    }
    match stopped {
        Ok(teardown) if teardown.leftovers.is_empty() => say(&format!(
            "sandbox stopped in {:.1} s, nothing left behind",
            teardown.duration.as_secs_f64()
        )),
        Ok(teardown) => say(&format!(
            "sandbox stopped in {:.1} s, leaving:\n{}",
            teardown.duration.as_secs_f64(),
            teardown.leftovers.join("\n")
        )),
        Err(e) => return Err(format!("stopping the node: {}", error_chain(&e))),
    }
    Ok(())
}

/// Starts PostgreSQL on this machine, exposes it to pods and turns the
/// archive on in the installed chart; `None` (said why) without PostgreSQL.
async fn start_archive(
    state_dir: &Path,
    stack: &mut NodeDrover,
    kubeconfig: &Path,
) -> Result<Option<SandboxArchive>, String> {
    let mut progress = |line: &str| say(&format!("      {line}"));
    let Some(archive) = sandbox_archive::start(state_dir, &mut progress).await else {
        return Ok(None);
    };
    let pod_address = stack
        .expose(archive.postgres.port())
        .map_err(|e| format!("cannot expose PostgreSQL to pods: {e}"))?;
    let client = stack.client().await.map_err(|e| error_chain(&e))?;
    archive
        .enable_in_chart(&client, &stack.helm, kubeconfig, pod_address)
        .await?;
    say(&format!(
        "      archive on: the operator writes finished Jobs to PostgreSQL at {pod_address}; `kubectl drover history` reads them"
    ));
    Ok(Some(archive))
}

/// Applies the samples, pointed at what pods on the node reach (the model,
/// the media), and returns the names of the Jobs among them.
async fn apply_samples(
    client: &kube::Client,
    dir: &Path,
    namespace: &str,
    llm: &Llm,
    media_url: &str,
) -> Result<Vec<String>, String> {
    let mut samples = manifests::read_dir(dir).map_err(|e| e.to_string())?;
    point_consensus_samples_at_llm(&mut samples, llm);
    point_assembly_samples_at_media(&mut samples, media_url);
    // Fleets before their Jobs, so a Job never waits on a missing worker.
    samples.sort_by_key(|m| match m.object.types.as_ref().map(|t| t.kind.as_str()) {
        Some("Job") => 2,
        Some("PipelineWorker") => 1,
        _ => 0,
    });
    let jobs = samples
        .iter()
        .filter(|m| m.object.types.as_ref().is_some_and(|t| t.kind == "Job"))
        .filter_map(|m| m.object.metadata.name.clone())
        .collect();
    let applied = manifests::apply(client, namespace, &samples)
        .await
        .map_err(|e| error_chain(&e))?;
    for name in applied {
        say(&format!("      applied {name} in namespace {namespace}"));
    }
    Ok(jobs)
}

/// The OpenAI-compatible endpoint the consensus samples use.
struct Llm {
    base_url: String,
    /// Replaces the sample's model name when set.
    model: Option<String>,
    api_key: Option<String>,
    /// What the fleet's `spec.egress.allowedCidrs` must allow to reach it.
    allowed_range: Option<String>,
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
        allowed_range: None,
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
                // A model on this machine is reached at the node's address,
                // which the outbound guard refuses unless the fleet allows it.
                if let Some(range) = &llm.allowed_range {
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

/// The chart's images are built from these binaries; build them with the
/// same cargo profile the sandbox itself was built with.
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

/// What another terminal needs to reach the sandbox.
struct EnvFile<'a> {
    kubeconfig: &'a Path,
    /// The emulator as this machine reaches it (`kubectl drover dlq`).
    pubsub_host: String,
    /// The emulator as pods on the node reach it (the chart's `pubsub.emulatorHost`).
    pod_pubsub_host: String,
    kubectl: &'a Path,
    helm: &'a Path,
    prometheus: Option<String>,
}

/// Shell lines that point another terminal at this sandbox.
fn write_env_file(env: &EnvFile<'_>, state_dir: &Path) -> Result<PathBuf, String> {
    let path = state_dir.join("env");
    let cli = drover_e2e::drover::binary("kubectl-drover").map_err(|e| e.to_string())?;
    let cli_dir = cli.parent().unwrap_or(Path::new("."));
    let mut text = format!(
        "# Written by the Drover sandbox; `source` it to reach the sandbox.\n\
         export KUBECONFIG={}\n\
         export PUBSUB_EMULATOR_HOST={}\n\
         # The emulator as pods on the sandbox's node reach it: the chart's pubsub.emulatorHost.\n\
         export DROVER_POD_PUBSUB_EMULATOR_HOST={}\n\
         export PUBSUB_PROJECT_ID={PROJECT_ID}\n\
         export KUBECTL={}\n\
         export HELM={}\n\
         # `kubectl drover ...` finds the plugin on PATH.\n\
         export DROVER_CLI={}\n\
         export PATH={}:\"$PATH\"\n",
        shell_quote(env.kubeconfig),
        env.pubsub_host,
        env.pod_pubsub_host,
        shell_quote(env.kubectl),
        shell_quote(env.helm),
        shell_quote(&cli),
        shell_quote(cli_dir),
    );
    if let Some(prometheus) = &env.prometheus {
        text.push_str(&format!(
            "# Prometheus on the node, scraping Drover's pods at their pod IPs.\nexport PROMETHEUS_URL=http://{prometheus}\n"
        ));
    }
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

/// Where config/samples/job-assembly.yaml reads its audio and writes its
/// episode. The sandbox writes the audio here on this machine and serves it
/// to pods over HTTP; a worker container's `/tmp` is its own, so the
/// episodes land there, in the pod.
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

/// [`wav::write_pcm16`], its error as a line for the user.
fn write_wav(
    path: &Path,
    rate: u32,
    channels: u16,
    seconds: f64,
    signal: impl Fn(f64, usize) -> f64,
) -> Result<(), String> {
    wav::write_pcm16(path, rate, channels, seconds, signal)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

// The real node: its packages, what pods reach, and what it shows.

/// Installs what the node runs when a command of it is missing (Debian's
/// containerd, runc, CNI plugins, iptables, conntrack), saying so; fails
/// with the command to run where it cannot.
fn ensure_node_packages() -> Result<(), String> {
    let missing = node::missing_prerequisites();
    if missing.is_empty() {
        return Ok(());
    }
    let packages = node::debian_packages_for(&missing);
    let by_hand = format!(
        "apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    );
    if missing.iter().any(|m| m == "root") {
        return Err(format!(
            "the sandbox's node (kubelet, containerd) runs as root; run the sandbox as root{}",
            if packages.is_empty() {
                String::new()
            } else {
                format!(", after `{by_hand}`")
            }
        ));
    }
    say(&format!(
        "      the node needs {}: installing {} with apt-get",
        missing.join(", "),
        packages.join(", ")
    ));
    for args in [
        vec!["update", "-qq"],
        [
            vec!["install", "-y", "-qq", "--no-install-recommends"],
            packages.clone(),
        ]
        .concat(),
    ] {
        let status = std::process::Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("cannot run apt-get ({e}); install them by hand: {by_hand}"))?;
        if !status.success() {
            return Err(format!(
                "`apt-get {}` failed ({status}); install them by hand: {by_hand}",
                args.join(" ")
            ));
        }
    }
    let still = node::missing_prerequisites();
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "after apt-get the node still lacks {}",
            still.join(", ")
        ))
    }
}

/// `kubectl ARGS` against the sandbox, as a user's shell runs it.
fn kubectl(kubectl: &Path, kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run kubectl: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Prints each container of `namespace`: pod, IP, image, container ID.
async fn report_containers(stack: &NodeDrover, namespace: &str) {
    let listed = match stack.client().await {
        Ok(client) => chart::containers(&client, namespace)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(error_chain(&e)),
    };
    match listed {
        Ok(containers) => {
            for container in containers {
                say(&format!("      {container}"));
            }
        }
        Err(e) => say(&format!("      cannot list the pods of {namespace}: {e}")),
    }
}

/// The model endpoint as pods on the node reach it: one on this machine's
/// loopback is exposed at the node's address, which its fleet must allow.
fn llm_for_pods(llm: Llm, stack: &mut NodeDrover) -> Result<Llm, String> {
    let Some((base_url, port)) = node_drover::pod_url_for_loopback(&llm.base_url) else {
        return Ok(llm);
    };
    stack
        .expose(port)
        .map_err(|e| format!("cannot expose the model's port {port} to pods: {e}"))?;
    say(&format!(
        "      pods reach the model at {base_url} ({} on this machine)",
        llm.base_url
    ));
    Ok(Llm {
        base_url,
        allowed_range: Some(node_drover::node_ip_range()),
        ..llm
    })
}

/// Points the assembly samples at `media_url`: each assembly fleet may
/// read under it and reach the node's address; each of their Jobs reads its
/// inputs from it instead of this machine's files. Outputs stay `file://`,
/// in the worker pod's `/tmp`.
fn point_assembly_samples_at_media(samples: &mut [manifests::Manifest], media_url: &str) {
    let kind = |m: &manifests::Manifest| m.object.types.as_ref().map(|t| t.kind.clone());
    let fleets: Vec<String> = samples
        .iter()
        .filter(|m| kind(m).as_deref() == Some("PipelineWorker"))
        .filter(|m| m.object.data["spec"]["pipeline"] == "assembly")
        .filter_map(|m| m.object.metadata.name.clone())
        .collect();
    let local = format!("file://{ASSEMBLY_MEDIA}/");
    for m in samples.iter_mut() {
        let name = m.object.metadata.name.clone().unwrap_or_default();
        match kind(m).as_deref() {
            Some("PipelineWorker") if fleets.contains(&name) => {
                let spec = &mut m.object.data["spec"];
                if let Some(prefixes) =
                    spec["assembly"]["storage"]["allowedPrefixes"].as_array_mut()
                {
                    prefixes.push(media_url.into());
                }
                spec["egress"] =
                    serde_json::json!({"allowedCidrs": [node_drover::node_ip_range()]});
            }
            Some("Job")
                if m.object.data["spec"]["worker"]
                    .as_str()
                    .is_some_and(|w| fleets.iter().any(|f| f == w)) =>
            {
                fetch_inputs_from(&mut m.object.data["spec"]["input"], &local, media_url);
            }
            _ => {}
        }
    }
}

/// Replaces the `local` prefix with `remote` in every URL of `input` that is
/// read (every `...Url` but `outputUrl`).
fn fetch_inputs_from(input: &mut serde_json::Value, local: &str, remote: &str) {
    match input {
        serde_json::Value::Object(fields) => {
            for (key, value) in fields.iter_mut() {
                match value {
                    serde_json::Value::String(url) if key != "outputUrl" => {
                        if let Some(rest) = url.strip_prefix(local) {
                            *url = format!("{remote}{rest}");
                        }
                    }
                    other => fetch_inputs_from(other, local, remote),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                fetch_inputs_from(item, local, remote);
            }
        }
        _ => {}
    }
}

/// Once every sample Job has finished, says how each ended and where its
/// pods ran (image and container ID); then waits forever.
async fn report_samples(stack: &NodeDrover, namespace: &str, names: &[String]) {
    if names.is_empty() {
        return std::future::pending().await;
    }
    let Ok(client) = stack.client().await else {
        return std::future::pending().await;
    };
    let jobs: kube::Api<drover_crds::Job> = kube::Api::namespaced(client, namespace);
    let outcomes = loop {
        let mut outcomes = Vec::new();
        for name in names {
            if let Ok(job) = jobs.get(name).await
                && let Some(status) = job.status.filter(|s| s.phase.is_terminal())
            {
                outcomes.push(format!(
                    "{name} {:?} (attempt {})",
                    status.phase, status.attempt
                ));
            }
        }
        if outcomes.len() == names.len() {
            break outcomes;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    };
    say(&format!(
        "every sample Job finished: {}",
        outcomes.join(", ")
    ));
    say(&format!("worker containers in namespace {namespace}:"));
    report_containers(stack, namespace).await;
    if let Some(prometheus) = &stack.prometheus {
        match prometheus.targets().await {
            Ok(targets) => {
                say(&format!("Prometheus scrapes {} pod(s):", targets.len()));
                for (url, health) in targets {
                    say(&format!("      {url} {health}"));
                }
            }
            Err(e) => say(&format!("cannot read Prometheus' targets: {e}")),
        }
    }
    std::future::pending().await
}
