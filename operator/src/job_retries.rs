//! What the Job controller remembers about a Job whose reconcile failed: how
//! often in a row (for a per-Job exponential backoff, so a Job that cannot
//! be published or written does not storm Pub/Sub and the apiserver), and
//! the message it published when only the status write after it failed (so
//! the retry writes that message's id instead of publishing again).
//!
//! Keyed by the Job's uid: a Job created again under the same name starts
//! fresh. An entry is dropped when the Job's reconcile succeeds, and entries
//! no reconcile touched for [`FORGET_AFTER`] (a Job deleted while failing)
//! are dropped on the next failure.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// First wait after a failed reconcile.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between two tries for one Job.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// An entry older than this belongs to a Job nobody reconciles any more.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);

/// A message that went out for a Job version whose Queued write then failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The Job's resourceVersion the publish was decided from.
    pub resource_version: String,
    pub attempt: i32,
    pub message_id: String,
}

#[derive(Debug)]
struct Entry {
    failures: u32,
    last: Instant,
    published: Option<Published>,
}

/// The per-Job retry memory of one Job controller.
#[derive(Debug, Default)]
pub struct JobRetries {
    by_uid: Mutex<HashMap<String, Entry>>,
}

/// The wait after `failures` failed reconciles in a row (from 1):
/// `FIRST_BACKOFF * 2^(failures - 1)`, at most `MAX_BACKOFF`.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

impl JobRetries {
    /// Counts a failed reconcile of Job `uid` and returns how long to wait.
    pub fn failed(&self, uid: &str, now: Instant) -> Duration {
        let mut all = self.lock();
        all.retain(|_, e| now.saturating_duration_since(e.last) < FORGET_AFTER);
        let entry = all.entry(uid.to_owned()).or_insert(Entry {
            failures: 0,
            last: now,
            published: None,
        });
        entry.failures += 1;
        entry.last = now;
        backoff(entry.failures)
    }

    /// The Job's reconcile succeeded: forget it.
    pub fn succeeded(&self, uid: &str) {
        self.lock().remove(uid);
    }

    /// Remembers that `published` went out for Job `uid` but its write failed.
    pub fn remember_publish(&self, uid: &str, published: Published, now: Instant) {
        let mut all = self.lock();
        let entry = all.entry(uid.to_owned()).or_insert(Entry {
            failures: 0,
            last: now,
            published: None,
        });
        entry.published = Some(published);
    }

    /// The message already published for this version and attempt of Job `uid`.
    pub fn published(&self, uid: &str, resource_version: &str, attempt: i32) -> Option<String> {
        let all = self.lock();
        let published = all.get(uid)?.published.as_ref()?;
        (published.resource_version == resource_version && published.attempt == attempt)
            .then(|| published.message_id.clone())
    }

    /// How many Jobs are remembered (for tests).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no Job is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic elsewhere cannot leave a counter half-written.
        self.by_uid
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_quarter_second_up_to_thirty() {
        let waits: Vec<_> = (1..=9).map(backoff).collect();
        assert_eq!(waits[0], Duration::from_millis(250));
        assert_eq!(waits[1], Duration::from_millis(500));
        assert_eq!(waits[4], Duration::from_secs(4));
        assert_eq!(waits[8], MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn each_job_backs_off_on_its_own_and_a_success_resets_it() {
        let retries = JobRetries::default();
        let now = Instant::now();
        assert_eq!(retries.failed("a", now), Duration::from_millis(250));
        assert_eq!(retries.failed("a", now), Duration::from_millis(500));
        assert_eq!(retries.failed("b", now), Duration::from_millis(250));
        retries.succeeded("a");
        assert_eq!(retries.failed("a", now), Duration::from_millis(250));
    }

    #[test]
    fn a_publish_is_reused_only_for_the_same_version_and_attempt() {
        let retries = JobRetries::default();
        let now = Instant::now();
        let published = Published {
            resource_version: "7".into(),
            attempt: 2,
            message_id: "m-1".into(),
        };
        retries.remember_publish("a", published, now);
        assert_eq!(retries.published("a", "7", 2).as_deref(), Some("m-1"));
        assert_eq!(retries.published("a", "8", 2), None, "the Job moved on");
        assert_eq!(retries.published("a", "7", 3), None);
        assert_eq!(retries.published("b", "7", 2), None);
    }

    #[test]
    fn jobs_nobody_reconciles_any_more_are_forgotten() {
        let retries = JobRetries::default();
        let then = Instant::now();
        retries.failed("deleted", then);
        retries.failed("live", then + FORGET_AFTER);
        assert_eq!(retries.len(), 1);
    }
}
