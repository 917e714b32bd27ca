//! External steps end to end: render fleets on the real control plane, their
//! worker pods run by the process kubelet, an operator serving callbacks on
//! its own port, and a scripted provider this test runs (submit, status,
//! output, and callbacks it retries until they land).
//!
//! * A Job whose provider takes 20 s frees its worker: on a fleet of one
//!   worker with one slot a second Job runs and finishes meanwhile; the
//!   callback completes the first, and its output is in the fleet's storage.
//! * Duplicate, forged (401) and late callbacks change nothing; a callback
//!   sent while the operator is SIGKILLed lands after its restart. Every
//!   Job finishes once: one submit, one download of its output.
//! * With callbacks off the poll completes the Job; a provider that never
//!   finishes fails it as ProviderTimeout.
//!
//! Own test binary: its operator serves callbacks, and one test kills it.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use drover_crds::{FailureReason, Job, JobPhase, PipelineWorker, StepPhase};
use drover_e2e::drover::{
    OperatorOptions, apply_fleet, create_job, start_kubelet, start_operator_with_args,
};
use drover_e2e::kubelet::ProcessKubelet;
use drover_e2e::refusals::{self, LogSince};
use drover_e2e::{ManagedProcess, TestEnv, error_chain, ports, wait};
use drover_testkit::provider::{Request, ScriptedProvider};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use kube::api::Api;
use serde_json::json;
use tokio::sync::RwLock;

/// What every test here shares: a kubelet, a provider and an operator that
/// serves callbacks (replaced when a test kills it).
struct Rig {
    env: &'static TestEnv,
    _kubelet: ProcessKubelet,
    provider: ScriptedProvider,
    operator: Mutex<ManagedProcess>,
    callback_port: u16,
    key_file: PathBuf,
    kubeconfig: PathBuf,
    restarts: Mutex<u32>,
}

/// The crash test takes it for writing: the others do not see the operator die.
static OPERATOR_USE: RwLock<()> = RwLock::const_new(());

impl Rig {
    fn start_operator(&self) -> ManagedProcess {
        let mut restarts = self.restarts.lock().unwrap_or_else(|e| e.into_inner());
        *restarts += 1;
        start(
            self.env,
            *restarts,
            self.callback_port,
            &self.key_file,
            &self.kubeconfig,
        )
    }

    fn operator_log(&self) -> PathBuf {
        self.operator
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .log_path()
            .to_path_buf()
    }
}

fn start(
    env: &TestEnv,
    nth: u32,
    callback_port: u16,
    key: &std::path::Path,
    kubeconfig: &std::path::Path,
) -> ManagedProcess {
    let port = ports::free_loopback_ports(1).expect("a port")[0];
    let kubeconfig = kubeconfig.to_path_buf();
    let callback = format!("127.0.0.1:{callback_port}");
    start_operator_with_args(
        env,
        &OperatorOptions {
            identity: format!("operator-{nth}"),
            lease_seconds: 5,
            metrics_port: port,
            kubeconfig,
            failpoints: None,
        },
        &[
            "--callback-addr".into(),
            callback.clone(),
            "--callback-base-url".into(),
            format!("http://{callback}"),
            "--callback-key-file".into(),
            key.display().to_string(),
        ],
    )
    .unwrap_or_else(|e| panic!("cannot start the operator: {}", error_chain(&e)))
}

async fn rig() -> &'static Rig {
    static RIG: tokio::sync::OnceCell<Rig> = tokio::sync::OnceCell::const_new();
    RIG.get_or_init(|| async {
        let env = drover_e2e::shared().await;
        // The kubelet's and the provider's tasks outlive each test's runtime.
        let (sender, receiver) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let kubelet = start_kubelet(env)
                    .await
                    .unwrap_or_else(|e| panic!("cannot start the kubelet: {}", error_chain(&e)));
                let provider = ScriptedProvider::start().await.expect("the provider");
                let _ = sender.send((kubelet, provider));
                std::future::pending::<()>().await
            });
        });
        let (kubelet, provider) = receiver.await.expect("the rig's runtime");
        let kubeconfig = drover_e2e::identity::operator_kubeconfig(env)
            .await
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        let key_file = env.control_plane.state_dir().join("callback-key");
        std::fs::write(&key_file, "e2e-callback-key-of-32-bytes-at-least\n").expect("key");
        let callback_port = ports::free_loopback_ports(1).expect("a port")[0];
        let operator = start(env, 0, callback_port, &key_file, &kubeconfig);
        Rig {
            env,
            _kubelet: kubelet,
            provider,
            operator: Mutex::new(operator),
            callback_port,
            key_file,
            kubeconfig,
            restarts: Mutex::new(0),
        }
    })
    .await
}

