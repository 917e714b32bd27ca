//! Step progress of one attempt: pipelines mark their named steps started
//! and finished here, under the fleet's step timeout, and the claim keeper
//! writes the latest snapshot to `status.steps`. Transitions wake the writer;
//! it coalesces bursts (parallel reviews finishing together) into one write.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use drover_crds::FailureReason;
use drover_crds::{Pipeline, StepPhase, StepStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::Notify;

use crate::pipelines::Failure;
use crate::stats::Stats;

/// The steps of one attempt, shared by the pipeline and the status writer.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

struct Inner {
    pipeline: Pipeline,
    step_timeout: Duration,
    steps: Mutex<Vec<StepStatus>>,
    changed: Notify,
    stats: Arc<Stats>,
}

impl Progress {
    /// All steps Pending but the first, which starts now: the claim that
    /// creates this snapshot is also the moment the first step begins, so
    /// the common case costs no extra status write.
    pub fn new(
        pipeline: Pipeline,
        names: Vec<String>,
        step_timeout: Duration,
        stats: Arc<Stats>,
    ) -> Self {
        let now = Time(Timestamp::now());
        let steps = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| StepStatus {
                name,
                phase: if i == 0 {
                    StepPhase::Running
                } else {
                    StepPhase::Pending
                },
                started_at: (i == 0).then(|| now.clone()),
                finished_at: None,
                attempts: i32::from(i == 0),
                progress: 0,
                message: None,
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                pipeline,
                step_timeout,
                steps: Mutex::new(steps),
                changed: Notify::new(),
                stats,
            }),
        }
    }

    /// The steps of an attempt that waited and goes on now: steps that
    /// ended keep how they ended, the waiting step `resumed` runs again from
    /// now (one more try), and the rest stay as they were.
    pub fn resumed(
        pipeline: Pipeline,
        previous: &[StepStatus],
        resumed: &str,
        step_timeout: Duration,
        stats: Arc<Stats>,
    ) -> Self {
        let now = Time(Timestamp::now());
        let steps = previous
            .iter()
            .cloned()
            .map(|mut step| {
                if step.name == resumed {
                    step.phase = StepPhase::Running;
                    step.attempts += 1;
                    step.finished_at = None;
                    step.started_at.get_or_insert(now.clone());
                }
                step
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                pipeline,
                step_timeout,
                steps: Mutex::new(steps),
                changed: Notify::new(),
                stats,
            }),
        }
    }

    /// Marks a step as handed to an outside provider, with a note (what the
    /// provider last said); it is written with the Job's Waiting status.
    pub fn wait(&self, name: &str, note: &str) {
        if let Some(step) = self.lock().iter_mut().find(|s| s.name == name) {
            step.phase = StepPhase::Waiting;
            step.message = Some(note.to_owned());
            step.started_at.get_or_insert(Time(Timestamp::now()));
        }
    }

    /// Runs one named step: marks it Running, bounds it by the step timeout,
    /// then marks it Succeeded or Failed. Steps may run concurrently.
    pub async fn step<T>(
        &self,
        name: &str,
        work: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        self.start(name);
        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.inner.step_timeout, work).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure {
                reason: FailureReason::StepTimeout,
                message: format!(
                    "step {name} ran longer than {} s",
                    self.inner.step_timeout.as_secs()
                ),
                retryable: true,
            }),
        };
        self.inner
            .stats
            .step_finished(self.inner.pipeline, name, started.elapsed());
        match &outcome {
            Ok(_) => {
                tracing::info!(
                    event = "step_completed",
                    step = name,
                    took_ms = started.elapsed().as_millis() as u64,
                    "step completed"
                );
                self.finish(name, StepPhase::Succeeded, None);
            }
            Err(failure) => {
                tracing::warn!(event = "step_failed", step = name, reason = failure.reason.as_str(), message = %failure.message, "step failed");
                self.finish(name, StepPhase::Failed, Some(failure.message.clone()));
            }
        }
        outcome
    }

    /// Sets a running step's progress (0-100). Written with the next
    /// transition or heartbeat, not on its own: progress alone never causes
    /// a write.
    pub fn set_progress(&self, name: &str, percent: u8) {
        if let Some(step) = self.lock().iter_mut().find(|s| s.name == name) {
            step.progress = i32::from(percent.min(100));
        }
    }

    /// Counts another try of a step that retries inside one attempt (a
    /// persona review after a 429, say), with a note on why.
    pub fn retried(&self, name: &str, why: &str) {
        if let Some(step) = self.lock().iter_mut().find(|s| s.name == name) {
            step.attempts += 1;
            step.message = Some(why.to_owned());
        }
    }

    /// The steps as they stand, for `status.steps`.
    pub fn snapshot(&self) -> Vec<StepStatus> {
        self.lock().clone()
    }

    /// Overall progress: the mean of the steps' progress.
    pub fn overall(&self) -> i32 {
        let steps = self.lock();
        if steps.is_empty() {
            return 0;
        }
        let sum: i32 = steps.iter().map(|s| s.progress).sum();
        sum / i32::try_from(steps.len()).unwrap_or(i32::MAX)
    }

    /// Ends every step still open, for the outcome write: a finished attempt
    /// leaves no step Running or Pending. Running steps end as `running`
    /// says (Failed when the job timed out, say); steps never reached are
    /// Skipped.
    pub fn close(&self, running: StepPhase) {
        let now = Time(Timestamp::now());
        for step in self.lock().iter_mut() {
            let phase = match step.phase {
                StepPhase::Running | StepPhase::Waiting => running,
                StepPhase::Pending => StepPhase::Skipped,
                _ => continue,
            };
            step.phase = phase;
            step.finished_at = Some(now.clone());
        }
    }

    /// Resolves at the next step transition.
    pub async fn changed(&self) {
        self.inner.changed.notified().await;
    }

    fn start(&self, name: &str) {
        let mut steps = self.lock();
        let Some(step) = steps.iter_mut().find(|s| s.name == name) else {
            drop(steps);
            tracing::warn!(step = name, "the pipeline ran a step it did not declare");
            return;
        };
        tracing::info!(event = "step_started", step = name, "step started");
        if step.phase == StepPhase::Running {
            // Started by the claim already; nothing new to write.
            return;
        }
        step.phase = StepPhase::Running;
        step.started_at = Some(Time(Timestamp::now()));
        step.attempts = step.attempts.max(1);
        drop(steps);
        self.inner.changed.notify_one();
    }

    fn finish(&self, name: &str, phase: StepPhase, message: Option<String>) {
        if let Some(step) = self.lock().iter_mut().find(|s| s.name == name) {
            step.phase = phase;
            step.finished_at = Some(Time(Timestamp::now()));
            if phase == StepPhase::Succeeded {
                step.progress = 100;
            }
            if message.is_some() {
                step.message = message;
            }
        }
        self.inner.changed.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, Vec<StepStatus>> {
        // A panic while holding this lock leaves plain data behind; go on.
        self.inner
            .steps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(names: &[&str], timeout: Duration) -> Progress {
        Progress::new(
            Pipeline::Sleep,
            names.iter().map(|n| (*n).to_owned()).collect(),
            timeout,
            Arc::new(Stats::default()),
        )
    }

    fn phases(p: &Progress) -> Vec<StepPhase> {
        p.snapshot().iter().map(|s| s.phase).collect()
    }

    #[test]
    fn the_first_step_starts_with_the_claim() {
        let p = progress(&["a", "b"], Duration::from_secs(1));
        assert_eq!(phases(&p), [StepPhase::Running, StepPhase::Pending]);
        assert!(p.snapshot()[0].started_at.is_some());
    }

    #[tokio::test]
    async fn steps_move_through_their_phases_and_wake_the_writer() {
        let p = progress(&["a", "b"], Duration::from_secs(1));
        p.step("a", async { Ok(()) }).await.unwrap();
        // The notification is stored until someone waits for it.
        tokio::time::timeout(Duration::from_millis(50), p.changed())
            .await
            .expect("a transition wakes the writer");
        let failed: Result<(), _> = p
            .step("b", async {
                Err(Failure {
                    reason: FailureReason::Told,
                    message: "no".into(),
                    retryable: false,
                })
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(phases(&p), [StepPhase::Succeeded, StepPhase::Failed]);
        assert_eq!(p.snapshot()[0].progress, 100);
        assert_eq!(p.snapshot()[1].message.as_deref(), Some("no"));
    }

    #[tokio::test]
    async fn a_step_longer_than_the_step_timeout_fails_retryably() {
        let p = progress(&["slow"], Duration::from_millis(20));
        let out: Result<(), _> = p
            .step("slow", async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
            .await;
        let failure = out.unwrap_err();
        assert_eq!(failure.reason, FailureReason::StepTimeout);
        assert!(failure.retryable);
    }

    #[test]
    fn a_resumed_attempt_keeps_its_finished_steps_and_runs_the_waiting_one_again() {
        let p = progress(&["submit", "render", "store"], Duration::from_secs(1));
        p.finish("submit", StepPhase::Succeeded, None);
        p.wait("render", "request r-1 at the provider: queued");
        let waited = p.snapshot();
        assert_eq!(
            phases(&p),
            [StepPhase::Succeeded, StepPhase::Waiting, StepPhase::Pending]
        );
        let resumed = Progress::resumed(
            Pipeline::Render,
            &waited,
            "render",
            Duration::from_secs(1),
            Arc::new(Stats::default()),
        );
        assert_eq!(
            phases(&resumed),
            [StepPhase::Succeeded, StepPhase::Running, StepPhase::Pending]
        );
        assert_eq!(resumed.snapshot()[1].attempts, 1);
        assert_eq!(
            resumed.snapshot()[0],
            waited[0],
            "the submit is not run again"
        );
        // An attempt that stops while waiting closes its waiting step too.
        p.close(StepPhase::Failed);
        assert_eq!(
            phases(&p),
            [StepPhase::Succeeded, StepPhase::Failed, StepPhase::Skipped]
        );
    }

    #[test]
    fn closing_ends_open_steps_only() {
        let p = progress(&["a", "b", "c", "d"], Duration::from_secs(1));
        p.finish("a", StepPhase::Succeeded, None);
        p.start("b");
        p.close(StepPhase::Failed);
        assert_eq!(
            phases(&p),
            [
                StepPhase::Succeeded,
                StepPhase::Failed,
                StepPhase::Skipped,
                StepPhase::Skipped
            ]
        );
    }

    #[test]
    fn overall_progress_is_the_mean_and_retries_are_counted() {
        let p = progress(&["a", "b"], Duration::from_secs(1));
        p.set_progress("a", 100);
        p.set_progress("b", 50);
        assert_eq!(p.overall(), 75);
        p.retried("a", "429 from the model");
        assert_eq!(p.snapshot()[0].attempts, 2);
    }
}
