//! The operator's Prometheus metrics.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FleetLabels {
    pub namespace: String,
    pub worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BacklogLabels {
    pub namespace: String,
    pub worker: String,
    /// queued, running or backoff.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScaleLabels {
    pub namespace: String,
    pub worker: String,
    /// up or down.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// failed, cancelled or retry.
    pub outcome: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    /// first, retry or republish.
    pub kind: &'static str,
}

/// Every metric the operator exports; cheap to clone (the families are shared).
#[derive(Clone, Debug)]
pub struct Metrics {
    pub backlog: Family<BacklogLabels, Gauge>,
    pub desired_replicas: Family<FleetLabels, Gauge>,
    pub ready_replicas: Family<FleetLabels, Gauge>,
    pub scale_decisions: Family<ScaleLabels, Counter>,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub job_outcomes: Family<OutcomeLabels, Counter>,
    pub jobs_published: Family<PublishLabels, Counter>,
    pub dispatch_latency: Histogram,
    /// Finished Jobs past their TTL that stay because the archive is down.
    pub archive_held_back: Family<FleetLabels, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them under the `drover` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            backlog: Family::default(),
            desired_replicas: Family::default(),
            ready_replicas: Family::default(),
            scale_decisions: Family::default(),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
            job_outcomes: Family::default(),
            jobs_published: Family::default(),
            dispatch_latency: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            archive_held_back: Family::default(),
        };
        // Alerts use increase(): a series must exist at zero before its first
        // event, or that event is the series' first sample and shows no rise.
        for (outcome, reason) in [("retry", "WorkerLost"), ("failed", "MaxAttemptsExceeded")] {
            drop(
                metrics
                    .job_outcomes
                    .get_or_create(&OutcomeLabels { outcome, reason }),
            );
        }
        // The dashboard's error panel shows 0, not "no data", on a healthy operator.
        for controller in ["job", "fleet"] {
            drop(metrics.reconcile_errors.get_or_create(&ErrorLabels {
                controller,
                error: "status",
            }));
        }
        for kind in ["first", "retry", "republish"] {
            drop(
                metrics
                    .jobs_published
                    .get_or_create(&PublishLabels { kind }),
            );
        }
        let r = registry.sub_registry_with_prefix("drover");
        r.register(
            "fleet_backlog",
            "Unfinished Jobs of a fleet by state",
            metrics.backlog.clone(),
        );
        r.register(
            "fleet_desired_replicas",
            "Replicas the scaler wants",
            metrics.desired_replicas.clone(),
        );
        r.register(
            "fleet_ready_replicas",
            "Worker pods that are ready",
            metrics.ready_replicas.clone(),
        );
        r.register(
            "fleet_scale_decisions",
            "Changes of a fleet's replica count",
            metrics.scale_decisions.clone(),
        );
        r.register(
            "operator_reconciles",
            "Reconciles run",
            metrics.reconciles.clone(),
        );
        r.register(
            "operator_reconcile_errors",
            "Reconciles that failed, by error",
            metrics.reconcile_errors.clone(),
        );
        r.register(
            "operator_reconcile_duration_seconds",
            "Time one reconcile took",
            metrics.reconcile_duration.clone(),
        );
        r.register(
            "operator_job_outcomes",
            "Jobs the operator failed, cancelled or sent back for a retry, by reason",
            metrics.job_outcomes.clone(),
        );
        r.register(
            "operator_jobs_published",
            "Job messages published, by kind (first, retry, republish)",
            metrics.jobs_published.clone(),
        );
        r.register(
            "job_dispatch_latency_seconds",
            "Time from a Job's creation to its first message",
            metrics.dispatch_latency.clone(),
        );
        r.register(
            "fleet_archive_held_back",
            "Finished Jobs of a fleet past their TTL, kept because the archive cannot take them",
            metrics.archive_held_back.clone(),
        );
        metrics
    }

    pub fn observe_reconcile(&self, controller: &'static str, took: Duration) {
        let labels = ControllerLabels { controller };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }
}
