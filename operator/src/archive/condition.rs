//! The `Archived` condition a fleet shows while the archive is enabled:
//! True while the archive takes finished Jobs, False with
//! `ArchiveUnavailable` while it cannot (and how many of the fleet's Jobs
//! wait past their TTL, undeleted), Unknown before the first look.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::ArchiveHealth;

/// The condition's type.
pub const CONDITION_ARCHIVED: &str = "Archived";
/// The archive takes Jobs.
pub const REASON_ARCHIVING: &str = "Archiving";
/// The archive database cannot be reached: finished Jobs are kept.
pub const REASON_ARCHIVE_UNAVAILABLE: &str = "ArchiveUnavailable";
/// Nothing was tried yet.
pub const REASON_CONNECTING: &str = "Connecting";

/// What the fleet reconcile knows about the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveView {
    pub health: ArchiveHealth,
    /// The fleet's finished Jobs past their TTL (waiting for the archive).
    pub overdue: usize,
}

/// The fleet's `Archived` condition, keeping `lastTransitionTime` while its
/// status does not change.
pub fn archived_condition(
    view: &ArchiveView,
    generation: Option<i64>,
    now: &Time,
    previous: &[Condition],
) -> Condition {
    let (status, reason, message) = match &view.health {
        ArchiveHealth::Available => (
            "True",
            REASON_ARCHIVING,
            "finished Jobs are archived before their TTL deletes them".to_owned(),
        ),
        ArchiveHealth::Unknown => (
            "Unknown",
            REASON_CONNECTING,
            "the archive database was not reached yet".to_owned(),
        ),
        ArchiveHealth::Unavailable { since, error } => (
            "False",
            REASON_ARCHIVE_UNAVAILABLE,
            format!(
                "the archive database cannot be reached since {since}: {error}; {} finished Jobs of this fleet are past their TTL and kept until it can",
                view.overdue
            ),
        ),
    };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == CONDITION_ARCHIVED && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: CONDITION_ARCHIVED.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: drover_crds::bounds::message(&message),
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + secs).unwrap())
    }

    fn down(overdue: usize) -> ArchiveView {
        ArchiveView {
            health: ArchiveHealth::Unavailable {
                since: at(0).0,
                error: "connection refused".into(),
            },
            overdue,
        }
    }

    #[test]
    fn an_unreachable_archive_says_how_many_jobs_it_holds_back() {
        let c = archived_condition(&down(20), Some(4), &at(10), &[]);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ArchiveUnavailable")
        );
        assert!(c.message.contains("connection refused"), "{}", c.message);
        assert!(c.message.contains("20 finished Jobs"), "{}", c.message);
        assert_eq!(c.observed_generation, Some(4));
        assert_eq!(c.last_transition_time, at(10));
    }

    #[test]
    fn the_transition_time_moves_only_when_the_status_does() {
        let first = archived_condition(&down(1), None, &at(10), &[]);
        let later = archived_condition(&down(7), None, &at(20), std::slice::from_ref(&first));
        assert_eq!(later.last_transition_time, at(10));
        let back = ArchiveView {
            health: ArchiveHealth::Available,
            overdue: 0,
        };
        let up = archived_condition(&back, None, &at(30), &[later]);
        assert_eq!(
            (up.status.as_str(), up.reason.as_str()),
            ("True", "Archiving")
        );
        assert_eq!(up.last_transition_time, at(30));
    }

    #[test]
    fn before_the_first_look_the_condition_is_unknown() {
        let view = ArchiveView {
            health: ArchiveHealth::Unknown,
            overdue: 0,
        };
        let c = archived_condition(&view, None, &at(0), &[]);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("Unknown", "Connecting")
        );
    }
}
