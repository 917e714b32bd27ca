//! Which fleet a topic or subscription belongs to, by the labels the
//! operator puts on what it creates: the owner's namespace and uid (and its
//! name, when it fits a label value). A queue labelled for another live
//! fleet is refused, so no PipelineWorker can take another's messages by
//! naming its subscription; a queue whose owner is gone (a fleet deleted and
//! made again) or that carries no labels (made by a person, or by an
//! operator before labels) may be taken over.

use std::collections::HashMap;

use drover_crds::PipelineWorker;

/// Label keys on topics and subscriptions the operator creates.
pub const LABEL_NAMESPACE: &str = "drover-owner-namespace";
pub const LABEL_NAME: &str = "drover-owner-name";
pub const LABEL_UID: &str = "drover-owner-uid";

/// The PipelineWorker a queue belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub namespace: String,
    /// Empty when the name does not fit a Pub/Sub label value.
    pub name: String,
    pub uid: String,
}

impl Owner {
    /// The owner `pw` would be; `None` before it has a namespace and uid.
    pub fn of(pw: &PipelineWorker) -> Option<Self> {
        let name = pw.metadata.name.clone().unwrap_or_default();
        Some(Self {
            namespace: pw.metadata.namespace.clone()?,
            name: if fits_label(&name) {
                name
            } else {
                String::new()
            },
            uid: pw.metadata.uid.clone()?,
        })
    }

    /// The labels that name this owner.
    pub fn labels(&self) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (LABEL_NAMESPACE.to_owned(), self.namespace.clone()),
            (LABEL_UID.to_owned(), self.uid.clone()),
        ]);
        if !self.name.is_empty() {
            labels.insert(LABEL_NAME.to_owned(), self.name.clone());
        }
        labels
    }

    /// The owner `labels` name, if they name one.
    pub fn from_labels(labels: &HashMap<String, String>) -> Option<Self> {
        Some(Self {
            namespace: labels.get(LABEL_NAMESPACE)?.clone(),
            name: labels.get(LABEL_NAME).cloned().unwrap_or_default(),
            uid: labels.get(LABEL_UID)?.clone(),
        })
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.name.is_empty() {
            write!(
                f,
                "the PipelineWorker with uid {} in namespace {}",
                self.uid, self.namespace
            )
        } else {
            write!(
                f,
                "PipelineWorker {}/{} (uid {})",
                self.namespace, self.name, self.uid
            )
        }
    }
}

/// Pub/Sub label values: at most 63 lowercase letters, digits, `-` or `_`.
fn fits_label(value: &str) -> bool {
    value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// What a fleet may do with an existing queue resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Labelled for this very fleet.
    Ours,
    /// No owner labels, or an owner that no longer exists: label it ours.
    Free,
    /// Labelled for another fleet that exists.
    Elsewhere(Owner),
}

/// Judges `labels` for `me`; `is_live` says whether an owner still exists.
pub fn judge(
    labels: &HashMap<String, String>,
    me: &Owner,
    is_live: impl Fn(&Owner) -> bool,
) -> Claim {
    match Owner::from_labels(labels) {
        None => Claim::Free,
        Some(owner) if owner.namespace == me.namespace && owner.uid == me.uid => Claim::Ours,
        Some(owner) if is_live(&owner) => Claim::Elsewhere(owner),
        Some(_) => Claim::Free,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(namespace: &str, uid: &str) -> Owner {
        Owner {
            namespace: namespace.into(),
            name: "episodes".into(),
            uid: uid.into(),
        }
    }

    #[test]
    fn labels_round_trip_and_a_long_name_is_left_out() {
        let me = owner("team-a", "0b5e6f1c-aaaa-bbbb-cccc-000000000001");
        assert_eq!(Owner::from_labels(&me.labels()), Some(me.clone()));
        let mut pw = PipelineWorker::new(
            "name.with.dots",
            serde_json::from_value(serde_json::json!({
                "pipeline": "sleep", "queue": {"topic": "t1x", "subscription": "s1x"},
            }))
            .unwrap(),
        );
        pw.metadata.namespace = Some("team-a".into());
        pw.metadata.uid = Some("u-1".into());
        let labelled = Owner::of(&pw).unwrap();
        assert_eq!(labelled.name, "");
        assert!(!labelled.labels().contains_key(LABEL_NAME));
    }

    #[test]
    fn another_live_fleet_owns_it_and_a_gone_one_does_not() {
        let me = owner("team-b", "uid-b");
        let theirs = owner("team-a", "uid-a").labels();
        assert_eq!(
            judge(&theirs, &me, |_| true),
            Claim::Elsewhere(owner("team-a", "uid-a"))
        );
        assert_eq!(judge(&theirs, &me, |_| false), Claim::Free);
        assert_eq!(judge(&me.labels(), &me, |_| true), Claim::Ours);
        assert_eq!(judge(&HashMap::new(), &me, |_| true), Claim::Free);
    }

    #[test]
    fn the_same_name_in_another_namespace_is_another_owner() {
        let me = owner("team-b", "uid-a");
        let theirs = owner("team-a", "uid-a").labels();
        assert!(matches!(judge(&theirs, &me, |_| true), Claim::Elsewhere(_)));
    }
}
