//! The process plumbing the operator and the worker share: JSON logs
//! ([`logs`]), the `/metrics` response ([`metrics`]), the health and metrics
//! server ([`http`]), stop signals ([`signals`]), start-up ([`start`]), and
//! the test-only pauses of debug builds ([`failpoint`]).

pub mod failpoint;
pub mod http;
pub mod job_status;
pub mod logs;
pub mod metrics;
pub mod signals;
pub mod start;
