//! The chaos suite: 1,000 sleep Jobs on three worker pods while a seeded
//! schedule crashes, restarts, pauses and refuses every part Drover leans
//! on. At the end, after a quiet period, every Job has Succeeded exactly
//! once with its own result, and every effect that ran twice belongs to an
//! attempt a kill interrupted.
//!
//! Faults (seed from `DROVER_CHAOS_SEED`, printed; times jittered by it):
//! three operator SIGKILLs, one of them paused at a failpoint between a
//! publish and its Queued write; five worker SIGKILLs, two of them paused
//! at a failpoint after a run's effect and before its outcome write; a
//! kube-apiserver restart on the same etcd; a Pub/Sub emulator restart
//! (every topic and message gone); ten seconds in which status writes to
//! Succeeded are refused; the leader frozen (SIGSTOP) past its lease, then
//! thawed; and one worker whose clock runs a minute ahead.
//!
//! Own test binary: it restarts the apiserver and the emulator and runs its
//! own operators, so it shares them with no other test.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drover_crds::{Job, JobPhase};
use drover_e2e::admission::{Refusal, Updates, refuse};
use drover_e2e::contenders::{
    Contender, LEASE_NAME, lease_holder, published_since, publishes_begun_since,
};
use drover_e2e::drover::{OperatorOptions, apply_fleet, start_kubelet, start_operator};
use drover_e2e::identity::{OPERATOR_NAMESPACE, operator_kubeconfig};
use drover_e2e::kubelet::ProcessKubelet;
use drover_e2e::refusals::LogSince;
use drover_e2e::{TestEnv, apiserver_metrics, error_chain, ports, shared, wait};
use drover_runtime::failpoint;
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const JOBS: usize = 1000;
const LEASE_SECONDS: u64 = 5;
const FLEET: &str = "chaos";
const DEFAULT_SEED: u64 = 20261201;
/// Where Debian's libfaketime puts its preload library.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// How far ahead the skewed worker's clock runs (its log's timestamps too).
const SKEW_SECONDS: i64 = 60;
const SKEWED_POD: &str = "chaos-worker-clock-ahead";

