//! Watches the pods bound to the kubelet's Node and keeps one pod worker per
//! pod, feeding it every new version of its Pod.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::{self, JoinSet};

use super::pod_worker::{self, Context, Desired};

/// Runs until aborted; aborting it aborts every pod worker (their processes are
/// killed when the workers are dropped).
pub(crate) async fn run(ctx: Context) {
    let node = ctx.shared.config.node_name.clone();
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    // The kubelet's own field selector: exactly the pods bound to this node.
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher(pods, config).default_backoff().boxed();

    let mut workers: HashMap<String, watch::Sender<Desired>> = HashMap::new();
    let mut task_uids: HashMap<task::Id, String> = HashMap::new();
    let mut tasks: JoinSet<()> = JoinSet::new();
    // Pods whose worker is done (the pod was deleted) but whose last watch events
    // may still arrive; forgotten on the pod's Delete event.
    let mut finished: HashSet<String> = HashSet::new();
    // Uids seen during a (re-)list, to find the pods deleted while not watching.
    let mut listing: Option<HashSet<String>> = None;

    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Init)) => listing = Some(HashSet::new()),
                Some(Ok(watcher::Event::InitApply(pod))) => {
                    if let (Some(seen), Some(uid)) = (listing.as_mut(), pod.uid()) {
                        seen.insert(uid);
                    }
                    deliver(&ctx, pod, &mut workers, &mut task_uids, &mut tasks, &finished);
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    if let Some(seen) = listing.take() {
                        for (uid, desired) in &workers {
                            if !seen.contains(uid) {
                                desired.send_replace(Desired::Gone);
                            }
                        }
                        finished.retain(|uid| seen.contains(uid));
                    }
                }
                Some(Ok(watcher::Event::Apply(pod))) => {
                    deliver(&ctx, pod, &mut workers, &mut task_uids, &mut tasks, &finished);
                }
                Some(Ok(watcher::Event::Delete(pod))) => {
                    if let Some(uid) = pod.uid() {
                        if let Some(desired) = workers.get(&uid) {
                            desired.send_replace(Desired::Gone);
                        }
                        finished.remove(&uid);
                    }
                }
                // The stream backs off and re-lists by itself.
                Some(Err(error)) => tracing::warn!(%node, %error, "the node's pod watch failed; retrying"),
                None => return,
            },
            Some(done) = tasks.join_next_with_id() => {
                let id = match &done {
                    Ok((id, ())) => *id,
                    Err(error) => error.id(),
                };
                if let Some(uid) = task_uids.remove(&id) {
                    workers.remove(&uid);
                    match done {
                        Ok(_) => {
                            finished.insert(uid);
                        }
                        // Not marked finished: the next event for the pod starts
                        // a fresh worker.
                        Err(error) => tracing::error!(%node, uid, %error, "a pod worker failed"),
                    }
                }
            }
        }
    }
}

fn deliver(
    ctx: &Context,
    pod: Pod,
    workers: &mut HashMap<String, watch::Sender<Desired>>,
    task_uids: &mut HashMap<task::Id, String>,
    tasks: &mut JoinSet<()>,
    finished: &HashSet<String>,
) {
    let Some(uid) = pod.uid() else {
        return;
    };
    let pod = Arc::new(pod);
    if let Some(desired) = workers.get(&uid) {
        desired.send_replace(Desired::Present(pod));
        return;
    }
    if finished.contains(&uid) || !needs_worker(&pod) {
        return;
    }
    let (desired, updates) = watch::channel(Desired::Present(pod.clone()));
    let handle = tasks.spawn(pod_worker::run(ctx.clone(), pod, updates));
    task_uids.insert(handle.id(), uid.clone());
    workers.insert(uid, desired);
}

/// A pod that finished (Succeeded or Failed) is not run again, unless it is
/// being deleted, which its worker then completes.
fn needs_worker(pod: &Pod) -> bool {
    let terminal = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    !terminal || pod.metadata.deletion_timestamp.is_some()
}
