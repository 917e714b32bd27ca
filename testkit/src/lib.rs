//! What Drover's tests share, in the worker's unit tests and the end-to-end
//! suite alike: typed builders for PipelineWorkers and Jobs ([`fixtures`]) and
//! a scripted OpenAI-compatible server standing in for a paid LLM API
//! ([`llm`]), and a scripted render provider ([`provider`]).

pub mod fixtures;
pub mod llm;
pub mod provider;

pub use fixtures::{JobBuilder, PipelineWorkerBuilder};
