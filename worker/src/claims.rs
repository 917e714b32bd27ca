//! The claims this worker process holds now, by claim id.
//!
//! A claim id is new for every claim, so "held here" means this very
//! process took it: a claim that names this pod but is not in the registry
//! belongs to a container of the pod that is gone, whose attempt the
//! operator retries as a new one. The registry is also what a forced
//! shutdown hands back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// One held claim: which Job (by uid, never by name alone) and attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldClaim {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub attempt: i32,
}

/// Shared by every message task of the worker.
#[derive(Clone, Debug, Default)]
pub struct Claims {
    held: Arc<Mutex<HashMap<String, HeldClaim>>>,
}

impl Claims {
    /// A fresh, unguessable claim id.
    pub fn new_id() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    /// Records `claim` until the returned guard is dropped.
    pub fn hold(&self, claim: HeldClaim) -> HeldGuard {
        let id = claim.id.clone();
        self.lock().insert(id.clone(), claim);
        HeldGuard {
            claims: self.clone(),
            id,
        }
    }

    pub fn holds(&self, id: &str) -> bool {
        !id.is_empty() && self.lock().contains_key(id)
    }

    /// Every claim held now, for the hand-back on a forced stop.
    pub fn all(&self) -> Vec<HeldClaim> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, HeldClaim>> {
        // A panic while holding this lock leaves plain data behind; go on.
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Releases its claim from the registry when the attempt's task ends,
/// however it ends.
#[derive(Debug)]
pub struct HeldGuard {
    claims: Claims,
    id: String,
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.claims.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(id: &str) -> HeldClaim {
        HeldClaim {
            id: id.into(),
            namespace: "ns".into(),
            name: "job".into(),
            uid: "u".into(),
            attempt: 1,
        }
    }

    #[test]
    fn a_claim_is_held_while_its_guard_lives() {
        let claims = Claims::default();
        let guard = claims.hold(claim("a"));
        assert!(claims.holds("a"));
        assert_eq!(claims.all(), [claim("a")]);
        drop(guard);
        assert!(!claims.holds("a"));
    }

    #[test]
    fn ids_are_new_every_time_and_an_empty_id_is_never_held() {
        assert_ne!(Claims::new_id(), Claims::new_id());
        let claims = Claims::default();
        let _guard = claims.hold(claim(""));
        assert!(
            !claims.holds(""),
            "claims written before ids existed are nobody's"
        );
    }
}
