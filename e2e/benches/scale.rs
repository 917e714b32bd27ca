//! What many waiting Jobs cost the operator: 10,000 and then 100,000 Pending
//! Jobs spread over 100 fleets scaled to 0 (each holds 2 published Jobs: one
//! slot plus the prefetch; the rest wait as `Admitted=False`).
//!
//! Printed at each size: the operator's RSS, its CPU seconds per 1,000 Job
//! watch events (counted by the bench's own watch of the same Jobs), the time
//! from each create request to the operator's admission decision (the watch
//! seeing the Job Queued or showing `Admitted=False`), p50 and p99, and the
//! publishes per published Job, after a quiet spell longer than the
//! unclaimed-republish bound (30 s with a 10 s ack deadline): a waiting Job
//! is never republished for waiting.
//!
//! `cargo build -p drover-operator -p drover-worker && cargo bench --profile dev -p drover-e2e --bench scale`
//! (or `--release` builds and `cargo bench -p drover-e2e --bench scale`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_crds::{Job, JobPhase, PipelineWorker};
use drover_e2e::drover::{OperatorOptions, start_operator};
use drover_e2e::latency::{ms, quantile};
use drover_e2e::{TestEnv, error_chain, wait};
use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

const FLEETS: usize = 100;
/// The sizes measured unless the command line names others
/// (`cargo bench ... --bench scale -- 10000`).
const SIZES: [usize; 2] = [10_000, 100_000];
/// Few enough that the apiserver of a small machine keeps up.
const WRITERS: usize = 8;
/// Longer than the unclaimed-republish bound of these fleets (3 x 10 s).
const QUIET: Duration = Duration::from_secs(40);

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run());
    // The process kubelet leaves blocking waits behind; do not wait for them.
    std::process::exit(0);
}

async fn run() {
    let state = std::env::temp_dir().join(format!("drover-bench-scale-{}", std::process::id()));
    let mut progress = |line: &str| eprintln!("bench: {line}");
    let env = TestEnv::start(&state, &mut progress)
        .await
        .unwrap_or_else(|e| panic!("cannot start the test environment: {}", error_chain(&e)));
    let client = env.control_plane.client().await.expect("client");
    // No workers (every fleet is scaled to 0), so no kubelet; a long Lease,
    // so a slow apiserver under 100,000 creates does not end the operator.
    let port = drover_e2e::ports::free_loopback_ports(1)
        .expect("a port")
        .first()
        .copied()
        .expect("a port");
    let kubeconfig = drover_e2e::identity::operator_kubeconfig(&env)
        .await
        .unwrap_or_else(|e| panic!("no operator identity: {}", error_chain(&e)));
    let operator = start_operator(
        &env,
        &OperatorOptions {
            identity: "operator-0".into(),
            lease_seconds: 60,
            metrics_port: port,
            kubeconfig,
            failpoints: None,
        },
    )
    .unwrap_or_else(|e| panic!("cannot start the operator: {}", error_chain(&e)));
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let pid = operator.pid();
    let ns = env
        .control_plane
        .create_namespace("scale")
        .await
        .expect("namespace");
    for f in 0..FLEETS {
        apply_fleet(&client, &ns, &format!("fleet-{f:03}")).await;
    }
    wait_for_queues(&client, &ns).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let seen = Seen::watch(jobs.clone());
    println!(
        "operator at rest with {FLEETS} fleets: RSS {}",
        rss_mib(pid)
    );

    let mut created = 0;
    for size in sizes() {
        let (events_before, cpu_before) = (seen.events(), cpu_seconds(pid));
        let sent = create_jobs(&jobs, created, size).await;
        created = size;
        let decided = seen
            .all_decided(&sent, &operator, Duration::from_secs(1800))
            .await;
        let (events, cpu) = (seen.events() - events_before, cpu_seconds(pid) - cpu_before);
        let mut latencies: Vec<Duration> = sent
            .iter()
            .map(|(name, at)| decided[name].duration_since(*at))
            .collect();
        latencies.sort();
        let republishes_before = publishes(&metrics, Some("republish")).await;
        tokio::time::sleep(QUIET).await;
        let all_publishes = publishes(&metrics, None).await;
        let republishes = publishes(&metrics, Some("republish")).await;
        let published = seen.published();
        println!("{size} Pending Jobs over {FLEETS} fleets:");
        println!("  operator RSS: {}", rss_mib(pid));
        println!(
            "  operator CPU: {:.2} s per 1,000 Job events ({events} events, {cpu:.1} s)",
            cpu * 1000.0 / events.max(1) as f64
        );
        println!(
            "  create -> admission decision: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(quantile(&latencies, 0.50)),
            ms(quantile(&latencies, 0.99)),
            ms(*latencies.last().expect("latencies")),
        );
        println!(
            "  publishes: {all_publishes} for {published} published Jobs ({:.3} per published Job), {} republished in the {}s after",
            all_publishes as f64 / published.max(1) as f64,
            republishes - republishes_before,
            QUIET.as_secs(),
        );
    }
    drop(operator);
    drop(env);
}

/// The Job counts to reach, in order: the numbers on the command line
/// (cargo passes its own `--bench` flag too), or [`SIZES`].
fn sizes() -> Vec<usize> {
    let asked: Vec<usize> = std::env::args().filter_map(|a| a.parse().ok()).collect();
    if asked.is_empty() {
        SIZES.to_vec()
    } else {
        asked
    }
}

