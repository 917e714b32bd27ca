//! The PipelineWorker controller against the real control plane, the Pub/Sub
//! emulator, the operator binary and worker processes run by the process
//! kubelet.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use drover_crds::job_transition::NewClaim;
use drover_crds::{Job, JobPhase, JobTransition, PipelineWorker};
use drover_e2e::drover::{
    DroverProcesses, DroverTest, PUBSUB_PROJECT, WORKER_IMAGE, apply_fleet, create_job, drover_test,
};
use drover_e2e::{TestEnv, wait};
use drover_queue::{PubSubEndpoint, subscription_path, topic_path};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde_json::json;

struct Fixture {
    env: &'static TestEnv,
    processes: &'static DroverProcesses,
    client: Client,
    ns: String,
    /// Checks the logs for RBAC refusals when the fixture drops.
    _test: DroverTest,
}

async fn fixture(prefix: &str) -> Fixture {
    let test = drover_test(prefix).await;
    let (env, processes, client, ns) = test.parts();
    Fixture {
        env,
        processes,
        client,
        ns,
        _test: test,
    }
}

impl Fixture {
    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// A sleep fleet whose queue names are unique to this namespace.
    fn sleep_fleet(&self, name: &str) -> PipelineWorkerBuilder {
        PipelineWorkerBuilder::sleep(name).queue(
            &format!("{}-{name}", self.ns),
            &format!("{}-{name}-sub", self.ns),
        )
    }

    async fn apply_fleet(&self, fleet: PipelineWorkerBuilder) -> PipelineWorker {
        apply_fleet(&self.client, &self.ns, fleet.build()).await
    }

    async fn condition(&self, fleet: &str, type_: &str) -> Option<(String, String, String)> {
        let pw = self.api::<PipelineWorker>().get(fleet).await.ok()?;
        pw.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status, c.reason, c.message))
    }

    async fn wait_for_condition(
        &self,
        fleet: &str,
        type_: &str,
        status: &str,
        reason: &str,
        within: Duration,
    ) {
        let what = format!("{fleet} condition {type_}={status} ({reason})");
        wait::until(&what, within, || async {
            match self.condition(fleet, type_).await {
                Some((s, r, _)) if s == status && r == reason => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }

    async fn deployment_replicas(&self, fleet: &str) -> Option<i32> {
        let d = self
            .api::<Deployment>()
            .get_opt(&format!("{fleet}-worker"))
            .await
            .ok()??;
        d.spec.replicas
    }

    async fn create_jobs(&self, fleet: &str, count: usize) {
        for i in 0..count {
            let job = JobBuilder::new(&format!("{fleet}-job-{i}"), fleet)
                // Long enough to stay in the backlog until the test deletes them.
                .input(json!({"durationMillis": 600000}))
                .build();
            create_job(&self.client, &self.ns, job).await;
        }
    }

    fn worker_processes(&self) -> usize {
        self.processes
            .kubelet
            .running_pods()
            .iter()
            .filter(|p| p.namespace == self.ns)
            .count()
    }
}

fn owned_by(meta: &kube::core::ObjectMeta, owner: &PipelineWorker) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| Some(&o.uid) == owner.metadata.uid.as_ref() && o.controller == Some(true))
}

