//! What a fleet's conditions say, as a pure function of what the operator
//! observed: the queue, the Secrets the pods read, and the pods themselves.

use drover_crds::bounds::truncate;
use drover_crds::fleet_conditions::{ConditionReason, DegradedReason, FleetCondition};
use k8s_openapi::api::core::v1::{ContainerState, ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The most of a container's last words a condition message quotes.
const TERMINATION_LINE_BYTES: usize = 300;

/// A problem a person has to fix, with the condition reason it shows as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: DegradedReason,
    pub message: String,
}

/// Everything the conditions are derived from.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// `None` when topic and subscription are in place.
    pub queue_problem: Option<Problem>,
    /// `secret/key` references that do not resolve.
    pub missing_secrets: Vec<String>,
    /// `namespace/name` of the other PipelineWorkers on the same subscription.
    pub shared_with: Vec<String>,
    pub desired_replicas: i32,
    pub ready_replicas: i32,
    pub pods: Vec<Pod>,
}

/// The first pod-level problem, the likeliest cause first: an image that
/// cannot be pulled, a container killed for its memory, one its security
/// context refused, one the runtime cannot run, one that keeps crashing,
/// one that cannot be configured.
pub fn pod_problem(pods: &[Pod]) -> Option<Problem> {
    let containers: Vec<(&str, &ContainerStatus)> = pods
        .iter()
        .flat_map(|pod| {
            let name = pod.metadata.name.as_deref().unwrap_or("?");
            pod.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
                .map(move |c| (name, c))
        })
        .collect();
    let by_reason = |known: &'static str, reason: DegradedReason| {
        containers.iter().find_map(|(pod, container)| {
            let detail = container_detail(container, known)?;
            Some(Problem {
                reason,
                message: format!("pod {pod}: {known}{detail}"),
            })
        })
    };
    let pulls = by_reason("ImagePullBackOff", DegradedReason::ImagePullBackOff)
        .or_else(|| by_reason("ErrImagePull", DegradedReason::ImagePullBackOff))
        .or_else(|| by_reason("OOMKilled", DegradedReason::OOMKilled));
    // Refused by its security context: the crash loop or start error that
    // follows says less than the refusal's own words.
    let refused = || {
        containers.iter().find_map(|(pod, container)| {
            let (cause, words) = security_refusal(container)?;
            Some(Problem {
                reason: DegradedReason::SecurityContextDenied,
                message: format!(
                    "pod {pod}: container {} was refused by its security context ({cause}): {words}",
                    container.name
                ),
            })
        })
    };
    pulls.or_else(refused).or_else(|| {
        [
            ("CreateContainerError", DegradedReason::ContainerCannotRun),
            ("RunContainerError", DegradedReason::ContainerCannotRun),
            ("StartError", DegradedReason::ContainerCannotRun),
            ("ContainerCannotRun", DegradedReason::ContainerCannotRun),
            ("CrashLoopBackOff", DegradedReason::CrashLoopBackOff),
            (
                "CreateContainerConfigError",
                DegradedReason::CreateContainerConfigError,
            ),
        ]
        .into_iter()
        .find_map(|(known, reason)| by_reason(known, reason))
    })
}

/// What the kernel or the runtime said when a container's security context
/// refused it, and which part refused: a write to the read-only root
/// filesystem (EROFS), a file the non-root user may not open (EACCES as a
/// program reports it), or an entrypoint it may not run (runc's `exec`).
/// Judged on the words of its last run's end (the runtime's message, or
/// the container's last log lines) and of its waiting state.
fn security_refusal(container: &ContainerStatus) -> Option<(&'static str, String)> {
    let ended = |state: Option<&ContainerState>| {
        state
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.message.clone())
    };
    let waiting = container
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.message.clone());
    let said = [
        ended(container.state.as_ref()),
        ended(container.last_state.as_ref()),
        waiting,
    ];
    said.into_iter().flatten().find_map(|text| {
        text.lines().rev().find_map(|line| {
            let lower = line.to_ascii_lowercase();
            let cause = if lower.contains("read-only file system") {
                "the read-only root filesystem (readOnlyRootFilesystem) takes no writes; only /tmp is writable"
            } else if lower.contains("permission denied (os error 13)") {
                "it runs as a non-root user (runAsUser), who may not open that file"
            } else if lower.contains("exec:") && lower.contains("permission denied") {
                "it runs as a non-root user (runAsUser), who may not run its entrypoint"
            } else {
                return None;
            };
            Some((cause, truncate(line.trim(), TERMINATION_LINE_BYTES)))
        })
    })
}

