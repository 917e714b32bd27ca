//! The trust model end to end, with the operator and the workers running as
//! their own ServiceAccounts: a Job reaches only what its fleet allows, a
//! fleet never takes another's queue, a worker cannot read Secrets or other
//! fleets, and no Secret value reaches a log, a Job status or an Event.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use drover_crds::{FailureReason, Job, JobPhase, PipelineWorker};
use drover_e2e::drover::{DroverTest, apply_fleet, create_job, drover_test};
use drover_e2e::wait;
use drover_testkit::llm::{Reply, ScriptedLlm};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Event, Secret, Service};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// A TCP listener that counts the connections it accepts (and closes them).
struct CountingListener {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl CountingListener {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", 0))
            .await
            .expect("a local listener");
        let port = listener.local_addr().expect("its address").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Self { port, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// This machine's name, which its own resolver maps to loopback: a host a
/// fleet may list as a prefix, whose address only the worker sees.
fn loopback_hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("the host name")
        .trim()
        .to_owned();
    let resolved: Vec<std::net::SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 0))
            .map(Iterator::collect)
            .unwrap_or_default();
    assert!(
        !resolved.is_empty() && resolved.iter().all(|a| a.ip().is_loopback()),
        "the test needs a host name that resolves to loopback only; {name} resolves to {resolved:?}"
    );
    name
}

fn episode(main: &str) -> Value {
    json!({
        "episodeId": "1", "mainUrl": main, "template": {},
        "outputUrl": "s3://media/out/1.mp3",
    })
}

async fn failed(jobs: &Api<Job>, name: &str) -> drover_crds::JobStatus {
    let status = wait::job_finished(jobs, name, Duration::from_secs(60)).await;
    assert_eq!(status.phase, JobPhase::Failed, "{name}: {status:?}");
    status
}

#[tokio::test]
async fn hostile_jobs_fail_as_invalid_input_and_reach_nothing() {
    let t = drover_test("trust-hostile").await;
    let listener = CountingListener::start().await;
    let host = loopback_hostname();
    let allowed_host = format!("https://{host}:{}/media/", listener.port);
    let fleet = PipelineWorkerBuilder::assembly("episodes")
        .queue(&t.unique("episodes"), &t.unique("episodes-sub"))
        .replicas(1, 1)
        .max_attempts(1)
        .allowed_prefixes(&["s3://media/", &allowed_host]);
    t.apply_fleet(fleet.build()).await;
    // A Service's cluster IP, where the listener's port would answer if
    // anything routed there.
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "internal"},
        "spec": {"ports": [{"port": listener.port}]},
    }))
    .expect("a Service");
    let service = t
        .api::<Service>()
        .create(&PostParams::default(), &service)
        .await
        .expect("the Service is created");
    let cluster_ip = service
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a cluster IP");

    let port = listener.port;
    let hostile = [
        (
            "token",
            "file:///var/run/secrets/kubernetes.io/serviceaccount/token".to_owned(),
            "is not under a prefix this fleet allows",
        ),
        (
            "metadata",
            "https://169.254.169.254/computeMetadata/v1/".to_owned(),
            "link-local address (where the cloud metadata server answers)",
        ),
        (
            "service",
            format!("https://{cluster_ip}:{port}/x.wav"),
            "cluster-internal address",
        ),
        (
            "bucket",
            "s3://payroll/x.wav".to_owned(),
            "is not under a prefix this fleet allows",
        ),
        (
            "loopback",
            format!("https://127.0.0.1:{port}/media/x.wav"),
            "loopback address",
        ),
    ];
    for (name, url, _) in &hostile {
        t.create_job(
            JobBuilder::new(name, "episodes")
                .input(episode(url))
                .build(),
        )
        .await;
    }
    // Allowed by prefix, but the name resolves to loopback: only the worker can tell.
    let resolved = format!("{allowed_host}x.wav");
    t.create_job(
        JobBuilder::new("resolved", "episodes")
            .input(episode(&resolved))
            .build(),
    )
    .await;

    let jobs = t.api::<Job>();
    for (name, url, words) in &hostile {
        let status = failed(&jobs, name).await;
        let error = status.error.expect("an error");
        assert_eq!(error.reason, FailureReason::InvalidInput.as_str(), "{name}");
        eprintln!("{name}: {}", error.message);
        assert!(error.message.contains(words), "{name}: {}", error.message);
        assert!(
            error.message.contains(url.as_str()),
            "{name} names its URL: {}",
            error.message
        );
        if *words == "is not under a prefix this fleet allows" {
            assert!(
                error.message.contains("s3://media/"),
                "{name} names the prefixes: {}",
                error.message
            );
        }
        // Refused before any message: no worker ever saw it.
        assert_eq!(status.message_id, None, "{name} was published");
        assert!(status.claim.is_none(), "{name} was claimed");
    }
    let status = failed(&jobs, "resolved").await;
    let error = status.error.expect("an error");
    eprintln!("resolved: {}", error.message);
    assert_eq!(
        error.reason,
        FailureReason::AddressRefused.as_str(),
        "{error:?}"
    );
    assert!(
        error.message.contains("resolves only to addresses"),
        "{}",
        error.message
    );
    assert!(!error.retryable);

    // A quiet period, then the count: nothing ever connected.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(listener.accepted(), 0, "a request reached the listener");
}