/// A namespace of its own and a render fleet there with one worker and one
/// slot, storing under the test's own directory; `change` adjusts it.
async fn fleet(
    rig: &Rig,
    prefix: &str,
    change: impl FnOnce(&mut drover_crds::pipeline_worker::RenderSpec),
) -> (Api<Job>, String, PathBuf) {
    let client = rig.env.control_plane.client().await.expect("client");
    let ns = rig
        .env
        .control_plane
        .create_namespace(prefix)
        .await
        .expect("namespace");
    let out = rig.env.control_plane.state_dir().join("renders").join(&ns);
    std::fs::create_dir_all(&out).expect("output dir");
    let prefix_url = format!("file://{}/", out.display());
    let provider = &rig.provider;
    let fleet: PipelineWorker = PipelineWorkerBuilder::render(
        "renders",
        &provider.submit_url(),
        &provider.status_url(),
        &prefix_url,
    )
    .queue(&format!("{ns}-renders"), &format!("{ns}-renders-sub"))
    .replicas(1, 1)
    .concurrency(1)
    .max_attempts(1)
    // The provider runs on this machine's loopback.
    .egress_allowed(&["127.0.0.1/32"])
    .with(|spec| change(spec.render.as_mut().expect("a render fleet")))
    .build();
    apply_fleet(&client, &ns, fleet).await;
    (Api::namespaced(client, &ns), ns, out)
}

fn render_job(name: &str, request: serde_json::Value) -> Job {
    JobBuilder::new(name, "renders")
        .input(json!({ "request": request }))
        .build()
}

/// The one request the provider took for `label`.
fn only_request(provider: &ScriptedProvider, label: &str) -> Request {
    let requests = provider.requests_labelled(label);
    assert_eq!(
        requests.len(),
        1,
        "{label} was submitted once: {requests:?}"
    );
    requests.into_iter().next().expect("one request")
}

