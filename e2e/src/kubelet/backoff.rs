//! The kubelet's restart back-off, shortened for tests.
//!
//! A real kubelet waits 10 s after the second crash, doubling up to 5 min. Here
//! the steps are 100 ms doubling up to 5 s, so a crash loop shows up in a test
//! within a second, while a process that crashes at once still cannot spin the
//! CPU.

use std::time::Duration;

pub(crate) const INITIAL: Duration = Duration::from_millis(100);
pub(crate) const MAX: Duration = Duration::from_secs(5);
/// A container that ran at least this long before it exited is not crash-looping:
/// its next restart is immediate again (the kubelet uses 2 x the maximum too).
pub(crate) const RESET_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub(crate) struct Backoff {
    /// The delay for the next restart; `None` until the first one.
    next: Option<Duration>,
}

impl Backoff {
    /// The delay before the next attempt: none for the first (a single crash is
    /// restarted at once, like a kubelet does), then 100 ms, 200 ms, … up to 5 s.
    pub(crate) fn next_delay(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = Some(match delay {
            None => INITIAL,
            Some(d) => (d * 2).min(MAX),
        });
        delay
    }

    /// Like [`Self::next_delay`], but the first attempt waits too: for retries of
    /// something that just failed (image lookup, env resolution).
    pub(crate) fn next_retry(&mut self) -> Duration {
        self.next_delay().unwrap_or(INITIAL)
    }

    pub(crate) fn reset(&mut self) {
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_restart_is_immediate_then_doubles_to_the_cap() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..9).map(|_| backoff.next_delay()).collect();
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(
            delays,
            [
                None,
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(5000),
                ms(5000)
            ]
        );
        backoff.reset();
        assert_eq!(backoff.next_delay(), None);
    }

    #[test]
    fn retries_always_wait() {
        let mut backoff = Backoff::default();
        assert_eq!(backoff.next_retry(), INITIAL);
        assert_eq!(backoff.next_retry(), INITIAL);
        assert_eq!(backoff.next_retry(), INITIAL * 2);
    }
}