#[tokio::test]
async fn a_fleet_naming_anothers_subscription_gets_no_workers_and_the_owner_keeps_working() {
    let owner = drover_test("trust-owner").await;
    let intruder = drover_test("trust-intruder").await;
    let (topic, subscription) = (owner.unique("jobs"), owner.unique("jobs-sub"));
    let fleet = |name: &str| {
        PipelineWorkerBuilder::sleep(name)
            .queue(&topic, &subscription)
            .replicas(0, 2)
            .build()
    };
    owner.apply_fleet(fleet("a")).await;
    let owners: Api<PipelineWorker> = owner.api();
    queue_ready(&owners, "a", "True", "QueueInPlace").await;
    apply_fleet(&intruder.client, &intruder.namespace, fleet("b")).await;
    let intruders: Api<PipelineWorker> = intruder.api();
    let message = queue_ready(&intruders, "b", "False", "QueueOwnedElsewhere").await;
    eprintln!("b: {message}");
    assert!(
        message.contains(&format!("{}/a", owner.namespace)),
        "{message}"
    );

    // The intruder's Job is never published: it would land in the owner's queue.
    create_job(
        &intruder.client,
        &intruder.namespace,
        JobBuilder::new("stolen", "b")
            .input(json!({"durationMillis": 10}))
            .build(),
    )
    .await;
    for i in 0..3 {
        owner
            .create_job(
                JobBuilder::new(&format!("mine-{i}"), "a")
                    .input(json!({"durationMillis": 200}))
                    .build(),
            )
            .await;
    }
    let jobs = owner.api::<Job>();
    for i in 0..3 {
        let status = wait::job_finished(&jobs, &format!("mine-{i}"), Duration::from_secs(90)).await;
        assert_eq!(status.phase, JobPhase::Succeeded, "mine-{i}: {status:?}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stolen = intruder
        .api::<Job>()
        .get("stolen")
        .await
        .expect("the Job")
        .status
        .unwrap_or_default();
    assert_eq!(stolen.phase, JobPhase::Pending, "{stolen:?}");
    assert_eq!(stolen.message_id, None);
    let b = intruders.get("b").await.expect("fleet b");
    assert_eq!(
        b.status.map(|s| (s.desired_replicas, s.replicas)),
        Some((0, 0))
    );
    let (status, reason, _) = condition(&owners, "a", "Degraded")
        .await
        .expect("a condition");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "AsExpected"));
}

async fn condition(
    fleets: &Api<PipelineWorker>,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let pw = fleets.get(name).await.ok()?;
    pw.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason, c.message))
}