/// POSTs a callback the way a provider does; the HTTP status (0: no connection).
async fn post(url: &str, body: &serde_json::Value) -> u16 {
    reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// The Job after nothing has happened to it for `quiet`: its
/// resourceVersion is the same at both ends.
async fn settled(jobs: &Api<Job>, name: &str, quiet: Duration) -> Job {
    wait::until(
        &format!("{name} to stay unchanged"),
        Duration::from_secs(60),
        || async {
            let before = jobs.get(name).await.map_err(|e| e.to_string())?;
            tokio::time::sleep(quiet).await;
            let after = jobs.get(name).await.map_err(|e| e.to_string())?;
            if before.metadata.resource_version == after.metadata.resource_version {
                Ok(after)
            } else {
                Err(format!("{:?}", after.status))
            }
        },
    )
    .await
}

fn output_of(job: &Job) -> String {
    let url = job
        .status
        .as_ref()
        .and_then(|s| s.result.as_ref())
        .expect("a result")["outputUrl"]
        .as_str()
        .expect("outputUrl")
        .to_owned();
    let path = url.strip_prefix("file://").expect("a file:// output");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{url}: {e}"))
}

#[tokio::test]
async fn a_waiting_job_frees_its_worker_and_its_callback_completes_it_once() {
    let _running = OPERATOR_USE.read().await;
    let rig = rig().await;
    let log = LogSince::now(&rig.operator_log());
    let (jobs, ns, out) = fleet(rig, "wait", |render| {
        // Only a callback can finish these Jobs within the test.
        render.poll_after_seconds = 600;
    })
    .await;
    let slow = format!("{ns}-slow");
    let quick = format!("{ns}-quick");
    create_job(
        &rig.env.control_plane.client().await.expect("client"),
        &ns,
        render_job(
            "slow",
            json!({"label": slow, "takesMillis": 20_000, "duplicateCallback": true}),
        ),
    )
    .await;
    let waiting =
        wait::job_in_phase(&jobs, "slow", JobPhase::Waiting, Duration::from_secs(90)).await;
    let status = waiting.status.clone().unwrap_or_default();
    assert_eq!(status.claim, None, "a Waiting Job holds no worker");
    let steps: Vec<(&str, StepPhase)> = status
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.phase))
        .collect();
    assert_eq!(
        steps,
        [
            ("submit", StepPhase::Succeeded),
            ("render", StepPhase::Waiting),
            ("store", StepPhase::Pending)
        ]
    );
    let request = only_request(&rig.provider, &slow);
    let callback_url = request
        .callback_url
        .clone()
        .expect("Drover sent a callback URL");
    assert!(
        callback_url.contains(&format!("/v1/callbacks/{ns}/slow/")),
        "{callback_url}"
    );

    // A forged callback: the right Job, a wrong token.
    let (base, token) = callback_url.rsplit_once('/').expect("a token");
    let forged_token: String = token
        .chars()
        .rev()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let forged = format!("{base}/{forged_token}");
    let before = jobs.get("slow").await.expect("slow");
    assert_eq!(
        post(&forged, &rig.provider.callback_body(&request.id)).await,
        401
    );
    let after = settled(&jobs, "slow", Duration::from_secs(1)).await;
    assert_eq!(
        after.metadata.resource_version, before.metadata.resource_version,
        "a forged callback changes nothing"
    );

    // The one worker slot is free: a second Job runs and finishes meanwhile.
    create_job(
        &rig.env.control_plane.client().await.expect("client"),
        &ns,
        render_job("quick", json!({"label": quick, "takesMillis": 1_000})),
    )
    .await;
    let quick_status = wait::job_finished(&jobs, "quick", Duration::from_secs(60)).await;
    assert_eq!(quick_status.phase, JobPhase::Succeeded, "{quick_status:?}");
    let slow_now = jobs
        .get("slow")
        .await
        .expect("slow")
        .status
        .unwrap_or_default();
    assert_eq!(
        slow_now.phase,
        JobPhase::Waiting,
        "quick finished while slow waited: {slow_now:?}"
    );

    // The provider's callback (sent twice) completes slow.
    let done = wait::job_finished(&jobs, "slow", Duration::from_secs(90)).await;
    assert_eq!(done.phase, JobPhase::Succeeded, "{done:?}");
    let slow_job = settled(&jobs, "slow", Duration::from_secs(2)).await;
    let result = slow_job
        .status
        .as_ref()
        .and_then(|s| s.result.clone())
        .expect("result");
    assert_eq!(
        result["polls"],
        json!(0),
        "the callback, not a poll, woke it: {result}"
    );
    assert_eq!(output_of(&slow_job), format!("video of {slow}"));
    assert_eq!(
        result["outputUrl"],
        json!(format!(
            "file://{}/{ns}/slow-{}",
            out.display(),
            slow_job.metadata.uid.clone().unwrap_or_default()
        )),
        "in the fleet's storage, at the Job's own place"
    );

    // The provider's duplicate and a late callback for the finished Job: 2xx, no change.
    let finished_version = slow_job.metadata.resource_version.clone();
    assert_eq!(
        post(&callback_url, &rig.provider.callback_body(&request.id)).await,
        200
    );
    let late = settled(&jobs, "slow", Duration::from_secs(1)).await;
    assert_eq!(late.metadata.resource_version, finished_version);

    let request = only_request(&rig.provider, &slow);
    assert_eq!(request.downloads, 1, "slow finished once: {request:?}");
    let landed: Vec<u16> = request
        .callback_answers
        .iter()
        .copied()
        .filter(|c| (200..300).contains(c))
        .collect();
    assert_eq!(
        landed.len(),
        2,
        "the callback and its duplicate both got a 2xx: {request:?}"
    );
    assert_eq!(request.callback_answers.first(), Some(&202), "{request:?}");
    assert_eq!(only_request(&rig.provider, &quick).downloads, 1);
    refusals::assert_none("the operator", &[log]);
}