#[tokio::test]
async fn a_thousand_jobs_each_succeed_once_through_every_fault() {
    assert!(
        Path::new(LIBFAKETIME).is_file(),
        "{LIBFAKETIME} is missing: install Debian's faketime package (`cargo xtask test` does)"
    );
    let seed = std::env::var("DROVER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let mut rng = fastrand::Rng::with_seed(seed);
    let plan = Plan::new(&mut rng);
    eprintln!("chaos: seed {seed} (set DROVER_CHAOS_SEED to replay another)");

    let started = Instant::now();
    let env = shared().await;
    let client = env.control_plane.client().await.expect("client");
    let ns = env
        .control_plane
        .create_namespace("chaos")
        .await
        .expect("namespace");
    let effects = env.control_plane.state_dir().join("effects-chaos");
    std::fs::create_dir_all(&effects).expect("effects dir");
    let kubelet = start_kubelet(env)
        .await
        .unwrap_or_else(|e| panic!("cannot start the kubelet: {}", error_chain(&e)));
    let operator_failpoint = format!("{}={}", failpoint::AFTER_PUBLISH, plan.operator_failpoint);
    let mut operators = Operators::start(env, &operator_failpoint).await;

    let worker_failpoints = plan
        .worker_failpoints
        .iter()
        .map(|key| format!("{}={key}", failpoint::BEFORE_OUTCOME))
        .collect::<Vec<_>>()
        .join(",");
    apply_fleet(
        &client,
        &ns,
        PipelineWorkerBuilder::sleep(FLEET)
            .queue(&format!("{ns}-jobs"), &format!("{ns}-jobs-sub"))
            .manual_replicas(2)
            .concurrency(16)
            .ack_deadline_seconds(10)
            .max_attempts(6)
            .backoff(1, 2.0, 4)
            .with(|spec| {
                spec.env = Some(vec![
                    env_var(failpoint::ENV, &worker_failpoints),
                    // Every message received, with Pub/Sub's publish time
                    // and its sender: how a late publish would show.
                    env_var("RUST_LOG", "info,kube=warn,drover_worker::pull=debug"),
                ]);
            })
            .build(),
    )
    .await;
    kubelet
        .wait_for_pods("the fleet's two pods", Duration::from_secs(60), |pods| {
            pods.iter().filter(|p| p.namespace == ns).count() == 2
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    start_skewed_worker(&client, &ns).await;
    kubelet
        .wait_for_pods("the skewed worker", Duration::from_secs(60), |pods| {
            pods.iter()
                .any(|p| p.namespace == ns && p.name == SKEWED_POD)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let chaos_started = Instant::now();
    let mut run = Run {
        env,
        client: client.clone(),
        ns: ns.clone(),
        kubelet: &kubelet,
        jobs: jobs.clone(),
        started: chaos_started,
        log: Vec::new(),
        interrupted: BTreeSet::new(),
        seen_failpoints: HashSet::new(),
        log_offsets: HashMap::new(),
        refusal: None,
        frozen: None,
        taken_over: None,
        apiserver_unready: None,
        worker_logs: BTreeSet::new(),
        writes_before_restart: 0,
        max_skew: Duration::ZERO,
        rng,
    };
    run.note(
        "worker clock a minute ahead",
        format!("{SKEWED_POD} (libfaketime +60 s), for the whole run"),
    );
    let durations = plan.durations.clone();
    let create = create_jobs(&jobs, &effects, &durations);
    let drive = run.drive(&plan, &mut operators);
    let ((), ()) = tokio::join!(create, drive);
    let faults_done = chaos_started.elapsed();
    eprintln!("chaos: every fault injected after {faults_done:?}; waiting for the Jobs");

    let finished = wait_for_quiet_success(&jobs).await;
    let wall = chaos_started.elapsed();
    let writes = run.writes_before_restart
        + apiserver_metrics::job_writes(&client)
            .await
            .expect("apiserver metrics")
            .total;

    // The verdict, on the end state.
    let by_name: BTreeMap<String, &Job> = finished.iter().map(|j| (j.name_any(), j)).collect();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong_results = Vec::new();
    for job in &finished {
        let status = job.status.clone().unwrap_or_default();
        *outcomes.entry(format!("{:?}", status.phase)).or_default() += 1;
        let index: usize = job.name_any()[2..].parse().expect("index");
        let own = json!({"sleptMillis": durations[index], "jobUid": job.uid().expect("uid")});
        if status.phase != JobPhase::Succeeded || status.result.as_ref() != Some(&own) {
            wrong_results.push(format!(
                "{}: {:?} {:?}",
                job.name_any(),
                status.phase,
                status.result
            ));
        }
    }
    let effects = effects_by_job(&effects, &ns);
    let mut repeated = 0;
    let mut unexplained = Vec::new();
    for (name, job) in &by_name {
        let attempts = effects.get(name).cloned().unwrap_or_default();
        let last = job.status.as_ref().map_or(0, |s| s.attempt);
        if !attempts.contains(&last) {
            unexplained.push(format!(
                "{name}: no effect for its last attempt {last} ({attempts:?})"
            ));
        }
        for attempt in attempts.iter().filter(|a| **a != last) {
            repeated += 1;
            if !run.interrupted.contains(&(name.clone(), *attempt)) {
                unexplained.push(format!(
                    "{name}: attempt {attempt} left an effect, was not interrupted by a kill, and another attempt ran"
                ));
            }
        }
    }
    let publishes: usize = operators
        .logs
        .iter()
        .map(|log| published_since(log, Timestamp::UNIX_EPOCH).len())
        .sum();
    let frozen = run.frozen.take().expect("the leader was frozen");
    // A publish the frozen leader had begun may complete when it wakes (no
    // check and send are one atomic step); it must begin none after.
    let late = publishes_begun_since(frozen.0.process.log_path(), frozen.1);
    let finished_late = published_since(frozen.0.process.log_path(), frozen.1);
    let taken_over = run.taken_over.expect("another operator took the Lease");
    let received = received(&run.worker_logs);
    let sent_late = sent_after(&received, &frozen.0.identity, taken_over);
    let received_jobs: BTreeSet<&str> = received
        .iter()
        .filter_map(|fields| fields["job"].as_str())
        .collect();

    print_table(&run.log, &outcomes, repeated, publishes, writes, wall, seed);
    eprintln!(
        "chaos: total {:.1} s including start-up",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        finished.len(),
        JOBS,
        "Jobs lost: {} of {JOBS} remain",
        finished.len()
    );
    assert!(
        wrong_results.is_empty(),
        "Jobs without their own success: {wrong_results:#?}"
    );
    assert!(
        unexplained.is_empty(),
        "effects no kill explains: {unexplained:#?}"
    );
    assert!(
        late.is_empty(),
        "{} began publishing after it was frozen: {late:?}",
        frozen.0.identity
    );
    eprintln!(
        "chaos: publishes the frozen leader had begun and that completed when it woke: {finished_late:?}"
    );
    // Judged by Pub/Sub's own publish time on every message a worker got.
    assert_eq!(
        received_jobs.len(),
        JOBS,
        "the workers' logs name a received message for only {} of {JOBS} Jobs",
        received_jobs.len()
    );
    assert!(
        sent_late.is_empty(),
        "Pub/Sub accepted messages from {} after {taken_over}, when another operator took its Lease: {sent_late:#?}",
        frozen.0.identity
    );
    // A restarted apiserver serves before its authorizer has synced, and
    // refuses until then; behind a load balancer that waits for `/readyz`,
    // as in a real cluster, no client would see those answers.
    let unready = run.apiserver_unready.expect("the apiserver was restarted");
    let refused: Vec<String> = operators
        .logs
        .iter()
        .chain(&run.worker_logs)
        .flat_map(|log| {
            // The skewed worker stamps its lines by its own clock.
            let ahead = if log.to_string_lossy().contains(SKEWED_POD) {
                SignedDuration::from_secs(SKEW_SECONDS)
            } else {
                SignedDuration::ZERO
            };
            let window = (unready.0 + ahead, unready.1 + ahead);
            LogSince::whole(log)
                .refused_lines()
                .into_iter()
                .filter(move |line| !logged_within(line, window))
        })
        .collect();
    assert!(
        refused.is_empty(),
        "RBAC refusals outside the apiserver's restart ({} to {}): {refused:#?}",
        unready.0,
        unready.1
    );
    assert!(
        !frozen.0.process.is_running(),
        "{} is still running after it lost the lease",
        frozen.0.identity
    );
    assert!(
        run.max_skew >= Duration::from_secs(50),
        "the skewed worker's claims were at most {:?} ahead: libfaketime did not take",
        run.max_skew
    );
    assert!(
        run.failpoints_done(&plan),
        "not every failpoint was reached (or its attempt cut short by a kill): {:?}",
        run.seen_failpoints
    );
    assert!(
        plan.worker_failpoints
            .iter()
            .any(|key| run.seen_failpoints.contains(key)),
        "no worker was killed between an effect and its outcome: {:?}",
        run.seen_failpoints
    );
}

/// What the seed decides before anything starts.
struct Plan {
    /// Each Job's sleep, in milliseconds.
    durations: Vec<u64>,
    /// The attempt at whose operator failpoint (after its publish, before its
    /// Queued write) the first leader is paused and killed.
    operator_failpoint: String,
    /// The attempts at whose worker failpoint (after the effect, before the
    /// outcome) a worker is paused and killed.
    worker_failpoints: Vec<String>,
    /// The scheduled faults, in time order.
    faults: Vec<(Duration, Fault)>,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillWorker,
    KillLeader,
    RefuseSucceeded,
    AllowSucceeded,
    RestartApiserver,
    RestartEmulator,
    FreezeLeader,
    ThawLeader,
}

impl Plan {
    fn new(rng: &mut fastrand::Rng) -> Self {
        let durations = (0..JOBS).map(|_| rng.u64(500..=3500)).collect();
        let job = |rng: &mut fastrand::Rng, range: std::ops::Range<usize>| {
            failpoint::attempt_key(&format!("j-{}", rng.usize(range)), 1)
        };
        let operator_failpoint = job(rng, 50..150);
        // Three, in case a kill interrupts one of these attempts before
        // it gets there.
        let worker_failpoints = vec![job(rng, 150..350), job(rng, 350..550), job(rng, 550..750)];
        let mut at = |base: f64| Duration::from_secs_f64(base + rng.f64() * 2.0);
        let refuse = at(8.0);
        let freeze = at(36.0);
        let mut faults = vec![
            (at(3.0), Fault::KillWorker),
            (refuse, Fault::RefuseSucceeded),
            (refuse + Duration::from_secs(10), Fault::AllowSucceeded),
            (at(15.0), Fault::KillLeader),
            (at(21.0), Fault::RestartApiserver),
            (at(28.0), Fault::KillWorker),
            (at(31.0), Fault::RestartEmulator),
            (freeze, Fault::FreezeLeader),
            (
                freeze + Duration::from_secs(LEASE_SECONDS + 4),
                Fault::ThawLeader,
            ),
            (at(49.0), Fault::KillWorker),
            (at(53.0), Fault::KillLeader),
        ];
        faults.sort_by_key(|(at, _)| *at);
        Self {
            durations,
            operator_failpoint,
            worker_failpoints,
            faults,
        }
    }
}

/// The operators: two running at any time, one leading.
struct Operators {
    env: &'static TestEnv,
    kubeconfig: PathBuf,
    leases: Api<Lease>,
    running: Vec<Contender>,
    /// The log of every operator started, for the publishes they made.
    logs: Vec<PathBuf>,
    next: usize,
}

impl Operators {
    /// Starts the first operator armed with `failpoint` and waits until it
    /// leads (so that it is the one that reaches it), then a standby.
    async fn start(env: &'static TestEnv, failpoint: &str) -> Self {
        let client = env.control_plane.client().await.expect("client");
        let kubeconfig = operator_kubeconfig(env)
            .await
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        let mut operators = Self {
            env,
            kubeconfig,
            leases: Api::namespaced(client, OPERATOR_NAMESPACE),
            running: Vec::new(),
            logs: Vec::new(),
            next: 0,
        };
        let first = operators.spawn(Some(failpoint.to_owned()));
        wait::until(
            "the first operator to lead",
            Duration::from_secs(30),
            || async {
                match lease_holder(&operators.leases).await? {
                    holder if holder == first => Ok(()),
                    holder => Err(holder),
                }
            },
        )
        .await;
        operators.spawn(None);
        operators
    }

    fn spawn(&mut self, failpoints: Option<String>) -> String {
        let identity = format!("chaos-op-{}", self.next);
        self.next += 1;
        let port = ports::free_loopback_ports(1).expect("port")[0];
        let options = OperatorOptions {
            identity: identity.clone(),
            lease_seconds: LEASE_SECONDS,
            metrics_port: port,
            kubeconfig: self.kubeconfig.clone(),
            failpoints,
        };
        let process = start_operator(self.env, &options)
            .unwrap_or_else(|e| panic!("cannot start {identity}: {}", error_chain(&e)));
        self.logs.push(process.log_path().to_path_buf());
        self.running.push(Contender {
            identity: identity.clone(),
            process,
        });
        identity
    }

    /// Takes the leader out of the running set, once one of the running
    /// operators holds the Lease.
    async fn take_leader(&mut self) -> Contender {
        let index = wait::until("a running leader", Duration::from_secs(30), || async {
            let holder = lease_holder(&self.leases).await?;
            self.running
                .iter()
                .position(|c| c.identity == holder && c.process.is_running())
                .ok_or(format!("{holder} holds the Lease but is not running"))
        })
        .await;
        self.running.remove(index)
    }

    /// Keeps two operators running, as a Deployment of two would: one that
    /// exited by itself (it lost its Lease while the apiserver was away) is
    /// replaced. Returns the identities that exited.
    fn keep_two(&mut self) -> Vec<String> {
        let (alive, exited): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|c| c.process.is_running());
        self.running = alive;
        while self.running.len() < 2 {
            self.spawn(None);
        }
        exited.into_iter().map(|c| c.identity).collect()
    }

    /// Takes out the operator named `identity`.
    fn take(&mut self, identity: &str) -> Option<Contender> {
        let index = self.running.iter().position(|c| c.identity == identity)?;
        Some(self.running.remove(index))
    }
}

/// A line of the run's log.
struct Entry {
    at: Duration,
    what: String,
    detail: String,
    /// A fault injected, rather than something one made happen.
    injected: bool,
}

/// One chaos run in progress: what it did and saw.
struct Run<'a> {
    env: &'static TestEnv,
    client: Client,
    ns: String,
    kubelet: &'a ProcessKubelet,
    jobs: Api<Job>,
    started: Instant,
    /// Faults injected, and what they made happen.
    log: Vec<Entry>,
    /// (Job, attempt) whose worker a kill interrupted.
    interrupted: BTreeSet<(String, i32)>,
    /// Failpoint keys seen reached (and their process killed).
    seen_failpoints: HashSet<String>,
    /// How far each log has been read for failpoints.
    log_offsets: HashMap<PathBuf, u64>,
    refusal: Option<Refusal>,
    /// The frozen leader and when it was frozen.
    frozen: Option<(Contender, Timestamp)>,
    /// When another operator took the Lease from the frozen leader (its
    /// `acquireTime`).
    taken_over: Option<Timestamp>,
    /// From the apiserver's stop until its `/readyz` answered again after
    /// the restart.
    apiserver_unready: Option<(Timestamp, Timestamp)>,
    /// Every worker pod's log seen, the killed ones' included.
    worker_logs: BTreeSet<PathBuf>,
    /// Job writes counted by the apiserver before its restart reset them.
    writes_before_restart: u64,
    /// How far ahead of the test's clock the skewed worker's claims were.
    max_skew: Duration,
    rng: fastrand::Rng,
}

impl Run<'_> {
    /// Injects the planned faults at their times, and kills every process
    /// that reaches a failpoint, until all of them have happened.
    async fn drive(&mut self, plan: &Plan, operators: &mut Operators) {
        let mut faults = plan.faults.iter().peekable();
        let deadline = Instant::now() + Duration::from_secs(150);
        let mut last_look = Instant::now();
        loop {
            self.kill_at_failpoints(operators).await;
            for identity in operators.keep_two() {
                self.saw(
                    "operator exited by itself",
                    format!("{identity} could not renew its Lease; a new one started"),
                );
            }
            if let Some((at, fault)) = faults.peek()
                && self.started.elapsed() >= *at
                && self.inject(*fault, operators).await
            {
                faults.next();
            }
            if last_look.elapsed() >= Duration::from_secs(2) {
                self.look_at_claims().await;
                last_look = Instant::now();
            }
            if faults.peek().is_none() && self.failpoints_done(plan) {
                return;
            }
            if Instant::now() >= deadline {
                let pending = self.pending_failpoints(plan).await;
                panic!(
                    "faults still pending after 150 s: failpoints seen {:?}, next fault {:?}; failpoint Jobs not seen: {pending:#?}",
                    self.seen_failpoints,
                    faults.peek()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether every worker failpoint was reached or its attempt was cut
    /// short by a kill before it could be, and the operator's was reached.
    fn failpoints_done(&self, plan: &Plan) -> bool {
        self.seen_failpoints.contains(&plan.operator_failpoint)
            && plan.worker_failpoints.iter().all(|key| {
                self.seen_failpoints.contains(key)
                    || key.split_once('/').is_some_and(|(job, attempt)| {
                        self.interrupted
                            .contains(&(job.to_owned(), attempt.parse().unwrap_or(0)))
                    })
            })
    }

    /// The worker failpoints neither reached nor cut short, with their Jobs' status.
    async fn pending_failpoints(&self, plan: &Plan) -> Vec<String> {
        let mut pending = Vec::new();
        for key in &plan.worker_failpoints {
            if self.seen_failpoints.contains(key) {
                continue;
            }
            let job = key.split('/').next().unwrap_or_default();
            let status = self.jobs.get(job).await.map(|j| j.status);
            pending.push(format!("{key}: {status:?}"));
        }
        pending
    }

    /// Records a fault injected.
    fn note(&mut self, what: &str, detail: String) {
        self.record(what, detail, true);
    }

    /// Records what a fault made happen.
    fn saw(&mut self, what: &str, detail: String) {
        self.record(what, detail, false);
    }

    fn record(&mut self, what: &str, detail: String, injected: bool) {
        let at = self.started.elapsed();
        eprintln!("chaos: {:>6.1} s  {what}: {detail}", at.as_secs_f64());
        self.log.push(Entry {
            at,
            what: what.to_owned(),
            detail,
            injected,
        });
    }

    /// Injects `fault`; false when it has to wait for something first (and
    /// is tried again on the next tick).
    async fn inject(&mut self, fault: Fault, operators: &mut Operators) -> bool {
        match fault {
            Fault::KillWorker => {
                let pods: Vec<_> = self
                    .kubelet
                    .running_pods()
                    .into_iter()
                    .filter(|p| p.namespace == self.ns)
                    .collect();
                assert!(!pods.is_empty(), "no worker pod is running");
                let pod = pods[self.rng.usize(..pods.len())].clone();
                let held = self.kill_worker(&pod.name, pod.pid).await;
                self.note("worker SIGKILL", format!("{} ({held} Jobs held)", pod.name));
            }
            Fault::KillLeader => {
                let leader = operators.take_leader().await;
                leader.process.kill_hard();
                self.note("operator SIGKILL", format!("leader {}", leader.identity));
            }
            Fault::RefuseSucceeded => {
                self.refusal = Some(
                    refuse(
                        &self.client,
                        &format!("chaos-refuse-succeeded-{}", self.ns),
                        Updates {
                            group: "drover.dev",
                            version: "v1alpha1",
                            resource: "jobs/status",
                            namespace: Some(&self.ns),
                        },
                        "!has(object.status) || !has(object.status.phase) || object.status.phase != 'Succeeded'",
                        "the chaos suite refuses status writes to Succeeded for now",
                    )
                    .await,
                );
                self.note("status writes to Succeeded refused", "for 10 s".into());
            }
            Fault::AllowSucceeded => {
                if let Some(refusal) = self.refusal.take() {
                    refusal.lift().await;
                }
                self.saw("status writes to Succeeded allowed", "again".into());
            }
            Fault::RestartApiserver => {
                self.writes_before_restart = apiserver_metrics::job_writes(&self.client)
                    .await
                    .expect("apiserver metrics before the restart")
                    .total;
                let began = Instant::now();
                let stopped_at = Timestamp::now();
                self.env
                    .control_plane
                    .restart_apiserver()
                    .await
                    .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
                self.apiserver_unready = Some((stopped_at, Timestamp::now()));
                self.note(
                    "kube-apiserver restart",
                    format!(
                        "same etcd, ready again in {:.1} s",
                        began.elapsed().as_secs_f64()
                    ),
                );
            }
            Fault::RestartEmulator => {
                self.env
                    .pubsub
                    .restart()
                    .await
                    .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
                self.note(
                    "Pub/Sub emulator restart",
                    "every topic and message lost".into(),
                );
            }
            Fault::FreezeLeader => {
                let leader = operators.take_leader().await;
                // Frozen only once it acts as leader (not in the middle of
                // taking the Lease over), so that waking up it must stop.
                let log = std::fs::read_to_string(leader.process.log_path()).unwrap_or_default();
                if !log.contains(r#""message":"leading""#) {
                    operators.running.push(leader);
                    return false;
                }
                leader.process.signal(libc::SIGSTOP);
                let identity = leader.identity.clone();
                self.frozen = Some((leader, Timestamp::now()));
                self.note(
                    "operator SIGSTOP",
                    format!("leader {identity}, until another has led for a while"),
                );
            }
            Fault::ThawLeader => {
                let Some((leader, _)) = &self.frozen else {
                    return true;
                };
                // Thawed only once another operator leads: the window is a
                // leader that wakes up to find its Lease gone.
                match lease_holder(&operators.leases).await {
                    Ok(holder) if holder != leader.identity => {
                        self.taken_over = Some(lease_acquired(&operators.leases).await);
                        leader.process.signal(libc::SIGCONT);
                        let detail = format!("{}, after {holder} took the Lease", leader.identity);
                        self.saw("operator SIGCONT", detail);
                    }
                    _ => return false,
                }
            }
        }
        true
    }

    /// Kills, as a crash would, every process paused at a failpoint.
    async fn kill_at_failpoints(&mut self, operators: &mut Operators) {
        let pods: Vec<_> = self
            .kubelet
            .running_pods()
            .into_iter()
            .filter(|p| p.namespace == self.ns)
            .collect();
        for pod in pods {
            self.worker_logs.insert(pod.log_path.clone());
            for key in self.new_failpoints(&pod.log_path) {
                let held = self.kill_worker(&pod.name, pod.pid).await;
                self.note(
                    "worker SIGKILL at failpoint after effect, before outcome",
                    format!("{} at {key} ({held} Jobs held)", pod.name),
                );
            }
        }
        let paused: Vec<(String, String)> = operators
            .running
            .iter()
            .map(|c| (c.identity.clone(), c.process.log_path().to_path_buf()))
            .flat_map(|(identity, log)| {
                self.new_failpoints(&log)
                    .into_iter()
                    .map(move |key| (identity.clone(), key))
            })
            .collect();
        for (identity, key) in paused {
            if let Some(operator) = operators.take(&identity) {
                operator.process.kill_hard();
                self.note(
                    "operator SIGKILL at failpoint after publish, before Queued",
                    format!("{identity} at {key}"),
                );
            }
        }
    }

    /// The failpoints `log` says were reached that this run has not handled.
    /// Only what was appended since the last look is read, up to its last
    /// whole line: the logs grow by megabytes and are looked at five times a
    /// second.
    fn new_failpoints(&mut self, log: &Path) -> Vec<String> {
        let offset = self.log_offsets.entry(log.to_path_buf()).or_default();
        let text = read_from(log, *offset);
        let whole = text.rfind('\n').map_or(0, |end| end + 1);
        *offset += whole as u64;
        let reached: Vec<String> = text[..whole]
            .lines()
            .filter(|line| line.contains("failpoint_reached"))
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter_map(|entry| entry["fields"]["key"].as_str().map(str::to_owned))
            .collect();
        reached
            .into_iter()
            .filter(|key| self.seen_failpoints.insert(key.clone()))
            .collect()
    }

    /// Notes which attempts the pod holds, then kills its process group:
    /// every one of those attempts may leave an effect and run again.
    ///
    /// Listed before and again right after the kill: a claim that lands
    /// between the first list and the kill is only in the second (the
    /// restarted container is still starting then, and claims nothing).
    async fn kill_worker(&mut self, pod: &str, pid: u32) -> usize {
        let mut held: BTreeSet<(String, i32)> = self.held_by(pod).await.into_iter().collect();
        // SAFETY: killpg has no memory-safety preconditions; the kubelet
        // restarts the container like any crash.
        unsafe {
            libc::killpg(pid as libc::pid_t, libc::SIGKILL);
        }
        held.extend(self.held_by(pod).await);
        let count = held.len();
        self.interrupted.extend(held);
        count
    }

    async fn held_by(&self, pod: &str) -> Vec<(String, i32)> {
        let list = wait::until("a list of the Jobs", Duration::from_secs(30), || async {
            self.jobs
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        list.items
            .iter()
            .filter_map(|job| {
                let status = job.status.as_ref()?;
                let claim = status.claim.as_ref()?;
                (claim.pod == pod).then(|| (job.name_any(), status.attempt))
            })
            .collect()
    }

    /// Records how far ahead the skewed worker's claims are, and prints progress.
    async fn look_at_claims(&mut self) {
        let Ok(list) = self.jobs.list(&ListParams::default()).await else {
            return;
        };
        let now = Timestamp::now();
        for job in &list.items {
            if let Some(claim) = job.status.as_ref().and_then(|s| s.claim.as_ref())
                && claim.pod == SKEWED_POD
                && claim.renew_time.0 > now
            {
                let ahead = claim.renew_time.0.duration_since(now).unsigned_abs();
                self.max_skew = self.max_skew.max(ahead);
            }
        }
        let phases = count_phases(&list.items);
        eprintln!(
            "chaos: {:>6.1} s  {phases}",
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// The text of `path` from byte `offset` on; empty if it cannot be read.
fn read_from(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path)
        && file.seek(SeekFrom::Start(offset)).is_ok()
    {
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_ok() {
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    text
}

fn count_phases(jobs: &[Job]) -> String {
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    for job in jobs {
        let phase = job.status.as_ref().map_or(JobPhase::Pending, |s| s.phase);
        *phases.entry(format!("{phase:?}")).or_default() += 1;
    }
    phases
        .iter()
        .map(|(phase, n)| format!("{phase} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a JSON log line's timestamp lies within `window`.
fn logged_within(line: &str, window: (Timestamp, Timestamp)) -> bool {
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|entry| entry["timestamp"].as_str()?.parse::<Timestamp>().ok())
        .is_some_and(|at| window.0 <= at && at <= window.1)
}

/// The Lease's `acquireTime`, written by the operator that took it.
async fn lease_acquired(leases: &Api<Lease>) -> Timestamp {
    let lease = leases.get(LEASE_NAME).await.expect("the Lease");
    lease
        .spec
        .and_then(|spec| spec.acquire_time)
        .map(|t| t.0)
        .expect("the Lease names when it was acquired")
}

/// Every message the workers' logs say they received (`received`: the Job,
/// its attempt, Pub/Sub's publish time and the sender).
fn received(logs: &BTreeSet<PathBuf>) -> Vec<Value> {
    logs.iter()
        .flat_map(|log| {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            text.lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .filter(|entry| entry["fields"]["event"] == "received")
                .map(|entry| entry["fields"].clone())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The messages from `publisher` that Pub/Sub accepted after `after`.
fn sent_after(received: &[Value], publisher: &str, after: Timestamp) -> Vec<String> {
    received
        .iter()
        .filter(|fields| {
            fields["publisher"] == publisher
                && fields["published_at"]
                    .as_str()
                    .and_then(|t| t.parse::<Timestamp>().ok())
                    .is_some_and(|t| t > after)
        })
        .map(Value::to_string)
        .collect()
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// A third worker of the fleet, made from its Deployment's pod template with
/// a clock a minute ahead. Without the ReplicaSet's pod-template-hash label
/// no ReplicaSet adopts it, so the Deployment keeps its own two.
async fn start_skewed_worker(client: &Client, ns: &str) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deployment = wait::until("the worker Deployment", Duration::from_secs(30), || async {
        let list = deployments
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .next()
            .ok_or_else(|| "none yet".to_owned())
    })
    .await;
    let template = deployment.spec.template;
    let mut spec = template.spec.expect("a pod spec");
    let container = spec.containers.first_mut().expect("a container");
    let env = container.env.get_or_insert_with(Vec::new);
    env.extend([
        env_var("LD_PRELOAD", LIBFAKETIME),
        env_var("FAKETIME", &format!("+{SKEW_SECONDS}")),
        // Timers and timeouts keep real time; only the wall clock is off.
        env_var("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ]);
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(SKEWED_POD.into()),
            labels: template.metadata.and_then(|m| m.labels),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    };
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .expect("the skewed worker pod is created");
}

/// Creates the Jobs from eight writers, each create tried until the
/// apiserver stores it (a create whose answer was lost is a 409 later).
async fn create_jobs(jobs: &Api<Job>, effects: &Path, durations: &[u64]) {
    let effects = effects.display().to_string();
    futures::stream::iter(durations.iter().enumerate())
        .for_each_concurrent(8, |(i, millis)| {
            let job = JobBuilder::new(&format!("j-{i}"), FLEET)
                .input(json!({"durationMillis": millis, "effectsDir": effects}))
                .build();
            async move {
                loop {
                    match jobs.create(&PostParams::default(), &job).await {
                        Ok(_) => return,
                        Err(kube::Error::Api(e)) if e.code == 409 => return,
                        Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                    }
                }
            }
        })
        .await;
}

/// Waits until every Job has Succeeded and then nothing about any Job has
/// changed for a quiet period; returns them as they are then.
async fn wait_for_quiet_success(jobs: &Api<Job>) -> Vec<Job> {
    const QUIET: Duration = Duration::from_secs(5);
    const TIMEOUT: Duration = Duration::from_secs(150);
    let deadline = Instant::now() + TIMEOUT;
    let mut unchanged_since: Option<(Vec<String>, Instant)> = None;
    let mut last_state = String::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let list = match jobs.list(&ListParams::default()).await {
            Ok(list) => list,
            Err(e) => {
                last_state = e.to_string();
                continue;
            }
        };
        let succeeded = list
            .items
            .iter()
            .filter(|j| j.status.as_ref().map(|s| s.phase) == Some(JobPhase::Succeeded))
            .count();
        last_state = count_phases(&list.items);
        if succeeded < JOBS {
            let behind: Vec<String> = list
                .items
                .iter()
                .filter(|j| j.status.as_ref().map(|s| s.phase) != Some(JobPhase::Succeeded))
                .take(5)
                .map(|j| format!("{}: {:?}", j.name_any(), j.status))
                .collect();
            last_state = format!("{last_state}; for example {behind:#?}");
            unchanged_since = None;
            continue;
        }
        let versions: Vec<String> = list
            .items
            .iter()
            .map(|j| j.resource_version().unwrap_or_default())
            .collect();
        match &unchanged_since {
            Some((seen, since)) if *seen == versions => {
                if since.elapsed() >= QUIET {
                    return list.items;
                }
            }
            _ => unchanged_since = Some((versions, Instant::now())),
        }
    }
    panic!("not every Job succeeded and stayed so within {TIMEOUT:?}: {last_state}");
}

/// The attempts each Job left an effect for (`<namespace>_<job>_<attempt>`).
fn effects_by_job(dir: &Path, ns: &str) -> BTreeMap<String, Vec<i32>> {
    let mut by_job: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("effects").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&format!("{ns}_")) else {
            continue;
        };
        if let Some((job, attempt)) = rest.rsplit_once('_')
            && let Ok(attempt) = attempt.parse()
        {
            by_job.entry(job.to_owned()).or_default().push(attempt);
        }
    }
    by_job
}

fn print_table(
    log: &[Entry],
    outcomes: &BTreeMap<String, usize>,
    repeated: usize,
    publishes: usize,
    writes: u64,
    wall: Duration,
    seed: u64,
) {
    let per_job = |n: f64| n / JOBS as f64;
    let mut table = format!("\nchaos suite, seed {seed}\n");
    table.push_str(&format!("{:>8}  {:<58}  {}\n", "at (s)", "fault", "on"));
    for entry in log {
        let what = if entry.injected {
            entry.what.clone()
        } else {
            format!("  -> {}", entry.what)
        };
        table.push_str(&format!(
            "{:>8.1}  {what:<58}  {}\n",
            entry.at.as_secs_f64(),
            entry.detail
        ));
    }
    let outcomes = outcomes
        .iter()
        .map(|(phase, n)| format!("{phase} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let injected = log.iter().filter(|e| e.injected).count();
    table.push_str(&format!("faults injected     {injected}\n"));
    table.push_str(&format!("Jobs                {JOBS}\n"));
    table.push_str(&format!("outcomes            {outcomes}\n"));
    table.push_str(&format!(
        "repeated effects    {repeated} (each an attempt a worker kill interrupted)\n"
    ));
    table.push_str(&format!(
        "publishes per Job   {:.2} ({publishes}, from every operator's log)\n",
        per_job(publishes as f64)
    ));
    table.push_str(&format!(
        "writes per Job      {:.2} ({writes} Job writes counted by the apiserver)\n",
        per_job(writes as f64)
    ));
    table.push_str(&format!(
        "wall time           {:.1} s\n",
        wall.as_secs_f64()
    ));
    eprintln!("{table}");
}