async fn queue_ready(
    fleets: &Api<PipelineWorker>,
    name: &str,
    status: &str,
    reason: &str,
) -> String {
    wait::until(
        &format!("{name} QueueReady={status} ({reason})"),
        Duration::from_secs(20),
        || async {
            match condition(fleets, name, "QueueReady").await {
                Some((s, r, m)) if s == status && r == reason => Ok(m),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// Whether `user` may `verb` `resource` (in `namespace`, by `name`), as the
/// apiserver's authorizer answers a SubjectAccessReview.
async fn may(
    client: &Client,
    user: &str,
    namespace: Option<&str>,
    verb: &str,
    group: &str,
    resource: &str,
    name: Option<&str>,
) -> bool {
    let account_namespace = user.split(':').nth(2).unwrap_or_default();
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{account_namespace}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                namespace: namespace.map(Into::into),
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                name: name.map(Into::into),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("the apiserver answers the review")
        .status
        .is_some_and(|s| s.allowed)
}

/// `kubectl auth can-i --list` as `user`, for the test's output.
fn can_i_list(t: &DroverTest, user: &str, namespace: &str) -> String {
    let out = std::process::Command::new(&t.env.binaries.kubectl)
        .arg("--kubeconfig")
        .arg(t.env.control_plane.kubeconfig_path())
        .args(["auth", "can-i", "--list", "--as", user, "-n", namespace])
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl auth can-i --list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_worker_cannot_read_secrets_or_list_fleets_and_the_operator_reads_no_secret_cluster_wide()
 {
    let t = drover_test("trust-rbac").await;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "llm"}, "stringData": {"apiKey": "unused"},
    }))
    .expect("a Secret");
    t.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .expect("the Secret is created");
    let fleet = PipelineWorkerBuilder::consensus("least", "https://models.example/v1", "m")
        .queue(&t.unique("least"), &t.unique("least-sub"))
        .persona("skeptic", "Find the flaw.")
        .api_key_secret("llm", "apiKey");
    t.apply_fleet(fleet.build()).await;
    let ns = t.namespace.as_str();
    let worker = format!("system:serviceaccount:{ns}:least-worker");
    let operator = "system:serviceaccount:drover-system:drover";
    // The operator binds its Secret check and the worker's Role once the fleet exists.
    wait::until(
        "the operator's Secret check binding and the worker's Role",
        Duration::from_secs(20),
        || async {
            let operator_checks = may(
                &t.client,
                operator,
                Some(ns),
                "get",
                "",
                "secrets",
                Some("llm"),
            );
            let worker_reads = may(
                &t.client,
                &worker,
                Some(ns),
                "get",
                drover_crds::GROUP,
                "pipelineworkers",
                Some("least"),
            );
            if operator_checks.await && worker_reads.await {
                Ok(())
            } else {
                Err("not yet".to_owned())
            }
        },
    )
    .await;
    let empty = drover_test("trust-rbac-empty").await;

    let drover = drover_crds::GROUP;
    let checks = [
        (
            "worker get secrets",
            may(
                &t.client,
                &worker,
                Some(ns),
                "get",
                "",
                "secrets",
                Some("llm"),
            )
            .await,
            false,
        ),
        (
            "worker list secrets",
            may(&t.client, &worker, Some(ns), "list", "", "secrets", None).await,
            false,
        ),
        (
            "worker list pipelineworkers",
            may(
                &t.client,
                &worker,
                Some(ns),
                "list",
                drover,
                "pipelineworkers",
                None,
            )
            .await,
            false,
        ),
        (
            "worker get another pipelineworker",
            may(
                &t.client,
                &worker,
                Some(ns),
                "get",
                drover,
                "pipelineworkers",
                Some("other"),
            )
            .await,
            false,
        ),
        (
            "worker get its pipelineworker",
            may(
                &t.client,
                &worker,
                Some(ns),
                "get",
                drover,
                "pipelineworkers",
                Some("least"),
            )
            .await,
            true,
        ),
        (
            "worker list its pipelineworker by name",
            may(
                &t.client,
                &worker,
                Some(ns),
                "list",
                drover,
                "pipelineworkers",
                Some("least"),
            )
            .await,
            true,
        ),
        (
            "operator list secrets cluster-wide",
            may(&t.client, operator, None, "list", "", "secrets", None).await,
            false,
        ),
        (
            "operator get secrets cluster-wide",
            may(&t.client, operator, None, "get", "", "secrets", Some("llm")).await,
            false,
        ),
        (
            "operator get secrets where no fleet is",
            may(
                &t.client,
                operator,
                Some(&empty.namespace),
                "get",
                "",
                "secrets",
                Some("llm"),
            )
            .await,
            false,
        ),
        (
            "operator get secrets in a fleet namespace",
            may(
                &t.client,
                operator,
                Some(ns),
                "get",
                "",
                "secrets",
                Some("llm"),
            )
            .await,
            true,
        ),
        (
            "operator list secrets in a fleet namespace",
            may(&t.client, operator, Some(ns), "list", "", "secrets", None).await,
            false,
        ),
    ];
    eprintln!(
        "kubectl auth can-i --list as the worker ({worker}) in {ns}:\n{}",
        can_i_list(&t, &worker, ns)
    );
    eprintln!(
        "kubectl auth can-i --list as the operator ({operator}) in {ns}:\n{}",
        can_i_list(&t, operator, ns)
    );
    eprintln!(
        "kubectl auth can-i --list as the operator in a namespace without fleets:\n{}",
        can_i_list(&t, operator, &empty.namespace)
    );
    let wrong: Vec<_> = checks
        .iter()
        .filter(|(_, allowed, expected)| allowed != expected)
        .collect();
    assert!(wrong.is_empty(), "RBAC differs: {wrong:?}");
}

#[tokio::test]
async fn no_secret_value_reaches_a_log_a_status_or_an_event() {
    let t = drover_test("trust-secrets").await;
    let key = format!("sk-trust-{}", t.namespace);
    let signature = format!("sig{}", t.namespace.replace('-', ""));
    let password = format!("pw{}", t.namespace.replace('-', ""));
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "llm"}, "stringData": {"apiKey": key},
    }))
    .expect("a Secret");
    t.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .expect("the Secret is created");
    // A hostile model server that echoes the key it was sent.
    let echoed = key.clone();
    let llm = ScriptedLlm::start(move |_| {
        Reply::Status(
            401,
            format!(r#"{{"error": "key Bearer {echoed} is not valid"}}"#),
        )
    })
    .await
    .expect("the scripted model");
    let reviewers = PipelineWorkerBuilder::consensus("reviewers", &llm.base_url(), "m")
        .queue(&t.unique("reviewers"), &t.unique("reviewers-sub"))
        .replicas(1, 1)
        .max_attempts(1)
        .egress_allowed(&["127.0.0.1/32"])
        .persona("skeptic", "Find the flaw.")
        .api_key_secret("llm", "apiKey");
    t.apply_fleet(reviewers.build()).await;
    let listener = CountingListener::start().await;
    let episodes = PipelineWorkerBuilder::assembly("episodes")
        .queue(&t.unique("episodes"), &t.unique("episodes-sub"))
        .replicas(1, 1)
        .max_attempts(1)
        .allowed_prefixes(&["s3://media/", "https://cdn.example/"]);
    t.apply_fleet(episodes.build()).await;

    t.create_job(
        JobBuilder::new("review", "reviewers")
            .input(json!({"text": "Cache billing reads"}))
            .build(),
    )
    .await;
    let presigned = format!(
        "https://127.0.0.1:{}/x.wav?X-Amz-Credential=AKIA&X-Amz-Signature={signature}",
        listener.port
    );
    t.create_job(
        JobBuilder::new("presigned", "episodes")
            .input(episode(&presigned))
            .build(),
    )
    .await;
    let userinfo = format!("https://user:{password}@cdn.example/x.wav");
    t.create_job(
        JobBuilder::new("userinfo", "episodes")
            .input(episode(&userinfo))
            .build(),
    )
    .await;
    let jobs = t.api::<Job>();
    let review = failed(&jobs, "review").await;
    assert_eq!(
        review.error.as_ref().map(|e| e.reason.as_str()),
        Some(FailureReason::ModelUnauthorized.as_str()),
        "{review:?}"
    );
    for name in ["presigned", "userinfo"] {
        let status = failed(&jobs, name).await;
        eprintln!("{name}: {:?}", status.error);
    }
    assert!(!llm.seen().is_empty(), "the model was asked");

    // Every log this test binary's processes wrote, every Job and fleet
    // status and every Event in the cluster: none holds a value.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let needles = [key.as_str(), signature.as_str(), password.as_str()];
    let mut hits = Vec::new();
    for path in log_files(t.env.control_plane.state_dir()) {
        // etcd stores Secrets as they are; its data files are not logs.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for needle in needles {
            if text.contains(needle) {
                hits.push(format!("{} holds {needle}", path.display()));
            }
        }
    }
    let everywhere = ListParams::default();
    let all_jobs = Api::<Job>::all(t.client.clone())
        .list(&everywhere)
        .await
        .expect("Jobs");
    let all_fleets = Api::<PipelineWorker>::all(t.client.clone())
        .list(&everywhere)
        .await
        .expect("PipelineWorkers");
    let all_events = Api::<Event>::all(t.client.clone())
        .list(&everywhere)
        .await
        .expect("Events");
    let statuses = all_jobs
        .items
        .iter()
        .map(|j| {
            (
                format!("Job {}/{}", j.namespace().unwrap_or_default(), j.name_any()),
                serde_json::to_string(&j.status),
            )
        })
        .chain(all_fleets.items.iter().map(|f| {
            (
                format!("PipelineWorker {}", f.name_any()),
                serde_json::to_string(&f.status),
            )
        }))
        .chain(all_events.items.iter().map(|e| {
            (
                format!("Event {}", e.name_any()),
                serde_json::to_string(&(&e.message, &e.reason)),
            )
        }));
    let mut checked = 0;
    for (what, text) in statuses {
        let text = text.expect("status serializes");
        checked += 1;
        for needle in needles {
            if text.contains(needle) {
                hits.push(format!("{what} holds {needle}: {text}"));
            }
        }
    }
    eprintln!(
        "grepped {checked} statuses and events and the logs under {}",
        t.env.control_plane.state_dir().display()
    );
    assert!(
        hits.is_empty(),
        "secret values leaked:\n{}",
        hits.join("\n")
    );
    assert_eq!(
        listener.accepted(),
        0,
        "the presigned URL's host was reached"
    );
}

