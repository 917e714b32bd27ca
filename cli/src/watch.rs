//! The live view of `submit --watch` (and `retry`/`resubmit --watch`): one
//! line for the Job and one per step, each with a progress bar, phase,
//! attempt, elapsed time and the last message, redrawn in place on a
//! terminal; on anything else, one plain line whenever a step moves.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use drover_crds::{Job, JobPhase, StepStatus};
use futures::{StreamExt, TryStreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::render;

/// How often elapsed times tick while nothing else changes.
const TICK: Duration = Duration::from_millis(500);

/// Follows Job `name` until it finishes and returns its last version.
pub async fn until_finished(jobs: &Api<Job>, name: &str, live: bool) -> anyhow::Result<Job> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(jobs.clone(), config).applied_objects().boxed();
    let mut view: Box<dyn View> = if live {
        Box::new(Live::new())
    } else {
        Box::new(Plain::default())
    };
    let mut last: Option<Job> = None;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            next = stream.try_next() => {
                let job = next
                    .with_context(|| format!("watching Job {name}"))?
                    .with_context(|| format!("the watch of Job {name} ended"))?;
                view.show(&job, Timestamp::now());
                let done = job.phase().is_terminal();
                last = Some(job);
                if done {
                    break;
                }
            }
            _ = tick.tick() => {
                if let Some(job) = &last {
                    view.show(job, Timestamp::now());
                }
            }
        }
    }
    view.finish();
    last.context("the watch ended before the Job was seen")
}

/// A Job waiting for its next attempt still shows the last one's steps
/// until a worker claims it: those are not the new attempt's.
fn steps_are_current(phase: JobPhase) -> bool {
    !matches!(phase, JobPhase::Pending | JobPhase::Queued)
}

trait View {
    fn show(&mut self, job: &Job, now: Timestamp);
    fn finish(&mut self);
}

/// Bars redrawn in place.
struct Live {
    bars: MultiProgress,
    header: ProgressBar,
    steps: BTreeMap<String, ProgressBar>,
    style: ProgressStyle,
}

impl Live {
    fn new() -> Self {
        let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let header = bars.add(ProgressBar::new(100));
        header.set_style(
            ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let style = ProgressStyle::with_template("step {prefix:<18} [{bar:20}] {pos:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("#>.");
        Self {
            bars,
            header,
            steps: BTreeMap::new(),
            style,
        }
    }
}

impl View for Live {
    fn show(&mut self, job: &Job, now: Timestamp) {
        self.header.set_message(render::job_line(job, now));
        let status = job.status.clone().unwrap_or_default();
        if !steps_are_current(status.phase) {
            return;
        }
        for step in &status.steps {
            let bar = self.steps.entry(step.name.clone()).or_insert_with(|| {
                let bar = self.bars.add(ProgressBar::new(100));
                bar.set_style(self.style.clone());
                bar.set_prefix(step.name.clone());
                bar
            });
            bar.set_position(u64::try_from(step.progress.clamp(0, 100)).unwrap_or(0));
            bar.set_message(render::step_detail(step, status.attempt, now));
        }
    }

    fn finish(&mut self) {
        for bar in self.steps.values() {
            bar.finish();
        }
        self.header.finish();
    }
}

/// Plain lines, one whenever the Job's phase or a step's state changes.
#[derive(Default)]
struct Plain {
    job: Option<(String, i32)>,
    steps: BTreeMap<String, (String, i32, Option<String>, i32)>,
}

impl Plain {
    fn say(line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// What makes a step worth a new plain line (not its ticking elapsed time).
fn step_key(step: &StepStatus, attempt: i32) -> (String, i32, Option<String>, i32) {
    (
        render::step_phase(step.phase).to_owned(),
        step.progress,
        step.message.clone(),
        attempt,
    )
}

impl View for Plain {
    fn show(&mut self, job: &Job, now: Timestamp) {
        let status = job.status.clone().unwrap_or_default();
        let key = (format!("{:?}", status.phase), status.attempt);
        if self.job.as_ref() != Some(&key) {
            Self::say(&render::job_line(job, now));
            self.job = Some(key);
        }
        if !steps_are_current(status.phase) {
            return;
        }
        for step in &status.steps {
            let key = step_key(step, status.attempt);
            if self.steps.get(&step.name) != Some(&key) {
                Self::say(&render::step_line(step, status.attempt, now));
                self.steps.insert(step.name.clone(), key);
            }
        }
    }

    fn finish(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steps_of_a_job_waiting_for_its_next_attempt_are_not_shown_as_its_own() {
        let shown: Vec<JobPhase> = JobPhase::ALL
            .into_iter()
            .filter(|p| steps_are_current(*p))
            .collect();
        assert_eq!(
            shown,
            [
                JobPhase::Running,
                // Its steps are this attempt's: one of them waits for its provider.
                JobPhase::Waiting,
                JobPhase::Backoff,
                JobPhase::Succeeded,
                JobPhase::Failed,
                JobPhase::Cancelled
            ]
        );
    }
}
