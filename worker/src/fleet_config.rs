//! The worker's configuration is its PipelineWorker object, read at start and
//! watched afterwards: one source of truth, shared with the operator, so a
//! setting can never drift between the two.

use std::sync::Arc;

use drover_crds::PipelineWorker;
use futures::StreamExt;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

/// The latest PipelineWorker seen; `None` until it was read (or after it was deleted).
pub type FleetConfig = watch::Receiver<Option<Arc<PipelineWorker>>>;

/// Watches the PipelineWorker `name` and publishes every version of it.
/// Runs until the returned receiver and all its clones are dropped.
pub fn watch_fleet(api: Api<PipelineWorker>, name: &str) -> FleetConfig {
    let (sender, receiver) = watch::channel(None);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let name = name.to_owned();
    tokio::spawn(async move {
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            let update = match event {
                Ok(watcher::Event::Apply(pw) | watcher::Event::InitApply(pw)) => Some(Arc::new(pw)),
                Ok(watcher::Event::Delete(_)) => None,
                Ok(watcher::Event::Init | watcher::Event::InitDone) => continue,
                Err(error) => {
                    tracing::warn!(worker = %name, %error, "watching the PipelineWorker failed; retrying");
                    continue;
                }
            };
            if update.is_none() {
                tracing::warn!(worker = %name, "the PipelineWorker was deleted");
            }
            if sender.send(update).is_err() {
                break;
            }
        }
    });
    receiver
}
