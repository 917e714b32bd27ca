//! Pod status as the kubelet writes it: phase, conditions and the apply
//! request that carries them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ContainerState, Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

/// The pod phase for a pod whose one (run) container is in `state`, after the
/// kubelet's `getPhase`. `terminal`: the pod is being deleted and its container
/// will not run again, whatever the restart policy says.
pub(crate) fn phase(
    restart_policy: &str,
    state: &ContainerState,
    last_state: Option<&ContainerState>,
    terminal: bool,
) -> &'static str {
    if state.running.is_some() {
        return "Running";
    }
    // A stopped container: terminated, or waiting to be restarted after a
    // termination (CrashLoopBackOff). Waiting without an earlier run is Pending.
    let exit_code = match (&state.terminated, &state.waiting) {
        (Some(terminated), _) => terminated.exit_code,
        (None, _) => match last_state.and_then(|s| s.terminated.as_ref()) {
            Some(last) => last.exit_code,
            None => return "Pending",
        },
    };
    let succeeded = exit_code == 0 && state.terminated.is_some();
    if terminal {
        return if succeeded { "Succeeded" } else { "Failed" };
    }
    match restart_policy {
        "Never" if state.terminated.is_some() => {
            if succeeded {
                "Succeeded"
            } else {
                "Failed"
            }
        }
        "OnFailure" if succeeded => "Succeeded",
        // Always restarts; OnFailure restarts failures; both are still Running.
        _ => "Running",
    }
}

/// The conditions the kubelet owns, with their transition times kept across
/// updates (a transition time only moves when the status does).
#[derive(Debug, Default)]
pub(crate) struct Conditions {
    transitions: BTreeMap<&'static str, (bool, Timestamp)>,
}

/// What the kubelet knows when it computes the conditions.
pub(crate) struct Readiness<'a> {
    pub container: &'a str,
    pub ready: bool,
    /// Why the container is not ready, if there is more to say than that.
    pub detail: Option<&'a str>,
    /// The pod is terminal (its container will not run again).
    pub terminal: bool,
}

impl Conditions {
    pub(crate) fn compute(
        &mut self,
        pod: &Pod,
        readiness: &Readiness<'_>,
        now: Timestamp,
    ) -> Vec<PodCondition> {
        let generation = pod.metadata.generation;
        let existing = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
        // PodScheduled was set by the binding; keep its time.
        let scheduled_at = existing
            .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
            .and_then(|c| c.last_transition_time.clone());

        let (gates_ready, missing_gates) = readiness_gates(pod);
        let (containers_reason, containers_message) = if readiness.terminal {
            (Some("PodCompleted".to_owned()), None)
        } else if readiness.ready {
            (None, None)
        } else {
            let mut message = format!("containers with unready status: [{}]", readiness.container);
            if let Some(detail) = readiness.detail {
                message.push_str(": ");
                message.push_str(detail);
            }
            (Some("ContainersNotReady".to_owned()), Some(message))
        };
        let containers_ready = readiness.ready && !readiness.terminal;
        let (ready_reason, ready_message) = if containers_ready && !gates_ready {
            (
                Some("ReadinessGatesNotReady".to_owned()),
                Some(format!(
                    "corresponding condition of pod readiness gate {missing_gates:?} does not exist or is not True"
                )),
            )
        } else {
            (containers_reason.clone(), containers_message.clone())
        };

        let mut condition = |type_: &'static str, status: bool, reason, message| {
            let entry = self.transitions.entry(type_).or_insert((status, now));
            if entry.0 != status {
                *entry = (status, now);
            }
            PodCondition {
                type_: type_.to_owned(),
                status: if status { "True" } else { "False" }.to_owned(),
                last_transition_time: Some(Time(entry.1)),
                reason,
                message,
                observed_generation: generation,
                last_probe_time: None,
            }
        };
        let mut conditions = vec![
            condition("PodReadyToStartContainers", true, None, None),
            // No init containers are run, so the pod is initialized at once.
            condition("Initialized", true, None, None),
            condition(
                "ContainersReady",
                containers_ready,
                containers_reason,
                containers_message,
            ),
            condition(
                "Ready",
                containers_ready && gates_ready,
                ready_reason,
                ready_message,
            ),
        ];
        let mut scheduled = condition("PodScheduled", true, None, None);
        if scheduled_at.is_some() {
            scheduled.last_transition_time = scheduled_at;
        }
        conditions.push(scheduled);
        conditions
    }
}

