//! The diagnostic `sleep` pipeline: one step that sleeps for the input's
//! duration, can be told to fail on given attempts, and leaves one file per
//! completed run in `effectsDir`, so load and fault tests can count effects;
//! it can hold memory while it sleeps (`holdMiB`), for memory-limit tests.

use std::path::PathBuf;
use std::time::Duration;

use drover_crds::FailureReason;
use drover_crds::input::SleepInput;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Attempt, Context, Failure};

pub const STEP: &str = "sleep";

pub async fn run(input: &Value, ctx: &Context<'_>) -> Result<Value, Failure> {
    let input = parse(input)?;
    ctx.progress
        .step(STEP, sleep_once(&input, &ctx.attempt))
        .await
}

async fn sleep_once(input: &SleepInput, attempt: &Attempt) -> Result<Value, Failure> {
    // Every byte written, so the pages are resident and count against the
    // container's memory limit (zeroed memory may never be touched).
    let held = vec![1_u8; input.hold_mib as usize * 1024 * 1024];
    tokio::time::sleep(Duration::from_millis(input.duration_millis)).await;
    drop(std::hint::black_box(held));
    if input.fail_on_attempts.contains(&attempt.attempt) {
        return Err(Failure {
            reason: FailureReason::Told,
            message: format!("the input asked attempt {} to fail", attempt.attempt),
            retryable: input.fail_retryable,
        });
    }
    if let Some(dir) = &input.effects_dir {
        record_effect(dir, attempt).await?;
    }
    // The uid names whose result this is: a recreated Job is another Job.
    Ok(json!({"sleptMillis": input.duration_millis, "jobUid": attempt.uid}))
}

/// `<dir>/<namespace>_<name>_<attempt>`, created exclusively: a second run of
/// the same attempt is an error a test can see, not a silent overwrite.
async fn record_effect(dir: &str, attempt: &Attempt) -> Result<(), Failure> {
    let path = PathBuf::from(dir).join(format!(
        "{}_{}_{}",
        attempt.namespace, attempt.name, attempt.attempt
    ));
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .await
        .map(|_| ())
        .map_err(|e| Failure {
            reason: FailureReason::EffectNotRecorded,
            message: format!("cannot create {}: {e}", path.display()),
            retryable: false,
        })
}

/// The operator checked the input before queueing; this only guards against
/// a Job edited by hand or a newer operator.
fn parse(input: &Value) -> Result<SleepInput, Failure> {
    SleepInput::deserialize(input).map_err(|e| Failure {
        reason: FailureReason::InvalidInput,
        message: format!("spec.input is not valid sleep input: {e}"),
        retryable: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipelines::testing;

    async fn run_attempt(input: &Value, attempt: i32) -> Result<Value, Failure> {
        let fleet = testing::fleet(json!({"pipeline": "sleep"}));
        run(input, &testing::context(&fleet, attempt)).await
    }

    #[tokio::test]
    async fn sleeps_and_reports_how_long() {
        let out = run_attempt(&json!({"durationMillis": 1}), 1).await.unwrap();
        assert_eq!(out, json!({"sleptMillis": 1, "jobUid": "uid-1"}));
    }

    #[tokio::test]
    async fn fails_on_the_attempts_it_is_told_to() {
        let input = json!({"durationMillis": 0, "failOnAttempts": [1], "failRetryable": false});
        let failure = run_attempt(&input, 1).await.unwrap_err();
        assert_eq!(
            (failure.reason, failure.retryable),
            (FailureReason::Told, false)
        );
        assert!(run_attempt(&input, 2).await.is_ok());
    }

    #[tokio::test]
    async fn each_run_leaves_exactly_one_effect() {
        let dir = std::env::temp_dir().join(format!("drover-sleep-effects-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = json!({"durationMillis": 0, "effectsDir": dir.to_str().unwrap()});
        run_attempt(&input, 1).await.unwrap();
        let again = run_attempt(&input, 1).await.unwrap_err();
        assert_eq!(again.reason, FailureReason::EffectNotRecorded);
        assert!(dir.join("ns_job_1").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn holds_the_memory_it_is_told_to_while_it_sleeps() {
        let out = run_attempt(&json!({"durationMillis": 1, "holdMiB": 8}), 1)
            .await
            .unwrap();
        assert_eq!(out["sleptMillis"], 1);
        let too_much =
            json!({"durationMillis": 1, "holdMiB": drover_crds::input::MAX_HOLD_MIB + 1});
        assert!(drover_crds::input::validate(drover_crds::Pipeline::Sleep, &too_much).is_err());
    }

    #[tokio::test]
    async fn bad_input_is_a_permanent_failure() {
        let failure = run_attempt(&json!({"sleep": 1}), 1).await.unwrap_err();
        assert_eq!(
            (failure.reason, failure.retryable),
            (FailureReason::InvalidInput, false)
        );
    }
}
