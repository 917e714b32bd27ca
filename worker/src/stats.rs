//! Counters the worker shows on `/status` and `/metrics`.

use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
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

#[derive(Debug, Default)]
pub struct Stats {
    in_flight: AtomicI64,
    in_flight_gauge: Gauge,
    outcomes: Family<OutcomeLabels, Counter>,
    skips: Family<SkipLabels, Counter>,
    foreign: Family<ForeignLabels, Counter>,
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

    pub fn outcome(&self, outcome: &'static str) {
        self.outcomes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
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
        let outcomes: serde_json::Map<String, Value> =
            ["succeeded", "retryable", "failed", "cancelled"]
                .into_iter()
                .map(|o| {
                    (
                        o.to_owned(),
                        json!(
                            self.outcomes
                                .get_or_create(&OutcomeLabels { outcome: o })
                                .get()
                        ),
                    )
                })
                .collect();
        json!({"inFlight": self.in_flight(), "outcomes": outcomes})
    }
}
