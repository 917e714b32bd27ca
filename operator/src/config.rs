//! Operator-wide settings: defaults a PipelineWorker may leave out, and how
//! to reach Pub/Sub.

/// Settings that apply to every fleet the operator manages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OperatorConfig {
    /// Worker image for PipelineWorkers that name none.
    pub worker_image: String,
    /// Google Cloud project for queues that name none.
    pub pubsub_project: String,
    /// `host:port` of a Pub/Sub emulator; passed on to the workers so both
    /// sides talk to the same server.
    pub pubsub_emulator_host: Option<String>,
    /// This replica's identity in the Lease, sent with every message it
    /// publishes (attribute `publisher`), so a duplicate names its sender.
    pub identity: String,
}
