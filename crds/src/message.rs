//! The Pub/Sub message that tells a worker which Job to run.
//!
//! It names the Job and never carries its input: the Job object is the one
//! source of truth, and it exists before any message is published.

use serde::{Deserialize, Serialize};

/// Message attribute: the Job's callback URL for an outside provider (with
/// its token). An attribute, never status: only the fleet's workers see it.
pub const ATTRIBUTE_CALLBACK_URL: &str = "callbackUrl";
/// Message attribute: the wait this message resumes
/// ([`crate::job_state::wait_key`]).
pub const ATTRIBUTE_RESUMES: &str = "resumes";

/// Body of a Job message, JSON-encoded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobMessage {
    pub namespace: String,
    pub name: String,
    /// The Job's `metadata.uid`; a Job deleted and created again under the
    /// same name is another Job.
    pub uid: String,
    /// The attempt this message starts.
    pub attempt: i32,
}

/// Why a message body is not a Job message.
#[derive(Debug, thiserror::Error)]
#[error("message is not a Drover Job message ({{namespace, name, uid, attempt}} as JSON): {0}")]
pub struct DecodeError(#[from] serde_json::Error);

impl JobMessage {
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        Ok(serde_json::from_slice(body)?)
    }

    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and an integer always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let msg = JobMessage {
            namespace: "ns".into(),
            name: "job-1".into(),
            uid: "u-1".into(),
            attempt: 2,
        };
        assert_eq!(JobMessage::decode(&msg.encode()).unwrap(), msg);
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        for body in [
            &b"not json"[..],
            b"{}",
            b"{\"namespace\":\"a\"}",
            b"\xff\xfe",
        ] {
            assert!(JobMessage::decode(body).is_err());
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let body = br#"{"namespace":"a","name":"b","uid":"c","attempt":1,"extra":true}"#;
        let err = JobMessage::decode(body).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