/// Why a worker pod stopped renewing, when its status says the kernel killed
/// a container for its memory: "container worker was OOM-killed (memory limit 64Mi)".
pub fn oom_killed(pod: &Pod) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let container = statuses.iter().find(|c| {
        let ended = |state: Option<&ContainerState>| {
            state
                .and_then(|s| s.terminated.as_ref())
                .is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"))
        };
        ended(c.state.as_ref()) || ended(c.last_state.as_ref())
    })?;
    let limit = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.containers.iter().find(|c| c.name == container.name))
        .and_then(|c| {
            c.resources
                .as_ref()?
                .limits
                .as_ref()?
                .get("memory")
                .cloned()
        })
        .map(|q| format!(" (memory limit {})", q.0))
        .unwrap_or_default();
    Some(format!(
        "container {} was OOM-killed{limit}",
        container.name
    ))
}

/// What a container's status says about `reason`, when it shows it: as its
/// waiting reason, or as how it (or its last run) ended. The message says
/// how the last run ended, with the runtime's or the container's own words.
fn container_detail(container: &ContainerStatus, reason: &str) -> Option<String> {
    let state = container.state.as_ref();
    let ended = state
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| container.last_state.as_ref()?.terminated.as_ref());
    let waiting = state
        .and_then(|s| s.waiting.as_ref())
        .filter(|w| w.reason.as_deref() == Some(reason));
    let ended_so = ended.filter(|t| t.reason.as_deref() == Some(reason));
    if waiting.is_none() && ended_so.is_none() {
        return None;
    }
    let mut detail = String::new();
    if let Some(message) = waiting.and_then(|w| w.message.as_deref()) {
        detail.push_str(&format!(": {message}"));
    }
    if let Some(ended) = ended {
        detail.push_str(&format!(
            " (container {} last exited with code {}{}{})",
            container.name,
            ended.exit_code,
            ended
                .reason
                .as_deref()
                .map(|r| format!(", {r}"))
                .unwrap_or_default(),
            // A termination message taken from the logs holds many lines:
            // the last says most.
            ended
                .message
                .as_deref()
                .and_then(|m| m.trim().lines().last())
                .map(|line| format!(": {}", truncate(line.trim(), TERMINATION_LINE_BYTES)))
                .unwrap_or_default()
        ));
    }
    Some(detail)
}

/// What the fleet is degraded by, if anything: a queue owned by another
/// fleet (it explains everything else), missing Secrets, a shared
/// subscription, the queue, then the pods (the first is usually the cause
/// of the others).
pub fn degraded_problem(observed: &Observation) -> Option<Problem> {
    let owned_elsewhere = observed
        .queue_problem
        .clone()
        .filter(|p| p.reason == DegradedReason::QueueOwnedElsewhere);
    let shared_problem = (!observed.shared_with.is_empty()).then(|| Problem {
        reason: DegradedReason::SubscriptionShared,
        message: format!(
            "the subscription is shared with {}: each fleet would receive the other's Jobs; give every PipelineWorker its own subscription",
            observed.shared_with.join(", ")
        ),
    });
    let secret_problem = (!observed.missing_secrets.is_empty()).then(|| Problem {
        reason: DegradedReason::SecretNotFound,
        message: format!(
            "the worker pods read {} which does not exist",
            observed.missing_secrets.join(", ")
        ),
    });
    owned_elsewhere
        .or(secret_problem)
        .or(shared_problem)
        .or_else(|| observed.queue_problem.clone())
        .or_else(|| pod_problem(&observed.pods))
}

