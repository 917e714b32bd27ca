//! The Drover operator: PipelineWorker fleets and Job dispatch.

pub mod admission;
pub mod admission_state;
pub mod archive;
pub mod backlog;
pub mod callback;
pub mod callback_settings;
pub mod callback_token;
pub mod config;
pub mod deployment;
pub mod dispatch;
pub mod fleet;
pub mod fleet_plan;
pub mod health;
pub mod job_policy;
pub mod job_reach;
pub mod job_retries;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod rbac;
pub mod scaler;
pub mod service;
pub mod watches;
