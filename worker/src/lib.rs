//! The Drover worker: it learns its settings from its PipelineWorker object,
//! serves its health, and (with the Job runtime) pulls and runs Jobs.

pub mod fleet_config;
pub mod http;
