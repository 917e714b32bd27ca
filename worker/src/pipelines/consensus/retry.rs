//! When a persona (or the expand step) tries again: exponential backoff from
//! the fleet's settings, stretched when a 429 answer names a longer wait.

use std::time::Duration;

use drover_crds::pipeline_worker::ConsensusSpec;

/// The longest wait between two tries, whatever the settings or a server's
/// Retry-After say: a step should fail and report, not sit silent.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// How many tries a caller gets and how long it waits between them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Tries after the first.
    pub max_retries: u32,
    pub initial: Duration,
    pub multiplier: f64,
}

impl RetryPolicy {
    pub fn from_spec(spec: &ConsensusSpec) -> Self {
        Self {
            max_retries: u32::try_from(spec.max_retries_per_persona).unwrap_or(0),
            initial: Duration::from_millis(u64::try_from(spec.initial_backoff_millis).unwrap_or(0)),
            multiplier: spec.backoff_multiplier.max(1.0),
        }
    }

    /// Every try, the first included.
    pub fn tries(&self) -> u32 {
        self.max_retries.saturating_add(1)
    }

    /// The wait before retry number `retry` (1 for the second try):
    /// `initial * multiplier^(retry-1)`, at least what the server asked for,
    /// at most [`MAX_WAIT`].
    pub fn wait_before(&self, retry: u32, server_asked: Option<Duration>) -> Duration {
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let scheduled = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        let scheduled = if scheduled.is_finite() {
            Duration::from_secs_f64(scheduled.min(MAX_WAIT.as_secs_f64()))
        } else {
            MAX_WAIT
        };
        scheduled
            .max(server_asked.unwrap_or_default())
            .min(MAX_WAIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(initial_ms: u64, multiplier: f64) -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            initial: Duration::from_millis(initial_ms),
            multiplier,
        }
    }

    #[test]
    fn waits_grow_by_the_multiplier() {
        let p = policy(100, 2.0);
        let waits: Vec<u128> = (1..=4)
            .map(|r| p.wait_before(r, None).as_millis())
            .collect();
        assert_eq!(waits, [100, 200, 400, 800]);
        let p = policy(100, 3.0);
        assert_eq!(p.wait_before(3, None), Duration::from_millis(900));
    }

    #[test]
    fn a_multiplier_of_one_waits_the_same_each_time() {
        let p = policy(250, 1.0);
        assert_eq!(p.wait_before(1, None), p.wait_before(7, None));
    }

    #[test]
    fn waits_are_capped_even_when_they_overflow() {
        let p = policy(60_000, 10.0);
        assert_eq!(p.wait_before(2, None), MAX_WAIT);
        assert_eq!(p.wait_before(u32::MAX, None), MAX_WAIT);
    }

    #[test]
    fn a_longer_retry_after_wins_but_is_capped() {
        let p = policy(100, 2.0);
        assert_eq!(
            p.wait_before(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.wait_before(3, Some(Duration::from_millis(10))),
            Duration::from_millis(400)
        );
        assert_eq!(p.wait_before(1, Some(Duration::from_secs(3600))), MAX_WAIT);
    }

    #[test]
    fn tries_count_the_first_one() {
        assert_eq!(policy(0, 2.0).tries(), 4);
        let none = RetryPolicy {
            max_retries: 0,
            ..policy(0, 2.0)
        };
        assert_eq!(none.tries(), 1);
    }

    #[test]
    fn built_from_the_fleet_settings() {
        let spec: ConsensusSpec = serde_json::from_value(serde_json::json!({
            "baseUrl": "http://llm/v1", "model": "m",
            "personas": [{"name": "a", "prompt": "p"}],
            "maxRetriesPerPersona": 2, "initialBackoffMillis": 50, "backoffMultiplier": 3.0,
        }))
        .unwrap();
        let p = RetryPolicy::from_spec(&spec);
        assert_eq!(p.tries(), 3);
        assert_eq!(p.wait_before(2, None), Duration::from_millis(150));
    }
}
