//! Test-only pauses between two writes, so a fault test can kill a process
//! inside the one window it means to open: after a publish and before its
//! Queued write, after a run's effect and before its outcome write.
//!
//! Armed by `DEBUG_FAILPOINTS=<point>=<key>[,<point>=<key>…]`, where a key
//! names one attempt as `<job>/<attempt>`: keyed on the attempt rather than
//! on a count, a point fires for exactly that attempt whichever process of a
//! fleet reaches it, and a restarted process does not fire again for another
//! one. The task that reaches an armed point logs `failpoint_reached` and
//! waits forever; the rest of the process runs on until the test kills it.
//!
//! Only debug builds (the ones the tests build) contain the points; in a
//! release build [`pause`] is empty and the variable means nothing.

/// The variable that arms the points.
// Not `DROVER_*`: a fleet's `spec.env` may not set those (they are the
// operator's), and the chaos suite arms worker failpoints through it.
pub const ENV: &str = "DEBUG_FAILPOINTS";

/// A failpoint in the operator: a Job's message is published, its Queued
/// write not yet sent.
pub const AFTER_PUBLISH: &str = "operator.after_publish";
/// A failpoint in the worker: the pipeline has returned (a sleep Job has left
/// its effect), the outcome write not yet sent.
pub const BEFORE_OUTCOME: &str = "worker.before_outcome";

/// The key of one attempt, as the test arms it.
pub fn attempt_key(job: &str, attempt: i32) -> String {
    format!("{job}/{attempt}")
}

/// Waits forever when `point` is armed for `key`; returns at once otherwise
/// (and always in a release build).
pub async fn pause(point: &str, key: &str) {
    #[cfg(debug_assertions)]
    if armed::is_armed(point, key) {
        tracing::warn!(
            event = "failpoint_reached",
            failpoint = point,
            key,
            "paused at a failpoint until the process is killed"
        );
        std::future::pending::<()>().await;
    }
    #[cfg(not(debug_assertions))]
    let _ = (point, key);
}

#[cfg(debug_assertions)]
mod armed {
    use std::collections::HashSet;
    use std::sync::OnceLock;

    pub fn is_armed(point: &str, key: &str) -> bool {
        static ARMED: OnceLock<HashSet<(String, String)>> = OnceLock::new();
        ARMED
            .get_or_init(|| parse(&std::env::var(super::ENV).unwrap_or_default()))
            .contains(&(point.to_owned(), key.to_owned()))
    }

    /// `point=key` pairs; an entry without `=` arms nothing.
    pub fn parse(spec: &str) -> HashSet<(String, String)> {
        spec.split(',')
            .filter_map(|entry| entry.trim().split_once('='))
            .map(|(point, key)| (point.trim().to_owned(), key.trim().to_owned()))
            .collect()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn arms_each_point_for_its_own_attempts() {
            let armed = parse("worker.before_outcome=j-1/1, operator.after_publish=j-9/2,junk");
            assert!(armed.contains(&("worker.before_outcome".into(), "j-1/1".into())));
            assert!(armed.contains(&("operator.after_publish".into(), "j-9/2".into())));
            assert!(!armed.contains(&("worker.before_outcome".into(), "j-9/2".into())));
            assert_eq!(armed.len(), 2);
        }

        #[test]
        fn nothing_is_armed_without_the_variable() {
            assert!(parse("").is_empty());
        }
    }
}