#[tokio::test]
async fn a_callback_sent_while_the_operator_is_down_lands_after_its_restart() {
    let _alone = OPERATOR_USE.write().await;
    let rig = rig().await;
    let (jobs, ns, _) = fleet(rig, "crash", |render| render.poll_after_seconds = 600).await;
    let label = format!("{ns}-survivor");
    create_job(
        &rig.env.control_plane.client().await.expect("client"),
        &ns,
        render_job("survivor", json!({"label": label, "takesMillis": 12_000})),
    )
    .await;
    wait::job_in_phase(
        &jobs,
        "survivor",
        JobPhase::Waiting,
        Duration::from_secs(90),
    )
    .await;
    rig.operator
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .kill_hard();

    // The provider's callback finds nobody and retries.
    wait::until(
        "two refused callback tries",
        Duration::from_secs(60),
        || async {
            let request = only_request(&rig.provider, &label);
            let refused = request.callback_answers.iter().filter(|c| **c == 0).count();
            if refused >= 2 {
                Ok(())
            } else {
                Err(format!("{request:?}"))
            }
        },
    )
    .await;
    assert_eq!(
        jobs.get("survivor")
            .await
            .expect("survivor")
            .status
            .unwrap_or_default()
            .phase,
        JobPhase::Waiting
    );
    let successor = rig.start_operator();
    let log = successor.log_path().to_path_buf();
    *rig.operator.lock().unwrap_or_else(|e| e.into_inner()) = successor;

    let done = wait::job_finished(&jobs, "survivor", Duration::from_secs(90)).await;
    assert_eq!(done.phase, JobPhase::Succeeded, "{done:?}");
    let job = settled(&jobs, "survivor", Duration::from_secs(2)).await;
    assert_eq!(output_of(&job), format!("video of {label}"));
    let result = job
        .status
        .as_ref()
        .and_then(|s| s.result.clone())
        .expect("result");
    assert_eq!(
        result["polls"],
        json!(0),
        "the retried callback woke it: {result}"
    );
    let request = only_request(&rig.provider, &label);
    assert_eq!(request.downloads, 1, "survivor finished once: {request:?}");
    assert_eq!(request.callback_answers.last(), Some(&202), "{request:?}");
    refusals::assert_none("the restarted operator", &[LogSince::whole(&log)]);
}

#[tokio::test]
async fn without_callbacks_a_poll_completes_the_job() {
    let _running = OPERATOR_USE.read().await;
    let rig = rig().await;
    let (jobs, ns, _) = fleet(rig, "poll", |render| {
        render.callbacks = false;
        render.poll_after_seconds = 2;
    })
    .await;
    let label = format!("{ns}-polled");
    create_job(
        &rig.env.control_plane.client().await.expect("client"),
        &ns,
        render_job("polled", json!({"label": label, "takesMillis": 5_000})),
    )
    .await;
    let done = wait::job_finished(&jobs, "polled", Duration::from_secs(90)).await;
    assert_eq!(done.phase, JobPhase::Succeeded, "{done:?}");
    let job = settled(&jobs, "polled", Duration::from_secs(1)).await;
    assert_eq!(output_of(&job), format!("video of {label}"));
    let request = only_request(&rig.provider, &label);
    assert_eq!(
        request.callback_url, None,
        "no callback URL for a fleet that wants none"
    );
    assert!(request.polls >= 1, "{request:?}");
    assert_eq!(request.downloads, 1, "{request:?}");
    let result = job
        .status
        .as_ref()
        .and_then(|s| s.result.clone())
        .expect("result");
    assert!(result["polls"].as_i64().unwrap_or(0) >= 1, "{result}");
}

#[tokio::test]
async fn a_provider_that_never_finishes_fails_the_job_as_provider_timeout() {
    let _running = OPERATOR_USE.read().await;
    let rig = rig().await;
    let (jobs, ns, _) = fleet(rig, "timeout", |render| {
        render.poll_after_seconds = 2;
        render.wait_timeout_seconds = 8;
    })
    .await;
    let label = format!("{ns}-never");
    create_job(
        &rig.env.control_plane.client().await.expect("client"),
        &ns,
        render_job("never", json!({"label": label, "never": true})),
    )
    .await;
    let done = wait::job_finished(&jobs, "never", Duration::from_secs(90)).await;
    assert_eq!(done.phase, JobPhase::Failed, "{done:?}");
    let error = done.error.expect("an error");
    assert_eq!(
        error.reason,
        FailureReason::ProviderTimeout.as_str(),
        "{error:?}"
    );
    assert!(
        done.conditions
            .iter()
            .any(|c| c.type_ == "Failed" && c.reason == "ProviderTimeout")
    );
    let request = only_request(&rig.provider, &label);
    assert!(
        request.polls >= 1,
        "the operator polled before it gave up: {request:?}"
    );
    assert_eq!(request.downloads, 0);
}
