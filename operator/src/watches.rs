//! One watch per kind that both controllers read: the fleet controller and
//! the Job controller share one cache of Jobs and one of PipelineWorkers
//! instead of holding two full copies of each. Before a Job is stored, the
//! fields no controller reads are dropped, and every event updates the
//! admission state on its way to the cache.

use std::sync::Arc;

use drover_crds::{Job, JobPhase, PipelineWorker};
use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::BoxStream;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{self, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::Value;

use crate::admission_state::{AdmissionState, FleetKey};

/// Job changes the shared stream can hold before the watch waits for the
/// Job controller to take them; a burst of creates fits.
const JOB_CHANGE_BUFFER: usize = 1024;

/// The events of one watch, after they updated its cache.
pub type EventStream<K> = BoxStream<'static, watcher::Result<watcher::Event<K>>>;

/// What the fleet controller gets. It drives both watches: it needs every
/// Job deletion (a shrinking backlog), which a shared subscriber never sees.
pub struct FleetWatches {
    /// The shared PipelineWorker cache.
    pub fleets: Store<PipelineWorker>,
    /// The PipelineWorker watch; polling it fills `fleets`.
    pub fleet_events: EventStream<PipelineWorker>,
    /// The shared Job cache.
    pub jobs: Store<Job>,
    /// The Job watch; polling it fills `jobs` and feeds the Job controller.
    pub job_events: EventStream<Job>,
    /// Per-fleet counts of the Jobs, kept from the same watch.
    pub admission: Arc<AdmissionState>,
}

/// What the Job controller gets: the same caches, and every Job the watch
/// applied (its `reader()` is the shared Job cache).
pub struct JobWatches {
    /// The shared PipelineWorker cache.
    pub fleets: Store<PipelineWorker>,
    /// Every Job the shared watch applied, looked up in the shared cache.
    pub jobs: ReflectHandle<Job>,
    /// Admission state of every fleet, fed by both watches.
    pub admission: Arc<AdmissionState>,
    /// Fleets where a watch event freed a slot.
    pub freed: mpsc::UnboundedReceiver<FleetKey>,
}

/// Drops what no controller reads (managed fields, annotations such as
/// `kubectl.kubernetes.io/last-applied-configuration`, the worker's step
/// reports and result), which is most of a Job's bytes; and the input of a
/// Job past Pending, since only a Pending Job's input is checked. The
/// operator's writes are merge patches of other fields, so nothing dropped
/// is written back.
pub fn strip(job: &mut Job) {
    job.metadata.managed_fields = None;
    job.metadata.annotations = None;
    if job.phase() != JobPhase::Pending {
        job.spec.input = Value::Null;
    }
    if let Some(status) = job.status.as_mut() {
        status.steps = Vec::new();
        status.result = None;
        status.result_ref = None;
    }
}

/// Sets up the shared watches of Jobs and PipelineWorkers. Nothing is read
/// until the fleet controller polls its event streams.
pub fn shared(client: &Client) -> (FleetWatches, JobWatches) {
    let (freed_tx, freed) = mpsc::unbounded();
    let admission = Arc::new(AdmissionState::new(freed_tx));
    let (fleets, fleet_writer) = reflector::store();
    let fleet_admission = admission.clone();
    let fleet_events = watcher(
        Api::<PipelineWorker>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .map(move |event| {
        if let Ok(event) = &event {
            fleet_admission.observe_fleet(event, Timestamp::now());
        }
        event
    })
    .reflect(fleet_writer)
    .boxed();

    let (jobs, job_writer) = reflector::store_shared(JOB_CHANGE_BUFFER);
    let Some(job_changes) = job_writer.subscribe() else {
        unreachable!("a store made by store_shared always hands out subscribers")
    };
    let job_admission = admission.clone();
    let job_events = watcher(
        Api::<Job>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(strip)
    .map(move |event| {
        if let Ok(event) = &event {
            job_admission.observe_job(event, Timestamp::now());
        }
        event
    })
    .reflect_shared(job_writer)
    .boxed();

    (
        FleetWatches {
            fleets: fleets.clone(),
            fleet_events,
            jobs,
            job_events,
            admission: admission.clone(),
        },
        JobWatches {
            fleets,
            jobs: job_changes,
            admission,
            freed,
        },
    )
}

#[cfg(test)]
mod tests {
    use drover_crds::{JobStatus, StepPhase, StepStatus};
    use drover_testkit::JobBuilder;
    use serde_json::json;

    use super::*;

    fn job(phase: JobPhase) -> Job {
        let mut job = JobBuilder::new("j", "w")
            .input(json!({"prompt": "a long prompt"}))
            .build();
        job.metadata.annotations = Some([("note".to_owned(), "x".repeat(4096))].into());
        job.status = Some(JobStatus {
            phase,
            steps: vec![StepStatus {
                name: "expand".into(),
                phase: StepPhase::Succeeded,
                started_at: None,
                finished_at: None,
                attempts: 1,
                progress: 100,
                message: None,
            }],
            result: Some(json!({"summary": "done"})),
            ..JobStatus::default()
        });
        job
    }

    #[test]
    fn a_pending_job_keeps_the_input_it_is_checked_on() {
        let mut pending = job(JobPhase::Pending);
        strip(&mut pending);
        assert_eq!(pending.spec.input, json!({"prompt": "a long prompt"}));
        assert!(pending.metadata.annotations.is_none());
    }

    #[test]
    fn a_job_past_pending_keeps_neither_input_nor_reports() {
        for phase in [JobPhase::Queued, JobPhase::Running, JobPhase::Succeeded] {
            let mut later = job(phase);
            strip(&mut later);
            let status = later.status.as_ref().expect("status");
            assert_eq!(later.spec.input, Value::Null, "{phase:?}");
            assert!(status.steps.is_empty() && status.result.is_none());
            assert_eq!((status.phase, later.spec.worker.as_str()), (phase, "w"));
        }
    }
}