/// Every `*.log` file under `dir`, etcd's data directory left out.
fn log_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "etcd") {
                    pending.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "log") {
                found.push(path);
            }
        }
    }
    assert!(!found.is_empty(), "no logs under {}", dir.display());
    found
}

#[tokio::test]
async fn spec_env_cannot_set_the_variables_that_say_who_a_worker_is() {
    let t = drover_test("trust-env").await;
    let fleet = PipelineWorkerBuilder::sleep("impostor")
        .queue(&t.unique("impostor"), &t.unique("impostor-sub"))
        .with(|spec| {
            spec.env = Some(vec![k8s_openapi::api::core::v1::EnvVar {
                name: "DROVER_NAMESPACE".into(),
                value: Some("someone-else".into()),
                value_from: None,
            }]);
        })
        .build();
    let refused = Api::<PipelineWorker>::namespaced(t.client.clone(), &t.namespace)
        .create(&PostParams::default(), &fleet)
        .await
        .expect_err("the apiserver refuses the fleet");
    let message = refused.to_string();
    eprintln!("{message}");
    assert!(message.contains("spec.env"), "{message}");
    assert!(message.contains("set by the operator"), "{message}");
}

/// A sleep fleet `name` in `namespace` with uid `uid`, on `topic`/`subscription`.
fn owned_fleet(
    namespace: &str,
    uid: &str,
    topic: &str,
    subscription: &str,
    create: bool,
) -> PipelineWorker {
    let mut fleet = PipelineWorkerBuilder::sleep("fleet").queue(topic, subscription);
    if !create {
        fleet = fleet.existing_queue();
    }
    let mut fleet = fleet.namespace(namespace).build();
    fleet.metadata.uid = Some(uid.into());
    fleet
}

