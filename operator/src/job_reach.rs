//! The operator's check of what a Pending Job would reach through its fleet
//! (storage prefixes, literal private addresses), before anything is
//! published: a refused Job fails as InvalidInput and no worker ever sees it.

use drover_crds::egress::Cidr;
use drover_crds::job::{Job, JobPhase};
use drover_crds::{FailureReason, PipelineWorker, input, reach};

use crate::job_policy::NextStep;

/// The failure of a Pending Job whose input its fleet does not allow, or
/// `None` to let `job_policy::next_step` decide. Input that breaks the
/// pipeline's own rules is left to `next_step`, which names that first.
pub fn refusal(job: &Job, fleet: Option<&PipelineWorker>, cluster: &[Cidr]) -> Option<NextStep> {
    let fleet = fleet?;
    if job.phase() != JobPhase::Pending
        || job.spec.cancel
        || job.metadata.deletion_timestamp.is_some()
        || input::validate(fleet.spec.pipeline, &job.spec.input).is_err()
    {
        return None;
    }
    let refused = reach::check(&fleet.spec, &job.spec.input, cluster).err()?;
    Some(NextStep::Fail {
        reason: FailureReason::InvalidInput,
        message: refused.to_string(),
        dead_letter: false,
    })
}

#[cfg(test)]
mod tests {
    use drover_crds::egress::{DEFAULT_CLUSTER_CIDRS, parse_list};
    use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
    use serde_json::json;

    use super::*;

    fn assembly_job(main: &str) -> Job {
        JobBuilder::new("j", "episodes")
            .input(json!({
                "episodeId": "1", "mainUrl": main, "template": {},
                "outputUrl": "s3://media/out/1.mp3",
            }))
            .build()
    }

    #[test]
    fn a_job_outside_its_fleets_storage_fails_before_it_is_queued() {
        let fleet = PipelineWorkerBuilder::assembly("episodes")
            .allowed_prefixes(&["s3://media/"])
            .build();
        let cluster = parse_list(DEFAULT_CLUSTER_CIDRS).unwrap();
        let Some(NextStep::Fail {
            reason,
            message,
            dead_letter,
        }) = refusal(
            &assembly_job("https://169.254.169.254/computeMetadata/v1/"),
            Some(&fleet),
            &cluster,
        )
        else {
            panic!("expected a failure");
        };
        assert_eq!(reason, FailureReason::InvalidInput);
        assert!(message.contains("metadata server"), "{message}");
        assert!(!dead_letter);
        assert_eq!(
            refusal(&assembly_job("s3://media/m.wav"), Some(&fleet), &cluster),
            None
        );
    }

    #[test]
    fn schema_errors_and_missing_fleets_are_left_to_the_policy() {
        let fleet = PipelineWorkerBuilder::assembly("episodes").build();
        let mut broken = assembly_job("s3://media/m.wav");
        broken.spec.input["extra"] = json!(1);
        assert_eq!(refusal(&broken, Some(&fleet), &[]), None);
        assert_eq!(refusal(&assembly_job("s3://x/m.wav"), None, &[]), None);
    }
}
