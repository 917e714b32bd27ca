//! Operator-wide settings: defaults a PipelineWorker may leave out, and how
//! to reach Pub/Sub.

use drover_crds::egress::Cidr;

use crate::archive::Archive;
use crate::callback_token::CallbackUrls;
use crate::rbac::SecretCheck;

/// Settings that apply to every fleet the operator manages.
#[derive(Clone, Debug, Default, PartialEq)]
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
    /// The cluster's Pod and Service ranges (and other private ranges): no
    /// Job may make a worker reach them unless its fleet allows it. Passed
    /// on to the workers, which judge resolved addresses by the same list.
    pub cluster_cidrs: Vec<Cidr>,
    /// How the operator may read a fleet's Secrets to report SecretNotFound;
    /// `None`: it reads none, and a missing Secret shows only once a pod
    /// cannot start (CreateContainerConfigError).
    pub secret_check: Option<SecretCheck>,
    /// Signs the per-Job callback URLs providers call; `None`: the operator
    /// serves no callbacks and Waiting Jobs are only polled.
    pub callbacks: Option<CallbackUrls>,
    /// Where finished Jobs are archived before their TTL deletes them;
    /// `None`: nowhere (they are deleted at once).
    pub archive: Option<Archive>,
}