/// `Ready`, `QueueReady` and `Degraded`, keeping each condition's
/// `lastTransitionTime` while its status does not change.
pub fn conditions(
    observed: &Observation,
    generation: Option<i64>,
    now: &Time,
    previous: &[Condition],
) -> Vec<Condition> {
    let degraded = degraded_problem(observed);

    let queue = match &observed.queue_problem {
        None => (
            true,
            ConditionReason::QueueInPlace,
            "topic and subscription exist".to_owned(),
        ),
        Some(p) => (false, p.reason.into(), p.message.clone()),
    };
    let ready = match &degraded {
        Some(p) => (false, p.reason.into(), p.message.clone()),
        None if observed.ready_replicas < observed.desired_replicas => (
            false,
            ConditionReason::PodsNotReady,
            format!(
                "{} of {} worker pods are ready",
                observed.ready_replicas, observed.desired_replicas
            ),
        ),
        None if observed.desired_replicas == 0 => (
            true,
            ConditionReason::Idle,
            "no backlog; the fleet is scaled to zero".to_owned(),
        ),
        None => (
            true,
            ConditionReason::PodsReady,
            format!("{} worker pods are ready", observed.ready_replicas),
        ),
    };
    let degraded = match &degraded {
        Some(p) => (true, p.reason.into(), p.message.clone()),
        None => (
            false,
            ConditionReason::AsExpected,
            "nothing needs attention".to_owned(),
        ),
    };

    [
        (FleetCondition::Ready, ready),
        (FleetCondition::QueueReady, queue),
        (FleetCondition::Degraded, degraded),
    ]
    .into_iter()
    .map(|(type_, (status, reason, message))| {
        let type_ = type_.as_str();
        let status = if status { "True" } else { "False" }.to_owned();
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        Condition {
            type_: type_.to_owned(),
            status,
            reason: reason.as_str().to_owned(),
            message,
            observed_generation: generation,
            last_transition_time,
        }
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, PodStatus,
    };
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + secs).unwrap())
    }

    fn waiting_pod(name: &str, reason: &str) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod.status = Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "worker".into(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.into()),
                        message: Some("details".into()),
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        pod
    }

    fn find<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
        conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn healthy_fleet_is_ready_and_not_degraded() {
        let observed = Observation {
            desired_replicas: 2,
            ready_replicas: 2,
            ..Observation::default()
        };
        let c = conditions(&observed, Some(3), &at(0), &[]);
        assert_eq!(find(&c, "Ready").status, "True");
        assert_eq!(find(&c, "QueueReady").status, "True");
        assert_eq!(find(&c, "Degraded").status, "False");
        assert_eq!(find(&c, "Ready").observed_generation, Some(3));
    }

    #[test]
    fn missing_secret_is_degraded_with_its_name() {
        let observed = Observation {
            missing_secrets: vec!["llm-api/apiKey".into()],
            ..Observation::default()
        };
        let c = conditions(&observed, None, &at(0), &[]);
        let degraded = find(&c, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "SecretNotFound")
        );
        assert!(degraded.message.contains("llm-api/apiKey"));
        assert_eq!(find(&c, "Ready").reason, "SecretNotFound");
    }

    #[test]
    fn queue_problem_shows_on_queue_ready_and_degraded() {
        let observed = Observation {
            queue_problem: Some(Problem {
                reason: DegradedReason::SubscriptionNotFound,
                message: "subscription s does not exist".into(),
            }),
            ..Observation::default()
        };
        let c = conditions(&observed, None, &at(0), &[]);
        assert_eq!(find(&c, "QueueReady").reason, "SubscriptionNotFound");
        assert_eq!(find(&c, "QueueReady").status, "False");
        assert_eq!(find(&c, "Degraded").reason, "SubscriptionNotFound");
    }

    #[test]
    fn a_shared_subscription_is_degraded_and_names_the_other_fleet() {
        let observed = Observation {
            shared_with: vec!["team-b/other".into()],
            desired_replicas: 1,
            ready_replicas: 1,
            ..Observation::default()
        };
        let c = conditions(&observed, None, &at(0), &[]);
        let degraded = find(&c, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "SubscriptionShared")
        );
        assert!(
            degraded.message.contains("team-b/other"),
            "{}",
            degraded.message
        );
        assert_eq!(find(&c, "Ready").status, "False");
        assert_eq!(find(&c, "QueueReady").status, "True");
    }

    #[test]
    fn image_pull_and_crash_loops_are_named() {
        let pull = pod_problem(&[waiting_pod("p1", "ErrImagePull")]).unwrap();
        assert_eq!(pull.reason, "ImagePullBackOff");
        assert_eq!(pull.message, "pod p1: ErrImagePull: details");
        let crash = pod_problem(&[waiting_pod("p2", "CrashLoopBackOff")]).unwrap();
        assert_eq!(crash.reason, "CrashLoopBackOff");
        assert!(pod_problem(&[waiting_pod("p3", "ContainerCreating")]).is_none());
    }

    /// A pod waiting in `waiting` whose last run ended with `reason`.
    fn restarted_pod(name: &str, waiting: &str, reason: &str, code: i32, message: &str) -> Pod {
        let mut pod = waiting_pod(name, waiting);
        let statuses = pod
            .status
            .as_mut()
            .and_then(|s| s.container_statuses.as_mut())
            .unwrap();
        statuses[0].last_state = Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                reason: Some(reason.into()),
                message: (!message.is_empty()).then(|| message.into()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        });
        pod
    }

    #[test]
    fn a_container_killed_for_its_memory_is_named_before_its_crash_loop() {
        let oom = restarted_pod("p1", "CrashLoopBackOff", "OOMKilled", 137, "");
        let problem = pod_problem(&[waiting_pod("p0", "CrashLoopBackOff"), oom]).unwrap();
        assert_eq!(problem.reason, DegradedReason::OOMKilled);
        assert_eq!(
            problem.message,
            "pod p1: OOMKilled (container worker last exited with code 137, OOMKilled)"
        );
    }

    #[test]
    fn an_oom_kill_is_told_with_the_memory_limit() {
        let mut pod = restarted_pod("p1", "CrashLoopBackOff", "OOMKilled", 137, "");
        pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            containers: vec![k8s_openapi::api::core::v1::Container {
                name: "worker".into(),
                resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
                    limits: Some(
                        [(
                            "memory".to_owned(),
                            k8s_openapi::apimachinery::pkg::api::resource::Quantity("64Mi".into()),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(
            oom_killed(&pod).as_deref(),
            Some("container worker was OOM-killed (memory limit 64Mi)")
        );
        let crashed = restarted_pod("p2", "CrashLoopBackOff", "Error", 1, "");
        assert_eq!(oom_killed(&crashed), None);
    }

    #[test]
    fn a_container_the_runtime_cannot_start_is_named() {
        let pod = restarted_pod(
            "p1",
            "CrashLoopBackOff",
            "StartError",
            128,
            "runc create failed: mount a volume: permission denied",
        );
        let problem = pod_problem(&[pod]).unwrap();
        assert_eq!(problem.reason, DegradedReason::ContainerCannotRun);
        assert!(
            problem.message.contains("permission denied"),
            "{}",
            problem.message
        );
    }

    #[test]
    fn a_crash_loop_says_how_the_last_run_ended() {
        let pod = restarted_pod(
            "p1",
            "CrashLoopBackOff",
            "Error",
            1,
            "starting\ncannot reach 10.0.0.9:8085: connection refused\n",
        );
        let problem = pod_problem(&[pod]).unwrap();
        assert_eq!(problem.reason, DegradedReason::CrashLoopBackOff);
        assert_eq!(
            problem.message,
            "pod p1: CrashLoopBackOff: details (container worker last exited with code 1, Error: cannot reach 10.0.0.9:8085: connection refused)"
        );
    }

    #[test]
    fn a_write_to_the_read_only_root_is_named_before_its_crash_loop() {
        let pod = restarted_pod(
            "p1",
            "CrashLoopBackOff",
            "Error",
            2,
            "probe-fixture: cannot write /home/nonroot/state: Read-only file system (os error 30)\n",
        );
        let problem = pod_problem(&[waiting_pod("p0", "CrashLoopBackOff"), pod]).unwrap();
        assert_eq!(problem.reason, DegradedReason::SecurityContextDenied);
        assert!(
            problem.message.starts_with(
                "pod p1: container worker was refused by its security context (the read-only root filesystem"
            ),
            "{}",
            problem.message
        );
        assert!(
            problem
                .message
                .ends_with("cannot write /home/nonroot/state: Read-only file system (os error 30)"),
            "{}",
            problem.message
        );
    }

    #[test]
    fn a_file_or_entrypoint_the_user_may_not_use_is_a_security_context_refusal() {
        let opened = restarted_pod(
            "p1",
            "CrashLoopBackOff",
            "Error",
            1,
            "cannot read /etc/app/key.pem: Permission denied (os error 13)",
        );
        let ran = restarted_pod(
            "p2",
            "CrashLoopBackOff",
            "StartError",
            128,
            "runc create failed: unable to start container process: exec: \"/app/run\": permission denied: unknown",
        );
        for (pod, user_may_not) in [(opened, "open that file"), (ran, "run its entrypoint")] {
            let problem = pod_problem(&[pod]).unwrap();
            assert_eq!(problem.reason, DegradedReason::SecurityContextDenied);
            assert!(
                problem.message.contains(user_may_not),
                "{}",
                problem.message
            );
        }
    }

    #[test]
    fn a_permission_error_from_an_api_is_not_a_security_context_refusal() {
        let pod = restarted_pod(
            "p1",
            "CrashLoopBackOff",
            "Error",
            1,
            "pull failed: status: PermissionDenied, message: \"User not authorized\"",
        );
        assert_eq!(
            pod_problem(&[pod]).unwrap().reason,
            DegradedReason::CrashLoopBackOff
        );
    }

    #[test]
    fn unready_pods_are_not_ready_but_not_degraded() {
        let observed = Observation {
            desired_replicas: 3,
            ready_replicas: 1,
            ..Observation::default()
        };
        let c = conditions(&observed, None, &at(0), &[]);
        assert_eq!(find(&c, "Ready").reason, "PodsNotReady");
        assert_eq!(find(&c, "Ready").message, "1 of 3 worker pods are ready");
        assert_eq!(find(&c, "Degraded").status, "False");
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let healthy = Observation::default();
        let first = conditions(&healthy, None, &at(0), &[]);
        let same = conditions(&healthy, None, &at(60), &first);
        assert_eq!(find(&same, "Ready").last_transition_time, at(0));
        let broken = Observation {
            missing_secrets: vec!["s/k".into()],
            ..Observation::default()
        };
        let changed = conditions(&broken, None, &at(90), &same);
        assert_eq!(find(&changed, "Ready").last_transition_time, at(90));
        assert_eq!(find(&changed, "QueueReady").last_transition_time, at(0));
    }
}
