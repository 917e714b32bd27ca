//! The Job archive end to end, with a real PostgreSQL server (Debian's
//! `postgresql`), the real control plane, operator, emulator and workers:
//! * 100 Jobs with a 5 s TTL are all in the archive, with their steps,
//!   after their TTL deleted them;
//! * with the database stopped, finished Jobs are not deleted, however long
//!   past their TTL, and the fleet shows `Archived=False`
//!   (`ArchiveUnavailable`) with how many it holds back;
//! * when the database is back, that backlog drains into it and the fleet
//!   shows `Archived=True`;
//! * `kubectl drover history` lists them, filtered by worker and phase.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use drover_crds::{Job, JobPhase, PipelineWorker};
use drover_e2e::drover::{binary, start_drover_for_tests_with_args};
use drover_e2e::postgres::Postgres;
use drover_e2e::refusals::{self, LogSince};
use drover_e2e::{ports, wait};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

const FLEET: &str = "sleeper";
const TTL_SECONDS: i64 = 5;
const MINUTE: Duration = Duration::from_secs(60);

/// Every `n`-th Job of a batch fails (it has one attempt, and fails it).
fn fails(index: usize, n: usize) -> bool {
    index.is_multiple_of(n)
}

/// Creates `count` Jobs named `<prefix>-NNN`; returns name -> (uid, phase it will end in).
async fn create_batch(
    jobs: &Api<Job>,
    prefix: &str,
    count: usize,
    fail_every: usize,
) -> BTreeMap<String, (String, JobPhase)> {
    let mut created = BTreeMap::new();
    for index in 0..count {
        let name = format!("{prefix}-{index:03}");
        let failing = fails(index, fail_every);
        let input = if failing {
            json!({"durationMillis": 10, "failOnAttempts": [1]})
        } else {
            json!({"durationMillis": 10})
        };
        let job = JobBuilder::new(&name, FLEET).input(input).build();
        let job = jobs
            .create(&PostParams::default(), &job)
            .await
            .unwrap_or_else(|e| panic!("Job {name} is not created: {e}"));
        let phase = if failing {
            JobPhase::Failed
        } else {
            JobPhase::Succeeded
        };
        created.insert(name, (job.uid().expect("a uid"), phase));
    }
    created
}

/// The Jobs named `<prefix>-*` the apiserver still holds.
async fn remaining(jobs: &Api<Job>, prefix: &str) -> Vec<Job> {
    jobs.list(&ListParams::default())
        .await
        .expect("list Jobs")
        .items
        .into_iter()
        .filter(|j| j.name_any().starts_with(&format!("{prefix}-")))
        .collect()
}

/// What the archive holds for `namespace`: name -> (uid, phase, steps).
async fn archived(url: &str, namespace: &str) -> BTreeMap<String, (String, String, usize)> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the archive");
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT name, uid, phase, job FROM drover_archived_jobs WHERE namespace = $1",
            &[&namespace],
        )
        .await
        .expect("read the archive");
    rows.iter()
        .map(|row| {
            let job: Job = serde_json::from_value(row.get(3)).expect("an archived Job");
            let steps = job.status.map_or(0, |s| s.steps.len());
            (row.get(0), (row.get(1), row.get(2), steps))
        })
        .collect()
}

fn archived_condition(fleet: &PipelineWorker) -> Option<Condition> {
    fleet
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Archived")
        .cloned()
}