/// Whether every `readinessGates` condition is True, and the ones that are not.
fn readiness_gates(pod: &Pod) -> (bool, Vec<String>) {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    let missing: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.readiness_gates.iter().flatten())
        .filter(|gate| {
            !conditions
                .into_iter()
                .flatten()
                .any(|c| c.type_ == gate.condition_type && c.status == "True")
        })
        .map(|gate| gate.condition_type.clone())
        .collect();
    (missing.is_empty(), missing)
}

/// The server-side apply request for `status`. The uid makes the write fail
/// rather than land on a different pod that reuses the name.
pub(crate) fn apply_body(pod: &Pod, status: &PodStatus) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.metadata.name,
            "namespace": pod.metadata.namespace,
            "uid": pod.metadata.uid,
        },
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    };

    fn running() -> ContainerState {
        ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        }
    }

    fn waiting(reason: &str) -> ContainerState {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: None,
            }),
            ..Default::default()
        }
    }

    fn terminated(code: i32) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn phases_follow_get_phase() {
        assert_eq!(phase("Always", &running(), None, false), "Running");
        assert_eq!(
            phase("Always", &waiting("ErrImagePull"), None, false),
            "Pending"
        );
        assert_eq!(
            phase(
                "Always",
                &waiting("CrashLoopBackOff"),
                Some(&terminated(1)),
                false
            ),
            "Running"
        );
        assert_eq!(phase("Never", &terminated(0), None, false), "Succeeded");
        assert_eq!(phase("Never", &terminated(2), None, false), "Failed");
        assert_eq!(phase("OnFailure", &terminated(0), None, false), "Succeeded");
        assert_eq!(phase("OnFailure", &terminated(1), None, false), "Running");
        // Deleted: terminal whatever the policy.
        assert_eq!(phase("Always", &terminated(0), None, true), "Succeeded");
        assert_eq!(phase("Always", &terminated(137), None, true), "Failed");
    }

    #[test]
    fn transition_times_move_only_on_transitions() {
        let pod = Pod::default();
        let mut conditions = Conditions::default();
        let t0 = Timestamp::from_second(1_000).expect("time");
        let t1 = Timestamp::from_second(2_000).expect("time");
        let t2 = Timestamp::from_second(3_000).expect("time");
        let not_ready = Readiness {
            container: "main",
            ready: false,
            detail: Some("Readiness probe failed: boom"),
            terminal: false,
        };
        let ready = Readiness {
            ready: true,
            detail: None,
            ..not_ready
        };
        let find = |c: &[PodCondition], t: &str| c.iter().find(|c| c.type_ == t).cloned().expect(t);

        let first = conditions.compute(&pod, &not_ready, t0);
        let r = find(&first, "Ready");
        assert_eq!(r.status, "False");
        assert_eq!(r.reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(
            r.message.as_deref(),
            Some("containers with unready status: [main]: Readiness probe failed: boom")
        );
        let again = conditions.compute(&pod, &not_ready, t1);
        assert_eq!(find(&again, "Ready").last_transition_time, Some(Time(t0)));
        let flipped = conditions.compute(&pod, &ready, t2);
        assert_eq!(find(&flipped, "Ready").status, "True");
        assert_eq!(find(&flipped, "Ready").last_transition_time, Some(Time(t2)));
        assert_eq!(
            find(&flipped, "Initialized").last_transition_time,
            Some(Time(t0))
        );
    }

    #[test]
    fn readiness_gates_hold_back_ready() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [], "readinessGates": [{"conditionType": "example.com/lb"}]},
        }))
        .expect("pod");
        let readiness = Readiness {
            container: "main",
            ready: true,
            detail: None,
            terminal: false,
        };
        let conditions = Conditions::default().compute(&pod, &readiness, Timestamp::now());
        let status = |t: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| c.status.clone())
        };
        assert_eq!(status("ContainersReady").as_deref(), Some("True"));
        assert_eq!(status("Ready").as_deref(), Some("False"));
    }
}
