//! The Drover worker: it learns its settings from its PipelineWorker object,
//! pulls Job messages from the fleet's subscription, claims and runs each Job,
//! and reports every step to the Job's status.

pub mod claims;
pub mod egress;
pub mod fleet_config;
pub mod foreign;
pub mod http;
pub mod job_run;
pub mod pipelines;
pub mod progress;
pub mod pull;
pub mod stats;