async fn wait_for_archived(
    fleets: &Api<PipelineWorker>,
    status: &str,
    reason: &str,
    message_part: &str,
    timeout: Duration,
) -> Condition {
    wait::until(
        &format!("the fleet to show Archived={status} ({reason}, \"{message_part}\")"),
        timeout,
        || async {
            let fleet = fleets.get(FLEET).await.map_err(|e| e.to_string())?;
            match archived_condition(&fleet) {
                Some(c)
                    if c.status == status
                        && c.reason == reason
                        && c.message.contains(message_part) =>
                {
                    Ok(c)
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// Runs `kubectl-drover -n <namespace> args...` against the test cluster.
async fn cli(kubeconfig: &std::path::Path, namespace: &str, args: &[&str]) -> std::process::Output {
    let path = binary("kubectl-drover").unwrap_or_else(|e| panic!("{e}"));
    let output = tokio::process::Command::new(&path)
        .arg("-n")
        .arg(namespace)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output();
    let output = tokio::time::timeout(MINUTE, output)
        .await
        .unwrap_or_else(|_| panic!("kubectl-drover {args:?} did not finish in 1 min"))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    eprintln!(
        "$ kubectl-drover {}\n{}{}(exit {:?})",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        output.status.code()
    );
    output
}

fn names_in(page: &Value) -> Vec<String> {
    let mut names: Vec<String> = page["jobs"]
        .as_array()
        .expect("a page of Jobs")
        .iter()
        .map(|j| {
            j["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn finished_jobs_are_archived_before_deletion_and_kept_while_the_database_is_down() {
    let env = drover_e2e::shared().await;
    let mut postgres = Postgres::start(&env.control_plane.state_dir().join("archive"))
        .await
        .unwrap_or_else(|e| panic!("cannot start PostgreSQL: {}", drover_e2e::error_chain(&e)));
    let url = postgres.url();
    let history_port = ports::free_loopback_ports(1).expect("a port")[0];
    // The apiserver proxies only to addresses an EndpointSlice may hold,
    // never loopback: the history endpoint listens on this host's address.
    let host = host_address();
    let operator_args = vec![
        format!("--archive-database-url={url}"),
        format!("--archive-addr={host}:{history_port}"),
    ];
    let drover = start_drover_for_tests_with_args(env, operator_args)
        .await
        .unwrap_or_else(|e| panic!("cannot start Drover: {}", drover_e2e::error_chain(&e)));
    let operator_log = LogSince::now(drover.operator.log_path());
    let client = env.control_plane.client().await.expect("client");
    let namespace = env
        .control_plane
        .create_namespace("archive")
        .await
        .expect("namespace");
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let fleets: Api<PipelineWorker> = Api::namespaced(client.clone(), &namespace);
    let fleet = PipelineWorkerBuilder::sleep(FLEET)
        .queue(
            &format!("{namespace}-jobs"),
            &format!("{namespace}-jobs-sub"),
        )
        .concurrency(10)
        .replicas(1, 3)
        .max_attempts(1)
        .ttl_seconds_after_finished(TTL_SECONDS)
        .build();
    drover_e2e::drover::apply_fleet(&client, &namespace, fleet).await;
    wait_for_archived(&fleets, "True", "Archiving", "", MINUTE).await;

    // 1. 100 Jobs, 10 of which fail: each is deleted after its TTL, and
    //    each is in the archive, with its steps, by then.
    let first = create_batch(&jobs, "a", 100, 10).await;
    wait::until(
        "the 100 Jobs to be deleted after their TTL",
        4 * MINUTE,
        || async {
            let left = remaining(&jobs, "a").await.len();
            if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} left"))
            }
        },
    )
    .await;
    let stored = archived(&url, &namespace).await;
    assert_eq!(stored.len(), 100, "{stored:?}");
    for (name, (uid, phase)) in &first {
        let (stored_uid, stored_phase, steps) = stored
            .get(name)
            .unwrap_or_else(|| panic!("{name} was deleted without being archived"));
        assert_eq!(stored_uid, uid, "{name}");
        assert_eq!(stored_phase, &format!("{phase:?}"), "{name}");
        assert!(*steps >= 1, "{name} was archived without its steps");
    }

    // 2. The database goes away: the next Jobs finish and stay, past their
    //    TTL, and the fleet says why.
    postgres.stop();
    let second = create_batch(&jobs, "b", 20, 5).await;
    let finished = wait::until("the 20 Jobs to finish", 2 * MINUTE, || async {
        let left = remaining(&jobs, "b").await;
        let unfinished = left
            .iter()
            .filter(|j| !j.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
            .count();
        if unfinished == 0 {
            Ok(left)
        } else {
            Err(format!("{unfinished} unfinished"))
        }
    })
    .await;
    // A quiet period well past every TTL: nothing may be deleted.
    let last_finished = finished
        .iter()
        .filter_map(|j| j.status.as_ref()?.finished_at.as_ref().map(|t| t.0))
        .max()
        .unwrap_or_else(k8s_openapi::jiff::Timestamp::now);
    let past_ttl = last_finished
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
            TTL_SECONDS + 15,
        ))
        .expect("a time");
    while k8s_openapi::jiff::Timestamp::now() < past_ttl {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let kept = remaining(&jobs, "b").await;
    let gone: Vec<&String> = second
        .keys()
        .filter(|name| !kept.iter().any(|j| &j.name_any() == *name))
        .collect();
    assert!(
        gone.is_empty(),
        "{} Jobs were deleted while the archive could not take them: {gone:?}",
        gone.len()
    );
    assert!(
        kept.iter()
            .all(|j| j.status.as_ref().is_some_and(|s| s.phase.is_terminal())),
        "every kept Job is finished"
    );
    let condition = wait_for_archived(
        &fleets,
        "False",
        "ArchiveUnavailable",
        "20 finished Jobs",
        MINUTE,
    )
    .await;
    eprintln!("Archived condition while down: {}", condition.message);
    // And so does the operator's metric that the DroverArchiveUnavailable alert reads.
    let held_back = format!(
        "drover_fleet_archive_held_back{{namespace=\"{namespace}\",worker=\"{FLEET}\"}} 20"
    );
    let metrics_addr = drover
        .operator_metrics
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_owned();
    wait::until(
        "the operator's metrics to count 20 held back",
        MINUTE,
        || async {
            let (_, text) = drover_e2e::observe::http_get(&metrics_addr, "/metrics").await?;
            if text.contains(&held_back) {
                Ok(())
            } else {
                Err(text
                    .lines()
                    .filter(|l| l.starts_with("drover_fleet_archive_held_back"))
                    .collect::<Vec<_>>()
                    .join("; "))
            }
        },
    )
    .await;

    // 3. The database is back: the backlog drains into it.
    let back = Instant::now();
    postgres.restart().await.expect("restart PostgreSQL");
    wait::until(
        "the held-back Jobs to be archived and deleted",
        MINUTE,
        || async {
            let left = remaining(&jobs, "b").await.len();
            if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} left"))
            }
        },
    )
    .await;
    eprintln!(
        "the backlog of 20 drained {:.1} s after the database came back",
        back.elapsed().as_secs_f64()
    );
    wait_for_archived(&fleets, "True", "Archiving", "", MINUTE).await;
    let stored = archived(&url, &namespace).await;
    assert_eq!(stored.len(), 120);
    for (name, (uid, phase)) in &second {
        let (stored_uid, stored_phase, _) = stored
            .get(name)
            .unwrap_or_else(|| panic!("{name} was deleted without being archived"));
        assert_eq!((stored_uid, stored_phase), (uid, &format!("{phase:?}")));
    }

    // 4. `kubectl drover history` reads them back, by phase and worker.
    let kubeconfig = env.control_plane.kubeconfig_path();
    let archive_url = format!("--archive-url=http://{host}:{history_port}");
    let failed = cli(
        kubeconfig,
        &namespace,
        &[
            "history",
            "-w",
            FLEET,
            "--phase",
            "Failed",
            "-o",
            "json",
            &archive_url,
        ],
    )
    .await;
    assert!(failed.status.success());
    let page: Value = serde_json::from_slice(&failed.stdout).expect("JSON");
    let mut expected: Vec<String> = first
        .iter()
        .chain(&second)
        .filter(|(_, (_, phase))| *phase == JobPhase::Failed)
        .map(|(name, _)| name.clone())
        .collect();
    expected.sort();
    assert_eq!(names_in(&page), expected);
    assert_eq!(page["truncated"], false);
    let job = &page["jobs"][0];
    assert_eq!(job["status"]["error"]["reason"], "MaxAttemptsExceeded");

    let everything = cli(
        kubeconfig,
        &namespace,
        &[
            "history",
            "--since",
            "1h",
            "--limit",
            "1000",
            "-o",
            "json",
            &archive_url,
        ],
    )
    .await;
    let page: Value = serde_json::from_slice(&everything.stdout).expect("JSON");
    assert_eq!(names_in(&page).len(), 120);

    let other_worker = cli(
        kubeconfig,
        &namespace,
        &["history", "-w", "nobody", "-o", "json", &archive_url],
    )
    .await;
    let page: Value = serde_json::from_slice(&other_worker.stdout).expect("JSON");
    assert!(names_in(&page).is_empty());

    let table = cli(
        kubeconfig,
        &namespace,
        &["history", "--phase", "Failed", "--limit", "3", &archive_url],
    )
    .await;
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("NAME"), "{text}");
    assert_eq!(text.lines().count(), 4, "a header and 3 Jobs:\n{text}");
    assert!(text.contains("MaxAttemptsExceeded"), "{text}");
    assert!(
        String::from_utf8_lossy(&table.stderr).contains("more Jobs match"),
        "a truncated page says so"
    );

    // 5. In a cluster the plugin reads it through the apiserver's service
    //    proxy, as a user who holds only the chart's history-reader Role.
    let reader = history_reader_kubeconfig(env, &client, host, history_port).await;
    let proxied = cli(
        &reader,
        &namespace,
        &["history", "-w", FLEET, "--phase", "Failed", "-o", "json"],
    )
    .await;
    assert!(proxied.status.success(), "{proxied:?}");
    let page: Value = serde_json::from_slice(&proxied.stdout).expect("JSON");
    assert_eq!(names_in(&page), expected);
    // That Role opens that port's proxy and nothing else.
    let jobs_as_reader = cli(&reader, &namespace, &["get"]).await;
    assert!(!jobs_as_reader.status.success());
    assert!(
        String::from_utf8_lossy(&jobs_as_reader.stderr).contains("forbidden"),
        "{jobs_as_reader:?}"
    );

    refusals::assert_none(&format!("namespace {namespace}"), &[operator_log]);
}

/// This host's address on its default route (never loopback).
fn host_address() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
    // No packet is sent: connecting a UDP socket only picks the route.
    socket
        .connect("192.0.2.1:9")
        .and_then(|()| socket.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .expect("this test needs an address other than loopback (a default route)")
}

/// Stands the local operator process in for the chart's operator pod behind
/// the chart's archive Service (`drover-archive`, port `archive`), applies
/// the chart's `drover-history-reader` Role as `helm template` renders it,
/// and writes a kubeconfig for a ServiceAccount bound to it alone.
async fn history_reader_kubeconfig(
    env: &drover_e2e::TestEnv,
    admin: &kube::Client,
    host: std::net::IpAddr,
    port: u16,
) -> std::path::PathBuf {
    use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    use kube::api::{Patch, PatchParams};

    let ns = drover_e2e::identity::OPERATOR_NAMESPACE;
    let apply = PatchParams::apply("drover-e2e").force();
    // The chart's Role for release `drover`.
    let mut progress = |line: &str| eprintln!("{line}");
    let helm = drover_e2e::testenv::ensure_helm(&mut progress).expect("helm");
    let chart = drover_e2e::workspace_root().join("charts/drover");
    let rendered = std::process::Command::new(helm)
        .args(["template", "drover"])
        .arg(&chart)
        .args(["-n", ns, "--show-only", "templates/rbac.yaml"])
        .args(["--set", "archive.enabled=true"])
        .args(["--set", "archive.database.secretName=archive-db"])
        .output()
        .expect("helm template");
    assert!(rendered.status.success(), "{rendered:?}");
    let text = String::from_utf8_lossy(&rendered.stdout).into_owned();
    let role: Role = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| serde::Deserialize::deserialize(doc).ok())
        .filter_map(|doc: Value| serde_json::from_value::<Role>(doc).ok())
        .find(|r| r.metadata.name.as_deref() == Some("drover-history-reader"))
        .expect("the chart renders the history-reader Role");
    Api::<Role>::namespaced(admin.clone(), ns)
        .patch("drover-history-reader", &apply, &Patch::Apply(&role))
        .await
        .expect("apply the Role");

    // A Pod that nobody runs, whose address is the operator process's.
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "drover-archive-standin", "labels": {"app": "archive-standin"}},
        "spec": {"schedulerName": "nobody", "containers": [{"name": "operator", "image": "drover-operator:dev"}]}
    }))
    .expect("a Pod");
    let pods = Api::<Pod>::namespaced(admin.clone(), ns);
    let pod = pods
        .patch("drover-archive-standin", &apply, &Patch::Apply(&pod))
        .await
        .expect("create the stand-in Pod");
    pods.patch_status(
        "drover-archive-standin",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"podIP": host.to_string(), "podIPs": [{"ip": host.to_string()}]}}),
        ),
    )
    .await
    .expect("give the stand-in its address");
    let service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "drover-archive"},
        "spec": {"ports": [{"name": "archive", "port": 8082, "targetPort": port}]}
    }))
    .expect("a Service");
    Api::<Service>::namespaced(admin.clone(), ns)
        .patch("drover-archive", &apply, &Patch::Apply(&service))
        .await
        .expect("create the archive Service");
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "drover-archive-standin", "labels": {
            "kubernetes.io/service-name": "drover-archive",
            "endpointslice.kubernetes.io/managed-by": "drover-e2e"}},
        "addressType": if host.is_ipv4() { "IPv4" } else { "IPv6" },
        "endpoints": [{"addresses": [host.to_string()], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "name": "drover-archive-standin", "namespace": ns, "uid": pod.uid()}}],
        "ports": [{"name": "archive", "port": port, "protocol": "TCP"}]
    }))
    .expect("an EndpointSlice");
    Api::<EndpointSlice>::namespaced(admin.clone(), ns)
        .patch("drover-archive-standin", &apply, &Patch::Apply(&slice))
        .await
        .expect("create the EndpointSlice");

    let account: ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "history-reader"}
    }))
    .expect("a ServiceAccount");
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .patch("history-reader", &apply, &Patch::Apply(&account))
        .await
        .expect("create the ServiceAccount");
    let binding: RoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "history-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "drover-history-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "history-reader", "namespace": ns}]
    }))
    .expect("a RoleBinding");
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .patch("history-reader", &apply, &Patch::Apply(&binding))
        .await
        .expect("bind the Role");
    let path = env
        .control_plane
        .state_dir()
        .join("history-reader.kubeconfig");
    drover_e2e::identity::write_token_kubeconfig(
        admin,
        env.control_plane.kubeconfig_path(),
        &path,
        ns,
        "history-reader",
        None,
    )
    .await
    .expect("a kubeconfig of the reader");
    path
}
