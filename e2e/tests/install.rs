//! Installing Drover the ways the README says, with the real tools: helm
//! (built from its Go module) lints, renders and installs the chart into the
//! test control plane, where the process kubelet runs the operator as its own
//! ServiceAccount; promtool checks the rendered alerts; the plain manifests
//! in config/install are the chart's rendering; the dashboard is valid.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use drover_e2e::observe::{self, chart_dir, helm, promtool, run};
use drover_e2e::{error_chain, shared, wait, workspace_root};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::ListParams;

#[test]
fn chart_crds_are_the_generated_crds() {
    for name in ["pipelineworkers.yaml", "jobs.yaml"] {
        let source = workspace_root().join("crds").join(name);
        let copy = chart_dir().join("crds").join(name);
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        };
        assert!(
            read(&source) == read(&copy),
            "{} differs from {}: run `cp crds/*.yaml charts/drover/crds/` after crdgen",
            copy.display(),
            source.display()
        );
    }
}

#[test]
fn dashboard_is_a_valid_grafana_dashboard() {
    let path = observe::dashboard_path();
    let text = std::fs::read_to_string(&path).expect("dashboard file");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let queries = observe::check_dashboard(&dashboard)
        .unwrap_or_else(|e| panic!("{} is not a valid dashboard: {e}", path.display()));
    assert!(queries.len() >= 10, "only {} queries", queries.len());
    // Every metric the dashboard reads is one Drover exports.
    for query in &queries {
        assert!(
            query.expr.contains("drover_"),
            "{} {} reads no Drover metric: {}",
            query.panel,
            query.ref_id,
            query.expr
        );
    }
}