#[tokio::test]
async fn the_queue_carries_its_owners_labels_and_create_false_is_refused_another_owners_queue() {
    use drover_queue::ownership::{LABEL_NAMESPACE, LABEL_UID, Owner};
    use drover_queue::{PubSubEndpoint, QueueAdmin, QueueProblem};

    const PROJECT: &str = "drover-trust";
    let env = drover_e2e::shared().await;
    let endpoint = PubSubEndpoint::emulator(env.pubsub.host_port());
    let admin = QueueAdmin::connect(&endpoint).await.expect("admin clients");
    let (topic, subscription) = ("owned-topic", "owned-sub");
    let owner = owned_fleet("team-a", "uid-a", topic, subscription, true);
    let owner_lives = |o: &Owner| o.uid == "uid-a";
    admin
        .ensure_owned(&owner, PROJECT, &owner_lives)
        .await
        .expect("Pub/Sub answers")
        .expect("the owner's queue is in place");
    let names = drover_queue::QueueNames::of(&owner, PROJECT);
    let labels = endpoint
        .subscription_admin()
        .await
        .expect("client")
        .get_subscription()
        .set_subscription(&names.subscription)
        .send()
        .await
        .expect("the subscription")
        .labels;
    assert_eq!(
        labels.get(LABEL_NAMESPACE).map(String::as_str),
        Some("team-a"),
        "{labels:?}"
    );
    assert_eq!(
        labels.get(LABEL_UID).map(String::as_str),
        Some("uid-a"),
        "{labels:?}"
    );
    let topic_labels = endpoint
        .topic_admin()
        .await
        .expect("client")
        .get_topic()
        .set_topic(&names.topic)
        .send()
        .await
        .expect("the topic")
        .labels;
    assert_eq!(
        topic_labels.get(LABEL_UID).map(String::as_str),
        Some("uid-a")
    );

    for create in [false, true] {
        let other = owned_fleet("team-b", "uid-b", topic, subscription, create);
        let problem = admin
            .ensure_owned(&other, PROJECT, &owner_lives)
            .await
            .expect("Pub/Sub answers")
            .expect_err("another fleet's queue is refused");
        assert!(
            matches!(problem, QueueProblem::OwnedElsewhere { .. }),
            "create {create}: {problem:?}"
        );
        assert_eq!(problem.reason(), "QueueOwnedElsewhere");
        assert!(problem.to_string().contains("team-a/fleet"), "{problem}");
    }
    // The owner is gone: with create: false the queue is used as it is, and
    // with create: true the new fleet labels it its own.
    let nobody_lives = |_: &Owner| false;
    let heir = owned_fleet("team-b", "uid-b", topic, subscription, false);
    admin
        .ensure_owned(&heir, PROJECT, &nobody_lives)
        .await
        .expect("Pub/Sub answers")
        .expect("a queue whose owner is gone may be used");
    let heir = owned_fleet("team-b", "uid-b", topic, subscription, true);
    admin
        .ensure_owned(&heir, PROJECT, &nobody_lives)
        .await
        .expect("Pub/Sub answers")
        .expect("and taken over");
    let labels = endpoint
        .subscription_admin()
        .await
        .expect("client")
        .get_subscription()
        .set_subscription(&names.subscription)
        .send()
        .await
        .expect("the subscription")
        .labels;
    assert_eq!(
        labels.get(LABEL_UID).map(String::as_str),
        Some("uid-b"),
        "{labels:?}"
    );
    // Now the first fleet, back again, is the one refused.
    let problem = admin
        .ensure_owned(&owner, PROJECT, &|o: &Owner| o.uid == "uid-b")
        .await
        .expect("Pub/Sub answers");
    assert!(
        matches!(problem, Err(QueueProblem::OwnedElsewhere { .. })),
        "{problem:?}"
    );
}
