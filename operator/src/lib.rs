//! The Drover operator: PipelineWorker fleets and Job dispatch.

pub mod scaler;