#[test]
fn helm_lint_and_template_pass() {
    let helm = helm();
    let chart = chart_dir().display().to_string();
    let lint = run(&helm, &["lint", "--strict", &chart]).unwrap_or_else(|e| panic!("{e}"));
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    let everything = [
        "--set",
        "serviceMonitor.enabled=true,prometheusRule.enabled=true,replicaCount=2",
    ];
    let lint = run(
        &helm,
        &[&["lint", "--strict", chart.as_str()][..], &everything[..]].concat(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

    let rendered = run(
        &helm,
        &[
            &["template", "drover", chart.as_str(), "--namespace", "ops"][..],
            &everything[..],
        ]
        .concat(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&rendered)
        .filter_map(|d| {
            let v = <serde_yaml::Value as serde::Deserialize>::deserialize(d).ok()?;
            Some(v.get("kind")?.as_str()?.to_owned())
        })
        .collect();
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in {kinds:?}");
    }
    // The image tag defaults to appVersion; values.schema.json refuses nonsense.
    assert!(
        rendered.contains("image: \"drover-operator:0.1.0\""),
        "{rendered}"
    );
    assert!(rendered.contains("--worker-image=drover-worker:0.1.0"));
    assert!(rendered.contains("replicas: 2"));
    let refused = run(&helm, &["template", &chart, "--set", "replicaCount=-1"])
        .expect_err("a negative replica count is refused");
    assert!(refused.contains("replicaCount"), "{refused}");
    let refused = run(&helm, &["template", &chart, "--set", "metrics.prot=1"])
        .expect_err("an unknown value is refused");
    assert!(refused.contains("prot"), "{refused}");
}

/// The README's cluster install command, rendered instead of installed: its
/// flags must be values the chart knows and accepts.
#[test]
fn readme_cluster_install_renders() {
    let helm = helm();
    let block = observe::readme_block("helm-cluster").unwrap_or_else(|e| panic!("{e}"));
    let command = block
        .replace("\\\n", " ")
        .replace("REGISTRY", "registry.example:5000/team")
        .replace("MY-PROJECT", "my-project");
    let args: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(args.get(..2), Some(&["helm", "install"][..]), "{block}");
    let rendered =
        run(&helm, &[&["template"][..], &args[2..]].concat()).unwrap_or_else(|e| panic!("{e}"));
    assert!(rendered.contains("image: \"registry.example:5000/team/drover-operator:0.1.0\""));
    assert!(rendered.contains("--worker-image=registry.example:5000/team/drover-worker:0.1.0"));
    assert!(rendered.contains("value: \"my-project\""));
    assert!(rendered.contains("kind: PrometheusRule"));
    assert!(rendered.contains("kind: PodMonitor"));
}

#[test]
fn config_install_is_rendered_from_the_chart() {
    let helm = helm();
    let fresh = std::env::temp_dir().join(format!("drover-install-{}.yaml", std::process::id()));
    let status = Command::new(workspace_root().join("config/install/generate.sh"))
        .arg(&fresh)
        .env("HELM", &helm)
        .stdin(Stdio::null())
        .status()
        .expect("generate.sh runs");
    assert!(status.success(), "generate.sh failed: {status}");
    let fresh_text = std::fs::read_to_string(&fresh).expect("rendered");
    let _ = std::fs::remove_file(&fresh);
    let committed = std::fs::read_to_string(workspace_root().join("config/install/drover.yaml"))
        .expect("config/install/drover.yaml");
    assert!(
        fresh_text == committed,
        "config/install/drover.yaml is stale: run `HELM=<helm> config/install/generate.sh`"
    );
    assert!(committed.contains("kind: Deployment"));
    assert!(committed.contains("kind: ClusterRole"));
}

#[test]
fn rendered_prometheus_rules_pass_promtool() {
    let helm = helm();
    let promtool = promtool();
    let chart = chart_dir().display().to_string();
    let rendered = run(
        &helm,
        &[
            "template",
            "drover",
            &chart,
            "--set",
            "prometheusRule.enabled=true",
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let rule_file = observe::rule_file_from_rendered(&rendered).unwrap_or_else(|e| panic!("{e}"));
    let path = std::env::temp_dir().join(format!("drover-rules-{}.yaml", std::process::id()));
    std::fs::write(&path, &rule_file).expect("rule file");
    let checked = run(&promtool, &["check", "rules", &path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    let checked = checked.unwrap_or_else(|e| panic!("{e}"));
    assert!(checked.contains("SUCCESS"), "{checked}");

    // Each alert fires on its input, after its `for`, and not on a healthy one.
    let unit = run(
        &promtool,
        &[
            "test",
            "rules",
            &chart_dir()
                .join("files/rules_test.yaml")
                .display()
                .to_string(),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(unit.contains("SUCCESS"), "{unit}");

    let rules = observe::rules(&rule_file).expect("rules parse");
    let alerts: Vec<&str> = rules
        .iter()
        .filter_map(|r| match r {
            observe::Rule::Alert { name, .. } => Some(name.as_str()),
            observe::Rule::Record { .. } => None,
        })
        .collect();
    assert_eq!(
        alerts,
        [
            "DroverJobErrorRateHigh",
            "DroverBacklogHigh",
            "DroverJobLatencyHigh",
            "DroverWorkerRestarting",
            "DroverOperatorNotReconciling",
            "DroverJobsStuck",
            "DroverArchiveUnavailable"
        ]
    );
    // Every alert has its summary, description and runbook section.
    let runbook =
        std::fs::read_to_string(workspace_root().join("docs/runbook.md")).expect("docs/runbook.md");
    let parsed: serde_yaml::Value = serde_yaml::from_str(&rule_file).expect("yaml");
    for group in parsed["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let Some(alert) = rule["alert"].as_str() else {
                continue;
            };
            for key in ["summary", "description", "runbook_url"] {
                assert!(
                    rule["annotations"][key]
                        .as_str()
                        .is_some_and(|v| !v.is_empty()),
                    "{alert} has no {key}"
                );
            }
            assert!(
                rule["annotations"]["runbook_url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with(&format!("#{}", alert.to_lowercase()))),
                "{alert}: runbook_url does not point at its section"
            );
            assert!(
                runbook.contains(&format!("## {alert}")),
                "docs/runbook.md has no `## {alert}` section"
            );
        }
    }
}

/// The README's Helm install and then its kubectl install, each run as
/// written against the test control plane, with the environment a user gets
/// from `source .drover-sandbox/env`.
#[tokio::test(flavor = "multi_thread")]
async fn readme_installs_run_the_operator_as_its_service_account() {
    let helm = helm();
    let env = shared().await;
    let client = env.control_plane.client().await.expect("client");
    // Pods run as their ServiceAccount: the chart's RBAC is what the operator
    // gets, and the Roles the operator writes are what its workers get.
    let config =
        drover_e2e::drover::kubelet_config(env).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let kubelet = drover_e2e::kubelet::ProcessKubelet::start(client.clone(), config)
        .await
        .unwrap_or_else(|e| panic!("cannot start the process kubelet: {e}"));

    let transcript = run_readme_block(env, &helm, &kubelet, "helm-install").await;
    assert!(transcript.contains("$HELM install") || transcript.contains("helm install"));
    // The block waited for the sample Job to succeed, which only the operator
    // (publishing) and a worker it scaled up (running) can make happen.
    assert!(transcript.contains("condition met"), "{transcript}");
    operator_is_gone(&client, &kubelet).await;

    let transcript = run_readme_block(env, &helm, &kubelet, "kubectl-install").await;
    assert!(transcript.contains("condition met"), "{transcript}");
    operator_is_gone(&client, &kubelet).await;

    // Least privilege that is enough: the operator, running as its
    // ServiceAccount, was never refused anything while it worked. (Releasing
    // the Lease on the way out may be refused: uninstalling removes its Role
    // while the pod is still stopping.)
    let pods_dir = env.control_plane.state_dir().join("kubelet/pods");
    let mut operator_logs = 0;
    for entry in std::fs::read_dir(&pods_dir).expect("pod dirs").flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("drover-system_")
        {
            continue;
        }
        let log = std::fs::read_to_string(entry.path().join("operator.log")).unwrap_or_default();
        operator_logs += 1;
        for line in log.lines() {
            assert!(
                !line.contains("forbidden") || line.contains("cannot release the leader Lease"),
                "the operator was refused something: {line}"
            );
        }
    }
    assert!(
        operator_logs >= 2,
        "no operator logs in {}",
        pods_dir.display()
    );
}

/// Waits until no operator Deployment or process is left.
async fn operator_is_gone(client: &kube::Client, kubelet: &drover_e2e::kubelet::ProcessKubelet) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "drover-system");
    wait::until(
        "the operator Deployment to go",
        Duration::from_secs(60),
        || async {
            let left = deployments
                .list(&ListParams::default().labels("app.kubernetes.io/name=drover"))
                .await
                .map_err(|e| e.to_string())?;
            if left.items.is_empty() {
                Ok(())
            } else {
                Err(format!("{} Deployments left", left.items.len()))
            }
        },
    )
    .await;
    kubelet
        .wait_for_pods(
            "the operator process to stop",
            Duration::from_secs(60),
            |pods| !pods.iter().any(|p| p.namespace == "drover-system"),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Runs the README block `name` with bash in the workspace root and the
/// sandbox's environment; returns its transcript, or panics with it and the
/// logs of every pod still running.
async fn run_readme_block(
    env: &drover_e2e::TestEnv,
    helm: &Path,
    kubelet: &drover_e2e::kubelet::ProcessKubelet,
    name: &str,
) -> String {
    let shell = observe::ReadmeShell {
        kubeconfig: env.control_plane.kubeconfig_path().to_path_buf(),
        kubectl: env.binaries.kubectl.clone(),
        helm: helm.to_path_buf(),
        pubsub_emulator_host: env.pubsub.host_port(),
        home: env.control_plane.state_dir().join("readme-home"),
    };
    shell.run(name).await.unwrap_or_else(|failure| {
        let logs: String = kubelet
            .running_pods()
            .iter()
            .map(|p| {
                format!(
                    "\n--- {}/{}:\n{}",
                    p.namespace,
                    p.name,
                    std::fs::read_to_string(&p.log_path).unwrap_or_default()
                )
            })
            .collect();
        panic!("the README's {name} block failed:\n{failure}\npods still running:{logs}")
    })
}
