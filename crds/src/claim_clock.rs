//! Judging a claim's expiry without trusting another machine's clock.
//!
//! `renewTime` is written by the worker on the worker's clock. Comparing it
//! with the observer's own clock turns any skew between the two into a false
//! WorkerLost (worker behind) or a claim that outlives its holder (worker
//! ahead). So an observer, the way client-go's leader election does, notes
//! on its own clock when it first saw a claim as it is now (same id, same
//! `renewTime`), and treats the claim as live until that moment plus
//! `leaseSeconds`. A renewal changes `renewTime`, so a live holder keeps
//! moving the moment forward whatever its clock says.
//!
//! Pure: the observer passes its own `now`, so tests pin every rule.

use std::collections::HashMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::job::Claim;

/// When this observer first saw a claim as it is now, and first saw that
/// claim at all (the attempt's start, on the observer's clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimSeen {
    /// First sight of the claim with its current `renewTime`.
    pub renewed_at: Timestamp,
    /// First sight of the claim id.
    pub claimed_at: Timestamp,
}

impl ClaimSeen {
    /// What an observer whose clock agrees with the holder's would have seen:
    /// for claims observed for the first time in tests and fixtures.
    pub fn trusting(claim: &Claim, started: Timestamp) -> Self {
        Self {
            renewed_at: claim.renew_time.0,
            claimed_at: started,
        }
    }

    /// The claim expires `leaseSeconds` after it was last seen renewed.
    pub fn expiry(&self, claim: &Claim) -> Timestamp {
        self.renewed_at
            .saturating_add(SignedDuration::from_secs(i64::from(
                claim.lease_seconds.max(0),
            )))
            .unwrap_or(Timestamp::MAX)
    }

    pub fn is_live(&self, claim: &Claim, now: Timestamp) -> bool {
        self.expiry(claim) > now
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Sighting {
    id: String,
    renew_time: Timestamp,
    seen: ClaimSeen,
}

/// The sightings of one observer, by Job uid.
#[derive(Clone, Debug, Default)]
pub struct ClaimSightings {
    by_uid: HashMap<String, Sighting>,
}

impl ClaimSightings {
    /// Records `claim` of the Job `uid` as seen at `now` (the observer's own
    /// clock) and says when it was first seen as it is.
    pub fn observe(&mut self, uid: &str, claim: &Claim, now: Timestamp) -> ClaimSeen {
        let renew_time = claim.renew_time.0;
        let seen = match self.by_uid.get(uid) {
            Some(s) if s.id == claim.id && s.renew_time == renew_time => s.seen,
            Some(s) if s.id == claim.id => ClaimSeen {
                renewed_at: now,
                claimed_at: s.seen.claimed_at,
            },
            _ => ClaimSeen {
                renewed_at: now,
                claimed_at: now,
            },
        };
        self.by_uid.insert(
            uid.to_owned(),
            Sighting {
                id: claim.id.clone(),
                renew_time,
                seen,
            },
        );
        seen
    }

    /// Drops what is known of the Job `uid` (it is no longer Running, or gone).
    pub fn forget(&mut self, uid: &str) {
        self.by_uid.remove(uid);
    }

    /// Keeps only the Jobs for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.by_uid.retain(|uid, _| keep(uid));
    }

    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn claim(id: &str, renewed: Timestamp) -> Claim {
        Claim {
            id: id.into(),
            pod: "p".into(),
            renew_time: Time(renewed),
            lease_seconds: 15,
        }
    }

    #[test]
    fn a_holder_clock_sixty_seconds_behind_is_not_lost_while_it_renews() {
        let mut sightings = ClaimSightings::default();
        // Renewals every 5 s on a clock 60 s behind the observer's.
        for tick in 0..10 {
            let now = at(tick * 5);
            let c = claim("a", at(tick * 5 - 60));
            let seen = sightings.observe("uid", &c, now);
            assert!(
                seen.is_live(&c, now),
                "tick {tick}: a renewing claim is live"
            );
            assert_eq!(seen.claimed_at, at(0));
        }
    }

    #[test]
    fn a_holder_clock_sixty_seconds_ahead_expires_a_lease_after_it_stopped() {
        let mut sightings = ClaimSightings::default();
        let c = claim("a", at(60));
        assert!(sightings.observe("uid", &c, at(0)).is_live(&c, at(0)));
        // The holder stops renewing: live until 15 s after the last sight of a change.
        assert!(sightings.observe("uid", &c, at(14)).is_live(&c, at(14)));
        assert!(!sightings.observe("uid", &c, at(15)).is_live(&c, at(15)));
    }

    #[test]
    fn a_new_claim_id_starts_a_new_attempt_clock() {
        let mut sightings = ClaimSightings::default();
        sightings.observe("uid", &claim("a", at(0)), at(0));
        let seen = sightings.observe("uid", &claim("b", at(0)), at(40));
        assert_eq!(
            seen,
            ClaimSeen {
                renewed_at: at(40),
                claimed_at: at(40)
            }
        );
    }

    #[test]
    fn forgotten_and_unkept_jobs_are_dropped() {
        let mut sightings = ClaimSightings::default();
        sightings.observe("u1", &claim("a", at(0)), at(0));
        sightings.observe("u2", &claim("b", at(0)), at(0));
        sightings.forget("u1");
        assert_eq!(sightings.len(), 1);
        sightings.retain(|uid| uid != "u2");
        assert!(sightings.is_empty());
    }
}