#[tokio::test]
async fn fleet_objects_are_owned_and_garbage_collected_with_the_fleet() {
    let f = fixture("owned").await;
    let pw = f.apply_fleet(f.sleep_fleet("gc")).await;
    let name = "gc-worker";

    wait::until("all fleet objects", Duration::from_secs(20), || async {
        let d = f
            .api::<Deployment>()
            .get_opt(name)
            .await
            .map_err(|e| e.to_string())?;
        let sa = f
            .api::<ServiceAccount>()
            .get_opt(name)
            .await
            .map_err(|e| e.to_string())?;
        let role = f
            .api::<Role>()
            .get_opt(name)
            .await
            .map_err(|e| e.to_string())?;
        let binding = f
            .api::<RoleBinding>()
            .get_opt(name)
            .await
            .map_err(|e| e.to_string())?;
        let svc = f
            .api::<Service>()
            .get_opt(name)
            .await
            .map_err(|e| e.to_string())?;
        match (d, sa, role, binding, svc) {
            (Some(d), Some(sa), Some(role), Some(binding), Some(svc)) => {
                for (kind, meta) in [
                    ("Deployment", &d.metadata),
                    ("ServiceAccount", &sa.metadata),
                    ("Role", &role.metadata),
                    ("RoleBinding", &binding.metadata),
                    ("Service", &svc.metadata),
                ] {
                    assert!(
                        owned_by(meta, &pw),
                        "{kind} is not owned by the fleet: {meta:?}"
                    );
                }
                Ok(())
            }
            missing => Err(format!("{missing:?}")),
        }
    })
    .await;

    f.api::<PipelineWorker>()
        .delete("gc", &DeleteParams::foreground())
        .await
        .expect("fleet deletes");
    wait::until(
        "garbage collection of the fleet objects",
        Duration::from_secs(30),
        || async {
            let left = [
                f.api::<Deployment>()
                    .get_opt(name)
                    .await
                    .map(|o| o.is_some()),
                f.api::<ServiceAccount>()
                    .get_opt(name)
                    .await
                    .map(|o| o.is_some()),
                f.api::<Role>().get_opt(name).await.map(|o| o.is_some()),
                f.api::<RoleBinding>()
                    .get_opt(name)
                    .await
                    .map(|o| o.is_some()),
                f.api::<Service>().get_opt(name).await.map(|o| o.is_some()),
            ];
            if left.iter().all(|l| matches!(l, Ok(false))) {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn spec_edit_rolls_the_deployment_and_hand_edits_are_reverted() {
    let f = fixture("drift").await;
    f.apply_fleet(f.sleep_fleet("drift").concurrency(1)).await;
    let hash = |d: &Deployment| {
        d.spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get("drover.dev/config-hash").cloned())
    };
    let deployments = f.api::<Deployment>();
    let first = wait::until("the worker Deployment", Duration::from_secs(20), || async {
        deployments
            .get_opt("drift-worker")
            .await
            .map_err(|e| e.to_string())?
            .and_then(|d| hash(&d))
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;

    f.apply_fleet(f.sleep_fleet("drift").concurrency(4)).await;
    wait::until(
        "a new pod template after a spec edit",
        Duration::from_secs(10),
        || async {
            let d = deployments
                .get("drift-worker")
                .await
                .map_err(|e| e.to_string())?;
            match hash(&d) {
                Some(h) if h != first => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    let tamper = json!({"spec": {"template": {"spec": {"containers": [{"name": "worker", "image": "tampered:1"}]}}}});
    deployments
        .patch(
            "drift-worker",
            &PatchParams::default(),
            &Patch::Strategic(&tamper),
        )
        .await
        .expect("hand edit");
    wait::until(
        "the hand edit to be reverted",
        Duration::from_secs(10),
        || async {
            let d = deployments
                .get("drift-worker")
                .await
                .map_err(|e| e.to_string())?;
            let image = d
                .spec
                .template
                .spec
                .as_ref()
                .and_then(|s| s.containers[0].image.clone());
            match image.as_deref() {
                Some(WORKER_IMAGE) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn missing_secret_topic_and_subscription_show_as_conditions_and_clear() {
    let f = fixture("problems").await;
    let topic = format!("{}-byo", f.ns);
    let subscription = format!("{topic}-sub");
    let fleet = PipelineWorkerBuilder::consensus("byo", "http://127.0.0.1:9/v1", "m")
        .queue(&topic, &subscription)
        .existing_queue()
        .persona("skeptic", "Find the flaw.")
        .api_key_secret("llm", "apiKey");
    let started = Instant::now();
    f.apply_fleet(fleet).await;
    let five = Duration::from_secs(5);
    f.wait_for_condition("byo", "Degraded", "True", "SecretNotFound", five)
        .await;
    f.wait_for_condition("byo", "QueueReady", "False", "TopicNotFound", five)
        .await;
    eprintln!("problems reported {:?} after apply", started.elapsed());
    let (_, _, message) = f.condition("byo", "Degraded").await.expect("condition");
    assert!(message.contains("llm/apiKey"), "{message}");

    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "llm"}, "stringData": {"apiKey": "k"},
    }))
    .expect("secret");
    f.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    f.wait_for_condition("byo", "Degraded", "True", "TopicNotFound", five)
        .await;

    let pubsub = PubSubEndpoint::emulator(f.env.pubsub.host_port());
    let topic_path = topic_path(PUBSUB_PROJECT, &topic);
    pubsub
        .topic_admin()
        .await
        .expect("client")
        .create_topic()
        .set_name(&topic_path)
        .send()
        .await
        .expect("topic");
    f.wait_for_condition("byo", "QueueReady", "False", "SubscriptionNotFound", five)
        .await;

    pubsub
        .subscription_admin()
        .await
        .expect("client")
        .create_subscription()
        .set_name(subscription_path(PUBSUB_PROJECT, &subscription))
        .set_topic(&topic_path)
        .send()
        .await
        .expect("subscription");
    f.wait_for_condition("byo", "QueueReady", "True", "QueueInPlace", five)
        .await;
    f.wait_for_condition("byo", "Degraded", "False", "AsExpected", five)
        .await;
}

#[tokio::test]
async fn backlog_of_25_runs_3_workers_then_scales_to_zero_after_the_window() {
    let f = fixture("scale").await;
    let window: u64 = 6;
    f.apply_fleet(
        f.sleep_fleet("burst")
            .concurrency(10)
            .replicas(0, 5)
            .jobs_per_replica(10)
            .scale_down_stabilization_seconds(window as i32),
    )
    .await;
    f.create_jobs("burst", 25).await;

    wait::until(
        "3 replicas for 25 Jobs",
        Duration::from_secs(10),
        || async {
            match f.deployment_replicas("burst").await {
                Some(3) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let pods = &f.processes.kubelet;
    let ns = f.ns.clone();
    pods.wait_for_pods("3 worker processes", Duration::from_secs(30), |running| {
        running.iter().filter(|p| p.namespace == ns).count() == 3
    })
    .await
    .expect("3 worker processes run");
    // The status follows the Job events; it may trail the last create briefly.
    let fleets = f.api::<PipelineWorker>();
    wait::until(
        "status: 3 desired, backlog 25",
        Duration::from_secs(10),
        || async {
            let status = fleets
                .get("burst")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            let backlog = status.backlog.queued + status.backlog.running;
            if (status.desired_replicas, backlog) == (3, 25) {
                Ok(())
            } else {
                Err(format!(
                    "desired {} backlog {:?}",
                    status.desired_replicas, status.backlog
                ))
            }
        },
    )
    .await;

    // The backlog disappears; the fleet holds its size for the window.
    // The window starts at the last recommendation of 3, which comes after
    // this instant (while the deletions are under way), never before it.
    let emptied = Instant::now();
    let jobs = f.api::<Job>();
    for i in 0..25 {
        jobs.delete(&format!("burst-job-{i}"), &DeleteParams::default())
            .await
            .expect("job deletes");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        f.deployment_replicas("burst").await,
        Some(3),
        "scaled down inside the window"
    );

    wait::until(
        "scale to zero after the window",
        Duration::from_secs(window + 10),
        || async {
            match f.deployment_replicas("burst").await {
                Some(0) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let took = emptied.elapsed();
    assert!(
        took >= Duration::from_secs(window),
        "scaled to zero after {took:?}"
    );
    pods.wait_for_pods("no worker processes", Duration::from_secs(30), |running| {
        running.iter().all(|p| p.namespace != ns)
    })
    .await
    .expect("worker processes stop");
    assert_eq!(f.worker_processes(), 0);
}

async fn allowed(
    client: &Client,
    ns: &str,
    user: &str,
    verb: &str,
    resource: &str,
    sub: Option<&str>,
    name: Option<&str>,
) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
            ]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.into()),
                verb: Some(verb.into()),
                group: Some(if resource == "secrets" {
                    "".into()
                } else {
                    "drover.dev".into()
                }),
                resource: Some(resource.into()),
                subresource: sub.map(Into::into),
                name: name.map(Into::into),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview");
    answer.status.map(|s| s.allowed).unwrap_or(false)
}

#[tokio::test]
async fn worker_identity_cannot_read_secrets_or_change_job_specs() {
    let f = fixture("rbac").await;
    f.apply_fleet(f.sleep_fleet("least")).await;
    let roles = f.api::<RoleBinding>();
    wait::until(
        "the worker RoleBinding",
        Duration::from_secs(20),
        || async {
            roles
                .get_opt("least-worker")
                .await
                .map_err(|e| e.to_string())?
                .ok_or("not yet".into())
        },
    )
    .await;
    let user = format!("system:serviceaccount:{}:least-worker", f.ns);
    let can = |verb: &'static str,
               resource: &'static str,
               sub: Option<&'static str>,
               name: Option<&'static str>| {
        let client = f.client.clone();
        let ns = f.ns.clone();
        let user = user.clone();
        async move { allowed(&client, &ns, &user, verb, resource, sub, name).await }
    };
    let expectations = BTreeMap::from([
        (
            "get secrets",
            (can("get", "secrets", None, Some("llm")).await, false),
        ),
        (
            "list secrets",
            (can("list", "secrets", None, None).await, false),
        ),
        (
            "update jobs",
            (can("update", "jobs", None, Some("j")).await, false),
        ),
        (
            "patch jobs",
            (can("patch", "jobs", None, Some("j")).await, false),
        ),
        (
            "delete jobs",
            (can("delete", "jobs", None, Some("j")).await, false),
        ),
        (
            "patch jobs/status",
            (can("patch", "jobs", Some("status"), Some("j")).await, true),
        ),
        (
            "create jobs",
            (can("create", "jobs", None, None).await, true),
        ),
        ("watch jobs", (can("watch", "jobs", None, None).await, true)),
        (
            "get own pipelineworker",
            (
                can("get", "pipelineworkers", None, Some("least")).await,
                true,
            ),
        ),
        (
            "get another pipelineworker",
            (
                can("get", "pipelineworkers", None, Some("other")).await,
                false,
            ),
        ),
        (
            "update own pipelineworker",
            (
                can("update", "pipelineworkers", None, Some("least")).await,
                false,
            ),
        ),
    ]);
    for (what, (actual, expected)) in &expectations {
        assert_eq!(
            actual, expected,
            "{what}: allowed={actual}, expected {expected}"
        );
    }
    assert!(f.processes.operator.is_running(), "the operator died");
}

#[tokio::test]
async fn unknown_worker_image_is_reported_as_image_pull_back_off() {
    let f = fixture("image").await;
    f.apply_fleet(
        f.sleep_fleet("badimage")
            .image("registry.invalid/none:1")
            .min_replicas(1),
    )
    .await;
    let pods = f.api::<k8s_openapi::api::core::v1::Pod>();
    wait::until(
        "Degraded=True (ImagePullBackOff)",
        Duration::from_secs(30),
        || async {
            match f.condition("badimage", "Degraded").await {
                Some((s, r, _)) if s == "True" && r == "ImagePullBackOff" => Ok(()),
                other => {
                    let pods = pods
                        .list(&Default::default())
                        .await
                        .map_err(|e| e.to_string())?;
                    let states: Vec<_> = pods
                        .items
                        .iter()
                        .map(|p| {
                            (
                                p.metadata.name.clone(),
                                p.spec.as_ref().and_then(|s| s.node_name.clone()),
                                p.status.as_ref().and_then(|s| s.container_statuses.clone()),
                            )
                        })
                        .collect();
                    Err(format!("condition {other:?}, pods {states:?}"))
                }
            }
        },
    )
    .await;
    let (_, _, message) = f.condition("badimage", "Ready").await.expect("condition");
    assert!(message.contains("registry.invalid/none:1"), "{message}");
}

#[tokio::test]
async fn busy_pods_cost_more_to_delete_and_scale_events_are_recorded() {
    let f = fixture("cost").await;
    f.apply_fleet(f.sleep_fleet("busy").replicas(2, 2)).await;
    let ns = f.ns.clone();
    let running = f
        .processes
        .kubelet
        .wait_for_pods("2 worker processes", Duration::from_secs(30), |pods| {
            pods.iter().filter(|p| p.namespace == ns).count() == 2
        })
        .await
        .expect("2 worker processes");
    let busy_pod = running
        .iter()
        .find(|p| p.namespace == ns)
        .expect("a pod")
        .name
        .clone();

    // A Job claimed by that pod, as a worker would write it.
    f.create_jobs("busy", 1).await;
    let claim = NewClaim {
        id: "c-busy".into(),
        attempt: 1,
        pod: busy_pod.clone(),
        lease_seconds: 30,
        steps: Vec::new(),
    };
    let far_ahead = "2030-01-01T00:00:00Z".parse().expect("a timestamp");
    let claimed = JobTransition::claim(JobPhase::Queued, claim, far_ahead).expect("a claim");
    let status = json!({ "status": claimed.status });
    f.api::<Job>()
        .patch_status(
            "busy-job-0",
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .expect("job status");

    let pods = f.api::<k8s_openapi::api::core::v1::Pod>();
    wait::until(
        "deletion costs on both pods",
        Duration::from_secs(10),
        || async {
            let list = pods
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let costs: BTreeMap<String, Option<String>> =
                list.items
                    .iter()
                    .map(|p| {
                        let cost = p.metadata.annotations.as_ref().and_then(|a| {
                            a.get("controller.kubernetes.io/pod-deletion-cost").cloned()
                        });
                        (p.metadata.name.clone().unwrap_or_default(), cost)
                    })
                    .collect();
            let busy = costs.get(&busy_pod).cloned().flatten();
            let idle_zero = costs
                .iter()
                .filter(|(n, _)| **n != busy_pod)
                .all(|(_, c)| c.as_deref().is_none_or(|c| c == "0"));
            if busy.as_deref() == Some("1") && idle_zero {
                Ok(())
            } else {
                Err(format!("{costs:?}"))
            }
        },
    )
    .await;

    let events: Api<k8s_openapi::api::events::v1::Event> = f.api();
    let list = events.list(&Default::default()).await.expect("events");
    assert!(
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Scaled")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("busy")),
        "no Scaled event: {:?}",
        list.items
            .iter()
            .map(|e| (&e.reason, &e.note))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn manual_mode_follows_the_scale_subresource() {
    let f = fixture("manual").await;
    f.apply_fleet(f.sleep_fleet("manual").manual_replicas(1).max_replicas(4))
        .await;
    wait::until("1 manual replica", Duration::from_secs(15), || async {
        match f.deployment_replicas("manual").await {
            Some(1) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let out = std::process::Command::new(&f.env.binaries.kubectl)
        .arg("--kubeconfig")
        .arg(f.env.control_plane.kubeconfig_path())
        .args(["scale", "pw", "manual", "--replicas", "2", "-n", &f.ns])
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl scale: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait::until(
        "2 replicas after kubectl scale",
        Duration::from_secs(10),
        || async {
            match f.deployment_replicas("manual").await {
                Some(2) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}
