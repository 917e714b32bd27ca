//! The scheduler's part: the test control plane has no kube-scheduler, so the
//! kubelet binds every schedulable pod of the namespaces it serves to its own
//! Node, through the `pods/binding` subresource as kube-scheduler does.
//!
//! Placement constraints (nodeSelector, affinity, taints, resources) are not
//! evaluated: there is one node, and it takes every pod. Pods that a real
//! scheduler would not touch are left alone: terminating ones, ones with
//! scheduling gates, and ones that ask for another `schedulerName`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::task::JoinSet;

use super::Shared;

const DEFAULT_SCHEDULER: &str = "default-scheduler";
const BIND_ATTEMPTS: u32 = 8;
const BIND_RETRY: Duration = Duration::from_millis(100);

/// Whether a real scheduler would schedule `pod` now.
pub(crate) fn wants_binding(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    let unbound = spec.node_name.as_deref().is_none_or(str::is_empty);
    let gated = spec
        .scheduling_gates
        .as_ref()
        .is_some_and(|g| !g.is_empty());
    let ours = spec
        .scheduler_name
        .as_deref()
        .is_none_or(|s| s.is_empty() || s == DEFAULT_SCHEDULER);
    let terminal = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    unbound && !gated && ours && !terminal && pod.metadata.deletion_timestamp.is_none()
}

/// Watches unscheduled pods and binds them, until aborted.
pub(crate) async fn run(shared: Arc<Shared>, client: Client, recorder: Recorder) {
    // The same field selector kube-scheduler uses for pods it has to place.
    let config = watcher::Config::default().fields("spec.nodeName=");
    let apis: Vec<Api<Pod>> = match &shared.config.namespaces {
        None => vec![Api::all(client.clone())],
        Some(namespaces) => namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect(),
    };
    let mut events = stream::select_all(
        apis.into_iter()
            .map(|api| watcher(api, config.clone()).default_backoff().boxed()),
    );
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut bindings: JoinSet<String> = JoinSet::new();
    loop {
        tokio::select! {
            event = events.next() => {
                let pod = match event {
                    Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => pod,
                    Some(Ok(_)) => continue,
                    // The stream backs off and re-lists by itself.
                    Some(Err(error)) => {
                        tracing::warn!(%error, "the unscheduled-pod watch failed; retrying");
                        continue;
                    }
                    None => return,
                };
                let Some(uid) = pod.uid() else { continue };
                if wants_binding(&pod) && in_flight.insert(uid.clone()) {
                    let client = client.clone();
                    let recorder = recorder.clone();
                    let node = shared.config.node_name.clone();
                    bindings.spawn(async move {
                        bind(&client, &recorder, &pod, &node).await;
                        uid
                    });
                }
            }
            Some(done) = bindings.join_next() => {
                if let Ok(uid) = done {
                    in_flight.remove(&uid);
                }
            }
        }
    }
}

async fn bind(client: &Client, recorder: &Recorder, pod: &Pod, node: &str) {
    let (Some(name), Some(namespace)) = (
        pod.metadata.name.as_deref(),
        pod.metadata.namespace.as_deref(),
    ) else {
        return;
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            // A precondition: never bind a pod that replaced this one under its name.
            uid: pod.metadata.uid.clone(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Node".to_owned()),
            name: Some(node.to_owned()),
            ..ObjectReference::default()
        },
    };
    let mut delay = BIND_RETRY;
    for attempt in 1..=BIND_ATTEMPTS {
        let result: Result<serde_json::Value, kube::Error> = pods
            .create_subresource("binding", name, &PostParams::default(), &binding)
            .await;
        match result {
            Ok(_) => {
                tracing::debug!(namespace, name, node, "bound pod");
                let event = Event {
                    type_: EventType::Normal,
                    reason: "Scheduled".into(),
                    note: Some(format!(
                        "Successfully assigned {namespace}/{name} to {node}"
                    )),
                    action: "Binding".into(),
                    secondary: None,
                };
                if let Err(error) = recorder.publish(&event, &pod.object_ref(&())).await {
                    tracing::debug!(%error, "cannot record the Scheduled event");
                }
                return;
            }
            // Already bound (by another kubelet serving the namespace), deleted,
            // or replaced: nothing left to do.
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_not_found() => {
                tracing::debug!(namespace, name, reason = %status.message, "not binding pod");
                return;
            }
            Err(error) if attempt < BIND_ATTEMPTS => {
                tracing::debug!(namespace, name, %error, attempt, "binding failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(error) => {
                tracing::warn!(namespace, name, %error, "giving up binding pod");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value, extra_meta: serde_json::Value) -> Pod {
        let mut meta = json!({"name": "p", "namespace": "n", "uid": "u"});
        if let (Some(m), Some(extra)) = (meta.as_object_mut(), extra_meta.as_object()) {
            m.extend(extra.clone());
        }
        serde_json::from_value(json!({"metadata": meta, "spec": spec})).expect("pod")
    }

    #[test]
    fn binds_what_kube_scheduler_would() {
        let containers = json!([{"name": "c", "image": "i"}]);
        assert!(wants_binding(&pod(
            json!({"containers": containers}),
            json!({})
        )));
        assert!(wants_binding(&pod(
            json!({"containers": containers, "schedulerName": "default-scheduler"}),
            json!({})
        )));
        assert!(!wants_binding(&pod(
            json!({"containers": containers, "nodeName": "elsewhere"}),
            json!({})
        )));
        assert!(!wants_binding(&pod(
            json!({"containers": containers, "schedulingGates": [{"name": "wait"}]}),
            json!({})
        )));
        assert!(!wants_binding(&pod(
            json!({"containers": containers, "schedulerName": "volcano"}),
            json!({})
        )));
        assert!(!wants_binding(&pod(
            json!({"containers": containers}),
            json!({"deletionTimestamp": "2026-01-01T00:00:00Z"})
        )));
    }
}
