//! The scaling policy: how many worker replicas a backlog wants.
//!
//! How the backlog is counted (the Job informer cache) is kept apart from
//! what is done with it, as KEDA keeps its scalers apart from the HPA. Scale
//! up at once; scale down only to the highest replica count recommended
//! during the stabilization window, so a short lull does not kill warm
//! workers.

use std::collections::VecDeque;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// The limits a PipelineWorker sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScalingPolicy {
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// Backlog one replica is sized for; at least 1.
    pub jobs_per_replica: i32,
    pub scale_down_stabilization: Duration,
}

/// What the backlog alone asks for: `ceil(backlog / jobsPerReplica)` within `[min, max]`.
pub fn recommended_replicas(backlog: u32, policy: &ScalingPolicy) -> i32 {
    let per_replica = u64::from(policy.jobs_per_replica.max(1).unsigned_abs());
    let wanted = u64::from(backlog).div_ceil(per_replica);
    let wanted = i32::try_from(wanted).unwrap_or(i32::MAX);
    let max = policy.max_replicas.max(policy.min_replicas.max(0));
    wanted.clamp(policy.min_replicas.max(0), max)
}

/// Recommendations remembered for the stabilization window, newest last.
#[derive(Clone, Debug, Default)]
pub struct RecommendationHistory {
    entries: VecDeque<(Timestamp, i32)>,
}

impl RecommendationHistory {
    /// Records `replicas` recommended at `now` and forgets what fell out of the window.
    pub fn record(&mut self, now: Timestamp, replicas: i32, window: Duration) {
        self.entries.push_back((now, replicas));
        let window = SignedDuration::try_from(window).unwrap_or(SignedDuration::MAX);
        let oldest_kept = now.checked_sub(window).unwrap_or(Timestamp::MIN);
        while let Some(&(at, _)) = self.entries.front() {
            if at >= oldest_kept {
                break;
            }
            self.entries.pop_front();
        }
    }

    /// The highest recommendation still in the window.
    fn highest(&self) -> Option<i32> {
        self.entries.iter().map(|&(_, replicas)| replicas).max()
    }
}

/// The replica count to set now.
///
/// Records this moment's recommendation in `history`, then: more than
/// `current` is granted at once; fewer is granted only down to the highest
/// recommendation of the last `scaleDownStabilizationSeconds`.
pub fn desired_replicas(
    backlog: u32,
    current: i32,
    policy: &ScalingPolicy,
    history: &mut RecommendationHistory,
    now: Timestamp,
) -> i32 {
    let recommended = recommended_replicas(backlog, policy);
    history.record(now, recommended, policy.scale_down_stabilization);
    if recommended >= current {
        return recommended;
    }
    history.highest().unwrap_or(recommended).min(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: i32, max: i32, per_replica: i32, window_secs: u64) -> ScalingPolicy {
        ScalingPolicy {
            min_replicas: min,
            max_replicas: max,
            jobs_per_replica: per_replica,
            scale_down_stabilization: Duration::from_secs(window_secs),
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn backlog_of_25_with_10_per_replica_wants_3() {
        assert_eq!(recommended_replicas(25, &policy(0, 10, 10, 60)), 3);
    }

    #[test]
    fn exact_multiple_does_not_round_up() {
        assert_eq!(recommended_replicas(30, &policy(0, 10, 10, 60)), 3);
    }

    #[test]
    fn recommendation_is_clamped_to_min_and_max() {
        assert_eq!(recommended_replicas(1000, &policy(0, 4, 10, 60)), 4);
        assert_eq!(recommended_replicas(0, &policy(2, 4, 10, 60)), 2);
    }

    #[test]
    fn idle_fleet_with_min_zero_wants_zero() {
        assert_eq!(recommended_replicas(0, &policy(0, 4, 10, 60)), 0);
    }

    #[test]
    fn nonsense_limits_never_panic() {
        assert_eq!(recommended_replicas(5, &policy(3, 1, 0, 60)), 3);
        assert_eq!(
            recommended_replicas(u32::MAX, &policy(0, i32::MAX, 1, 60)),
            i32::MAX
        );
    }

    #[test]
    fn scale_up_is_immediate() {
        let mut history = RecommendationHistory::default();
        let p = policy(0, 10, 10, 300);
        assert_eq!(desired_replicas(25, 0, &p, &mut history, at(0)), 3);
        assert_eq!(desired_replicas(95, 3, &p, &mut history, at(1)), 10);
    }

    #[test]
    fn scale_down_waits_for_the_stabilization_window() {
        let mut history = RecommendationHistory::default();
        let p = policy(0, 10, 10, 60);
        assert_eq!(desired_replicas(25, 0, &p, &mut history, at(0)), 3);
        // The backlog is gone, but 3 was recommended within the last 60 s.
        assert_eq!(desired_replicas(0, 3, &p, &mut history, at(1)), 3);
        assert_eq!(desired_replicas(0, 3, &p, &mut history, at(59)), 3);
        // Past the window only the zeros remain.
        assert_eq!(desired_replicas(0, 3, &p, &mut history, at(61)), 0);
    }

    #[test]
    fn scale_down_goes_to_the_highest_recent_recommendation() {
        let mut history = RecommendationHistory::default();
        let p = policy(0, 10, 10, 60);
        desired_replicas(50, 0, &p, &mut history, at(0));
        desired_replicas(20, 5, &p, &mut history, at(30));
        // 5 (at 0 s) has left the window; 2 (at 30 s) has not.
        assert_eq!(desired_replicas(0, 5, &p, &mut history, at(70)), 2);
    }

    #[test]
    fn zero_window_scales_down_at_once() {
        let mut history = RecommendationHistory::default();
        let p = policy(0, 10, 10, 0);
        desired_replicas(25, 0, &p, &mut history, at(0));
        assert_eq!(desired_replicas(0, 3, &p, &mut history, at(1)), 0);
    }

    #[test]
    fn scale_down_never_raises_above_current() {
        let mut history = RecommendationHistory::default();
        let p = policy(0, 10, 10, 300);
        desired_replicas(100, 0, &p, &mut history, at(0));
        // Someone scaled to 2 by hand in between; a lower backlog does not push it back up.
        assert_eq!(desired_replicas(5, 2, &p, &mut history, at(10)), 2);
    }
}
