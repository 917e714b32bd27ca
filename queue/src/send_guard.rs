//! A condition every publish attempt must meet at the moment it is sent, for
//! the operator: only a replica that can prove it leads may publish.
//!
//! The client library retries a failed publish on its own, for up to ten
//! minutes by default, and sleeps between attempts. A leader frozen or cut off
//! during that sleep would send the retry whenever it runs again, long after
//! another replica took over. So the guard is asked twice per retry: when the
//! attempt fails (before the sleep) and right after the sleep, before the next
//! attempt goes out (through the library's retry throttler, the one hook it
//! calls at that point).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use google_cloud_gax::error::Error;
use google_cloud_gax::retry_policy::{RetryPolicy, RetryPolicyExt};
use google_cloud_gax::retry_result::RetryResult;
use google_cloud_gax::retry_state::RetryState;
use google_cloud_gax::retry_throttler::RetryThrottler;
use google_cloud_gax::throttle_result::ThrottleResult;
use google_cloud_pubsub::retry_policy::RetryableErrors;

/// How long the library may retry one publish. Short on purpose: the
/// operator's own per-Job backoff retries after that, asking its gate first.
pub const RETRY_TIME_LIMIT: Duration = Duration::from_secs(5);

/// Whether a publish may be sent now.
#[derive(Clone)]
pub struct SendGuard(Arc<dyn Fn() -> bool + Send + Sync>);

impl SendGuard {
    /// A guard that asks `allows` before every attempt.
    pub fn new(allows: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(allows))
    }

    /// A guard that always allows (the worker's dead letters, tests).
    pub fn always() -> Self {
        Self::new(|| true)
    }

    /// Whether sending is allowed at this moment.
    pub fn allows(&self) -> bool {
        (self.0)()
    }
}

impl Default for SendGuard {
    fn default() -> Self {
        Self::always()
    }
}

impl fmt::Debug for SendGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SendGuard").field(&self.allows()).finish()
    }
}

/// The publisher's retry policy: the library's own choice of retryable
/// errors within [`RETRY_TIME_LIMIT`], and never once the guard refuses.
#[derive(Debug)]
pub struct GuardedRetry {
    guard: SendGuard,
    errors: Box<dyn RetryPolicy>,
}

impl GuardedRetry {
    pub fn new(guard: SendGuard) -> Self {
        Self {
            guard,
            errors: Box::new(RetryableErrors.with_time_limit(RETRY_TIME_LIMIT)),
        }
    }
}

impl RetryPolicy for GuardedRetry {
    fn on_error(&self, state: &RetryState, error: Error) -> RetryResult {
        if !self.guard.allows() {
            return RetryResult::Exhausted(error);
        }
        self.errors.on_error(state, error)
    }

    // Called when the throttler below refused an attempt after the sleep.
    fn on_throttle(&self, _state: &RetryState, error: Error) -> ThrottleResult {
        if self.guard.allows() {
            ThrottleResult::Continue(error)
        } else {
            ThrottleResult::Exhausted(error)
        }
    }

    fn remaining_time(&self, state: &RetryState) -> Option<Duration> {
        self.errors.remaining_time(state)
    }
}

/// Refuses the attempt that follows a retry's sleep while the guard refuses.
#[derive(Debug)]
pub struct GuardedThrottler(pub SendGuard);

impl RetryThrottler for GuardedThrottler {
    fn throttle_retry_attempt(&self) -> bool {
        !self.0.allows()
    }

    fn on_retry_failure(&mut self, _flow: &RetryResult) {}

    fn on_success(&mut self) {}
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn switch() -> (Arc<AtomicBool>, SendGuard) {
        let open = Arc::new(AtomicBool::new(true));
        let reads = Arc::clone(&open);
        (open, SendGuard::new(move || reads.load(Ordering::SeqCst)))
    }

    fn unavailable() -> Error {
        Error::io("connection refused")
    }

    #[test]
    fn a_retryable_error_is_retried_while_the_guard_allows() {
        let (_open, guard) = switch();
        let policy = GuardedRetry::new(guard);
        let state = RetryState::new(true).set_attempt_count(1_u32);
        assert!(matches!(
            policy.on_error(&state, unavailable()),
            RetryResult::Continue(_)
        ));
    }

    #[test]
    fn nothing_is_retried_once_the_guard_refuses() {
        let (open, guard) = switch();
        let policy = GuardedRetry::new(guard.clone());
        let throttler = GuardedThrottler(guard);
        let state = RetryState::new(true).set_attempt_count(1_u32);
        assert!(!throttler.throttle_retry_attempt());
        open.store(false, Ordering::SeqCst);
        assert!(matches!(
            policy.on_error(&state, unavailable()),
            RetryResult::Exhausted(_)
        ));
        assert!(throttler.throttle_retry_attempt());
        assert!(matches!(
            policy.on_throttle(&state, unavailable()),
            ThrottleResult::Exhausted(_)
        ));
    }
}
