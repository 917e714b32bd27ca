//! The process plumbing the operator and the worker share.

pub mod job_status;