/// Resident set of `pid`, from /proc: all of it, and the part that is the
/// process's own memory (heap and stacks) rather than its binary's pages.
fn rss_mib(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    format!(
        "{:.1} MiB (anonymous {:.1} MiB)",
        field("VmRSS:"),
        field("RssAnon:")
    )
}

/// User and system CPU of `pid`, from /proc (clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    (tick(11) + tick(12)) / 100.0
}

async fn publishes(metrics_url: &str, kind: Option<&str>) -> u64 {
    let addr = metrics_url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let (_, text) = drover_e2e::observe::http_get(addr, "/metrics")
        .await
        .expect("operator metrics");
    let prefix = match kind {
        Some(kind) => format!("drover_operator_jobs_published_total{{kind=\"{kind}\"}}"),
        None => "drover_operator_jobs_published_total{".to_owned(),
    };
    text.lines()
        .filter(|line| line.starts_with(&prefix))
        .filter_map(|line| line.rsplit_once(' '))
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}

async fn apply_fleet(client: &kube::Client, ns: &str, name: &str) {
    let fleet = json!({
        "apiVersion": "drover.dev/v1alpha1", "kind": "PipelineWorker",
        "metadata": {"name": name},
        "spec": {
            "pipeline": "sleep",
            "queue": {"topic": format!("{ns}-{name}"), "subscription": format!("{ns}-{name}-sub"),
                      "ackDeadlineSeconds": 10},
            "concurrency": 1,
            "scaling": {"mode": "Manual", "replicas": 0, "maxReplicas": 1},
        },
    });
    Api::<PipelineWorker>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("bench").force(),
            &Patch::Apply(&fleet),
        )
        .await
        .expect("fleet applies");
}

/// Every fleet's queue is in place, so Jobs wait only for admission.
async fn wait_for_queues(client: &kube::Client, ns: &str) {
    let fleets: Api<PipelineWorker> = Api::namespaced(client.clone(), ns);
    wait::until("every fleet's queue", Duration::from_secs(300), || async {
        let list = fleets
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let ready = list
            .items
            .iter()
            .filter(|f| {
                f.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "QueueReady" && c.status == "True")
                })
            })
            .count();
        if ready == FLEETS {
            Ok(())
        } else {
            Err(format!("{ready} of {FLEETS} queues ready"))
        }
    })
    .await;
}

/// Creates Jobs `from..to` round-robin over the fleets from [`WRITERS`]
/// writers; when each create request was sent.
async fn create_jobs(jobs: &Api<Job>, from: usize, to: usize) -> Vec<(String, Instant)> {
    let next = Arc::new(AtomicUsize::new(from));
    let sent = Arc::new(Mutex::new(Vec::with_capacity(to - from)));
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let (jobs, next, sent) = (jobs.clone(), next.clone(), sent.clone());
        writers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    break;
                }
                let name = format!("job-{i:06}");
                let job: Job = serde_json::from_value(json!({
                    "apiVersion": "drover.dev/v1alpha1", "kind": "Job",
                    "metadata": {"name": name},
                    "spec": {"worker": format!("fleet-{:03}", i % FLEETS), "input": {"durationMillis": 0}},
                }))
                .expect("job");
                let at = Instant::now();
                jobs.create(&PostParams::default(), &job)
                    .await
                    .expect("job is created");
                sent.lock().expect("sent").push((name, at));
            }
        });
    }
    while let Some(joined) = writers.join_next().await {
        joined.expect("a writer panicked");
    }
    std::mem::take(&mut *sent.lock().expect("sent"))
}

/// What the bench's watch of the namespace has seen.
#[derive(Clone, Default)]
struct Seen {
    inner: Arc<Mutex<SeenInner>>,
}

#[derive(Default)]
struct SeenInner {
    events: u64,
    /// First time each Job was seen decided: Queued, or `Admitted=False`.
    decided: HashMap<String, Instant>,
    /// Jobs seen past Pending.
    published: std::collections::HashSet<String>,
}

impl Seen {
    fn watch(jobs: Api<Job>) -> Self {
        let seen = Self::default();
        let writer = seen.clone();
        tokio::spawn(async move {
            let mut events = watcher(jobs, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(event) = events.next().await {
                let Ok(job) = event else { continue };
                let now = Instant::now();
                let status = job.status.unwrap_or_default();
                let name = job.metadata.name.unwrap_or_default();
                let waiting = status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Admitted" && c.status == "False");
                let mut inner = writer.lock();
                inner.events += 1;
                if status.phase != JobPhase::Pending {
                    inner.published.insert(name.clone());
                }
                if waiting || status.phase != JobPhase::Pending {
                    inner.decided.entry(name).or_insert(now);
                }
            }
        });
        seen
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SeenInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn events(&self) -> u64 {
        self.lock().events
    }

    fn published(&self) -> usize {
        self.lock().published.len()
    }

    /// When each of `sent` was first seen decided, once all are.
    async fn all_decided(
        &self,
        sent: &[(String, Instant)],
        operator: &drover_e2e::process::ManagedProcess,
        within: Duration,
    ) -> HashMap<String, Instant> {
        wait::until("every Job decided", within, || async {
            assert!(
                operator.is_running(),
                "the operator stopped: {}",
                operator.log_tail(5)
            );
            let inner = self.lock();
            let missing = sent
                .iter()
                .filter(|(n, _)| !inner.decided.contains_key(n))
                .count();
            if missing == 0 {
                Ok(inner.decided.clone())
            } else {
                Err(format!("{missing} of {} not decided", sent.len()))
            }
        })
        .await
    }
}
