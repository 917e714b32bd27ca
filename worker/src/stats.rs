//! Counters the worker shows on `/status` and `/metrics`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use drover_crds::Pipeline;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub pipeline: &'static str,
    /// succeeded, retryable, failed or cancelled.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub pipeline: &'static str,
    pub step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForeignLabels {
    /// adopted, dead_lettered or dropped.
    pub action: &'static str,
    pub reason: &'static str,
}

/// The outcomes `/status` totals, whatever the pipeline.
const OUTCOMES: [&str; 4] = ["succeeded", "retryable", "failed", "cancelled"];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Debug)]
pub struct Stats {
    in_flight: AtomicI64,
    in_flight_gauge: Gauge,
    outcomes: Family<OutcomeLabels, Counter>,
    outcome_totals: [AtomicU64; OUTCOMES.len()],
    skips: Family<SkipLabels, Counter>,
    foreign: Family<ForeignLabels, Counter>,
    job_duration: HistogramFamily<OutcomeLabels>,
    step_duration: HistogramFamily<StepLabels>,
}

/// 10 ms to about 11 hours: sleep Jobs take milliseconds, assemblies minutes.
fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 22))
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            in_flight: AtomicI64::default(),
            in_flight_gauge: Gauge::default(),
            outcomes: Family::default(),
            outcome_totals: Default::default(),
            skips: Family::default(),
            foreign: Family::default(),
            job_duration: Family::new_with_constructor(duration_buckets),
            step_duration: Family::new_with_constructor(duration_buckets),
        }
    }
}

impl Stats {
    pub fn register(registry: &mut Registry) -> Self {
        let stats = Self::default();
        let r = registry.sub_registry_with_prefix("drover_worker");
        r.register(
            "jobs_in_flight",
            "Jobs this worker runs now",
            stats.in_flight_gauge.clone(),
        );
        r.register(
            "job_outcomes",
            "Attempts finished, by outcome",
            stats.outcomes.clone(),
        );
        r.register(
            "idempotent_skips",
            "Messages acked without running, by reason",
            stats.skips.clone(),
        );
        r.register(
            "foreign_messages",
            "Messages that named no Job, by what was done with them",
            stats.foreign.clone(),
        );
        r.register(
            "job_duration_seconds",
            "Time from claim to outcome of one attempt, by pipeline and outcome",
            stats.job_duration.clone(),
        );
        r.register(
            "step_duration_seconds",
            "Time one pipeline step took, by pipeline and step",
            stats.step_duration.clone(),
        );
        stats
    }

    pub fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.in_flight_gauge.inc();
    }

    pub fn finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.in_flight_gauge.dec();
    }

    /// Counts an attempt's outcome and how long the attempt ran.
    pub fn outcome(&self, pipeline: Pipeline, outcome: &'static str, took: Duration) {
        let labels = OutcomeLabels {
            pipeline: pipeline.as_str(),
            outcome,
        };
        self.outcomes.get_or_create(&labels).inc();
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.outcome_totals[i].fetch_add(1, Ordering::Relaxed);
        }
        self.job_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn step_finished(&self, pipeline: Pipeline, step: &str, took: Duration) {
        // Review steps are named per persona; one series per step name is
        // what the dashboard shows, and personas are few and fixed per fleet.
        self.step_duration
            .get_or_create(&StepLabels {
                pipeline: pipeline.as_str(),
                step: step.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn skipped(&self, reason: &str) {
        self.skips
            .get_or_create(&SkipLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn foreign(&self, action: &'static str, reason: &'static str) {
        self.foreign
            .get_or_create(&ForeignLabels { action, reason })
            .inc();
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The counters as JSON, for `/status`.
    pub fn snapshot(&self) -> Value {
        let outcomes: serde_json::Map<String, Value> = OUTCOMES
            .iter()
            .zip(&self.outcome_totals)
            .map(|(name, total)| ((*name).to_owned(), json!(total.load(Ordering::Relaxed))))
            .collect();
        json!({"inFlight": self.in_flight(), "outcomes": outcomes})
    }
}
