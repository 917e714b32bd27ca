//! A real Prometheus (Debian's package) scrapes the operator and the worker
//! pods while Jobs run, fail, retry, dead-letter and lose their worker, and
//! evaluates the chart's rules. Every dashboard query and every recorded
//! series an alert reads must return series; the alerts this workload should
//! trip must be pending or firing.
//!
//! Discovery: the operator is a static target (the harness runs it as a
//! process on a port it chose). Worker pods come and go, and Debian builds
//! Prometheus without `kubernetes_sd_configs`, so the test keeps a
//! `file_sd_configs` file up to date from the apiserver's list of worker pods
//! (label `app.kubernetes.io/name=drover-worker`, as the chart's PodMonitor
//! selects), with the target labels that PodMonitor sets (`namespace`, `pod`,
//! `container`, and `worker` from the pod label `drover.dev/pipeline-worker`).
//! That also proves those labels are all the rules and the dashboard need.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use drover_crds::Job;
use drover_e2e::drover::{apply_fleet, create_job, drover_test};
use drover_e2e::observe::{self, chart_dir, helm, prometheus, run};
use drover_e2e::{ManagedProcess, wait};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use kube::api::Api;
use serde_json::{Value, json};

const FLEET: &str = "sleeper";

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_sees_every_dashboard_query_and_alert_signal() {
    // Prerequisites first, so a missing tool fails at once.
    let prometheus_bin = prometheus();
    let helm = helm();
    let test = drover_test("observe").await;
    let (env, drover, client, ns) = test.parts();
    let state = env
        .control_plane
        .state_dir()
        .join(format!("prometheus-{ns}"));
    std::fs::create_dir_all(&state).expect("prometheus dir");

    // The chart's rules, as its PrometheusRule renders them.
    let rendered = run(
        &helm,
        &[
            "template",
            "drover",
            &chart_dir().display().to_string(),
            "--set",
            "prometheusRule.enabled=true",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let rule_file = observe::rule_file_from_rendered(&rendered).unwrap_or_else(|e| panic!("{e}"));
    let rules = observe::rules(&rule_file).expect("rules");
    std::fs::write(state.join("rules.yaml"), &rule_file).expect("rules file");

    let operator_target = drover
        .operator_metrics
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_owned();
    let targets = state.join("workers.json");
    write_worker_targets(&client, &ns, &targets).await;
    tokio::spawn(keep_worker_targets(
        client.clone(),
        ns.clone(),
        targets.clone(),
    ));
    let prometheus_addr =
        start_prometheus(&prometheus_bin, &state, &operator_target, &targets).await;

    // One worker pod, so the one that is killed also runs Jobs after its restart.
    let fleet = PipelineWorkerBuilder::sleep(FLEET)
        .queue(&format!("{ns}-jobs"), &format!("{ns}-jobs-sub"))
        .dead_letter_topic(&format!("{ns}-dead"))
        .ack_deadline_seconds(10)
        .concurrency(4)
        .replicas(1, 1)
        .jobs_per_replica(4)
        .max_attempts(2)
        .backoff(1, 2.0, 2);
    apply_fleet(&client, &ns, fleet.build()).await;
    // A fleet whose topic does not exist (and may not be created): publishing
    // its Job fails, which is what the reconcile-error panel shows.
    let broken = PipelineWorkerBuilder::sleep("nowhere")
        .queue(&format!("{ns}-missing"), &format!("{ns}-missing-sub"))
        .existing_queue()
        .replicas(0, 1);
    apply_fleet(&client, &ns, broken.build()).await;

    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let create = |name: String, worker: &'static str, input: Value| {
        let job = JobBuilder::new(&name, worker).input(input).build();
        create_job(&client, &ns, job)
    };
    create(
        "unpublishable".into(),
        "nowhere",
        json!({"durationMillis": 10}),
    )
    .await;

    // Prometheus must see the worker before any Job runs: a counter only
    // shows an increase once a scrape has seen it before.
    wait_for_series(
        &prometheus_addr,
        "up{job=\"drover-workers\", worker=\"sleeper\"} == 1",
    )
    .await;

    // Two waves of Jobs that succeed, retry once, fail for good and (wave 2)
    // dead-letter after maxAttempts, with a scrape between them.
    let wave = |tag: &'static str| {
        let create = &create;
        async move {
            let mut names = Vec::new();
            for i in 0..4 {
                names.push(format!("ok-{tag}-{i}"));
                create(
                    format!("ok-{tag}-{i}"),
                    FLEET,
                    json!({"durationMillis": 300}),
                )
                .await;
            }
            names.push(format!("retried-{tag}"));
            create(
                format!("retried-{tag}"),
                FLEET,
                json!({"durationMillis": 200, "failOnAttempts": [1]}),
            )
            .await;
            names.push(format!("broken-{tag}"));
            create(
                format!("broken-{tag}"),
                FLEET,
                json!({"durationMillis": 100, "failOnAttempts": [1], "failRetryable": false}),
            )
            .await;
            names
        }
    };
    let mut all = wave("a").await;
    wait_terminal(&jobs, &all).await;
    wait_for_series(
        &prometheus_addr,
        "drover_worker_job_outcomes_total{outcome=\"failed\"} == 1",
    )
    .await;
    all.extend(wave("b").await);
    all.push("dead".into());
    create(
        "dead".into(),
        FLEET,
        json!({"durationMillis": 100, "failOnAttempts": [1, 2]}),
    )
    .await;
    wait_terminal(&jobs, &all).await;
    wait_for_series(
        &prometheus_addr,
        "drover_worker_job_outcomes_total{outcome=\"failed\"} == 2",
    )
    .await;

    // A Job whose worker is SIGKILLed mid-run: the watchdog requeues it
    // (WorkerLost) and the kubelet restarts the process, whose counters start
    // again from zero.
    create("victim".into(), FLEET, json!({"durationMillis": 6000})).await;
    all.push("victim".into());
    let running = wait::until("the victim Job to run", Duration::from_secs(90), || async {
        let job = jobs.get("victim").await.map_err(|e| e.to_string())?;
        let status = job.status.unwrap_or_default();
        match status.claim {
            Some(claim) if status.phase == drover_crds::JobPhase::Running => Ok(claim.pod),
            _ => Err(format!("{:?}", status.phase)),
        }
    })
    .await;
    let pods = drover.kubelet.running_pods();
    let victim = pods
        .iter()
        .find(|p| p.namespace == ns && p.name == running)
        .unwrap_or_else(|| panic!("pod {running} is not running: {pods:?}"));
    let pid = i32::try_from(victim.pid).expect("pid");
    // SAFETY: kill(2) of the process group the kubelet started for the pod.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    drover
        .kubelet
        .wait_for_pods(
            "the killed worker to restart",
            Duration::from_secs(60),
            |pods| {
                pods.iter()
                    .any(|p| p.name == running && p.restart_count >= 1)
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..4 {
        all.push(format!("after-{i}"));
        create(format!("after-{i}"), FLEET, json!({"durationMillis": 300})).await;
    }
    wait_terminal(&jobs, &all).await;

    // Every dashboard query returns series.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(observe::dashboard_path()).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let queries = observe::check_dashboard(&dashboard).unwrap_or_else(|e| panic!("{e}"));
    let mut checks: Vec<(String, String)> = queries
        .iter()
        .map(|q| {
            (
                format!("dashboard panel {:?} query {}", q.panel, q.ref_id),
                observe::instantiate(&q.expr, &ns, "5m"),
            )
        })
        .collect();
    // Every recording rule, and every recorded series an alert reads.
    let mut alert_inputs = BTreeSet::new();
    for rule in &rules {
        match rule {
            observe::Rule::Record { name, .. } => {
                checks.push((format!("recording rule {name}"), name.clone()));
            }
            observe::Rule::Alert { name, expr } => {
                let inputs = observe::recorded_series(expr);
                assert!(
                    !inputs.is_empty(),
                    "alert {name} reads no recorded series: {expr}"
                );
                alert_inputs.extend(inputs);
            }
        }
    }
    let recorded: BTreeSet<&str> = rules
        .iter()
        .filter_map(|r| match r {
            observe::Rule::Record { name, .. } => Some(name.as_str()),
            observe::Rule::Alert { .. } => None,
        })
        .collect();
    for input in &alert_inputs {
        assert!(
            recorded.contains(input.as_str()),
            "an alert reads {input}, which no rule records"
        );
    }
    // The alerts this workload must trip: 7 of about 25 attempts failed, and a
    // worker restarted.
    checks.push((
        "alert DroverJobErrorRateHigh pending or firing".into(),
        format!(
            "ALERTS{{alertname=\"DroverJobErrorRateHigh\", namespace=\"{ns}\", worker=\"{FLEET}\"}}"
        ),
    ));
    checks.push((
        "alert DroverWorkerRestarting firing for the killed pod".into(),
        format!("ALERTS{{alertname=\"DroverWorkerRestarting\", alertstate=\"firing\", pod=\"{running}\"}}"),
    ));
    checks.push((
        "the watchdog requeue of the killed worker's Job".into(),
        "drover_operator_job_outcomes_total{outcome=\"retry\", reason=\"WorkerLost\"} >= 1".into(),
    ));

    let started = Instant::now();
    let mut missing = Vec::new();
    for (what, promql) in &checks {
        // Rules evaluate every second and rates need two scrapes: give each
        // query a little time before calling it empty.
        let deadline = Instant::now() + Duration::from_secs(45);
        let outcome = loop {
            let result = observe::query(&prometheus_addr, promql).await;
            match &result {
                Ok(series) if !series.is_empty() => break result,
                Err(e) if e.contains("bad_data") => break result,
                _ if Instant::now() >= deadline => break result,
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        match outcome {
            Ok(series) if !series.is_empty() => {
                eprintln!("ok: {what}: {} series", series.len());
            }
            Ok(_) => missing.push(format!("{what}: no series for {promql}")),
            Err(e) => missing.push(format!("{what}: {promql}: {e}")),
        }
    }
    eprintln!(
        "{} queries checked in {:.1} s",
        checks.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        missing.is_empty(),
        "queries without series:\n{}\nPrometheus log: {}",
        missing.join("\n"),
        state.join("prometheus.log").display()
    );
}

/// Waits until `promql` returns a series.
async fn wait_for_series(prometheus: &str, promql: &str) {
    wait::until(
        &format!("Prometheus to return {promql}"),
        Duration::from_secs(60),
        || async {
            match observe::query(prometheus, promql).await {
                Ok(series) if !series.is_empty() => Ok(()),
                Ok(_) => Err("no series".to_owned()),
                Err(e) => Err(e),
            }
        },
    )
    .await;
}

/// Waits until every named Job is finished.
async fn wait_terminal(jobs: &Api<Job>, names: &[String]) {
    wait::until("the Jobs to finish", Duration::from_secs(180), || async {
        let mut open = Vec::new();
        for name in names {
            let job = jobs.get(name).await.map_err(|e| e.to_string())?;
            let phase = job.status.unwrap_or_default().phase;
            if !phase.is_terminal() {
                open.push(format!("{name}: {phase:?}"));
            }
        }
        if open.is_empty() {
            Ok(())
        } else {
            Err(open.join(", "))
        }
    })
    .await
}

/// Rewrites the worker targets twice a second (Prometheus rereads the file
/// when it changes).
async fn keep_worker_targets(client: kube::Client, namespace: String, path: std::path::PathBuf) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        write_worker_targets(&client, &namespace, &path).await;
    }
}

/// The running worker pods of `namespace` as a file_sd target list, with the
/// labels the chart's PodMonitor gives them.
async fn write_worker_targets(client: &kube::Client, namespace: &str, path: &Path) {
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let Ok(list) = pods
        .list(&kube::api::ListParams::default().labels("app.kubernetes.io/name=drover-worker"))
        .await
    else {
        return;
    };
    let mut groups = Vec::new();
    for pod in list.items {
        let status = pod.status.clone().unwrap_or_default();
        let (Some(ip), Some("Running")) = (status.pod_ip, status.phase.as_deref()) else {
            continue;
        };
        let Some(container) = pod.spec.as_ref().and_then(|s| s.containers.first()) else {
            continue;
        };
        let Some(port) = container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("http"))
        else {
            continue;
        };
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        groups.push(json!({
            "targets": [format!("{ip}:{}", port.container_port)],
            "labels": {
                "namespace": namespace,
                "pod": pod.metadata.name.clone().unwrap_or_default(),
                "container": container.name,
                "worker": labels.get("drover.dev/pipeline-worker").cloned().unwrap_or_default(),
            },
        }));
    }
    let text = Value::Array(groups).to_string();
    if std::fs::read_to_string(path).ok().as_deref() == Some(text.as_str()) {
        return;
    }
    // Atomic, so Prometheus never reads half a file.
    let partial = path.with_extension("json.partial");
    if std::fs::write(&partial, text).is_ok() {
        let _ = std::fs::rename(&partial, path);
    }
}

/// Starts Prometheus on a free loopback port with the rules in
/// `state/rules.yaml`; returns its `host:port` once it is ready.
async fn start_prometheus(bin: &Path, state: &Path, operator: &str, targets: &Path) -> String {
    let port = drover_e2e::ports::free_loopback_ports(1).expect("a free port")[0];
    let addr = format!("127.0.0.1:{port}");
    let config = format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [{rules}]
scrape_configs:
  - job_name: drover-operator
    # The operator's metrics carry the fleet's namespace themselves.
    honor_labels: true
    static_configs: [{{targets: ["{operator}"]}}]
  - job_name: drover-workers
    file_sd_configs: [{{files: ["{targets}"], refresh_interval: 1s}}]
"#,
        rules = state.join("rules.yaml").display(),
        targets = targets.display(),
    );
    let config_path = state.join("prometheus.yml");
    std::fs::write(&config_path, config).expect("prometheus.yml");
    let mut command = Command::new(bin);
    command
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            state.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=info");
    let process = ManagedProcess::spawn("prometheus", command, &state.join("prometheus.log"))
        .unwrap_or_else(|e| panic!("cannot start prometheus: {e}"));
    let ready = wait::until(
        "Prometheus to be ready",
        Duration::from_secs(60),
        || async {
            if !process.is_running() {
                return Ok(false);
            }
            match observe::http_get(&addr, "/-/ready").await {
                Ok((200, _)) => Ok(true),
                Ok((status, body)) => Err(format!("{status} {body}")),
                Err(e) => Err(e),
            }
        },
    )
    .await;
    assert!(ready, "prometheus exited:\n{}", process.log_tail(40));
    // Lives as long as the test binary (and dies with it).
    std::mem::forget(process);
    addr
}
