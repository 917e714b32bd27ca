//! Per-Job callback URLs: the token in each is the HMAC-SHA256 of the Job's
//! uid under a key only the operator holds (from a Secret), so nobody can
//! guess another Job's URL, and a recreated Job (a new uid) gets a new one.
//! Tokens are compared in constant time.

use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Shortest key accepted: 128 bits.
pub const MIN_KEY_BYTES: usize = 16;
/// The path every callback URL starts with, before `/<namespace>/<name>/<uid>/<token>`.
pub const CALLBACK_PATH: &str = "/v1/callbacks";

/// Why the callback settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CallbackConfigError {
    #[error("the callback key has {0} bytes; it needs at least {MIN_KEY_BYTES}")]
    KeyTooShort(usize),
    #[error("the callback base URL {0:?} is not an http:// or https:// URL")]
    BadBaseUrl(String),
}

/// Signs and checks callback URLs. Its key never shows in `Debug`.
#[derive(Clone)]
pub struct CallbackUrls {
    base: String,
    key: Arc<Vec<u8>>,
}

impl std::fmt::Debug for CallbackUrls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackUrls")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl PartialEq for CallbackUrls {
    fn eq(&self, other: &Self) -> bool {
        self.base == other.base && self.key == other.key
    }
}

impl CallbackUrls {
    /// `base` is the URL at which providers reach the callback port (the
    /// ingress in front of the operator's callback Service); `key` the
    /// Secret's bytes (surrounding whitespace is dropped).
    pub fn new(base: &str, key: &[u8]) -> Result<Self, CallbackConfigError> {
        let key = key.trim_ascii();
        if key.len() < MIN_KEY_BYTES {
            return Err(CallbackConfigError::KeyTooShort(key.len()));
        }
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CallbackConfigError::BadBaseUrl(base.to_owned()));
        }
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            key: Arc::new(key.to_vec()),
        })
    }

    fn mac(&self, uid: &str) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        mac.update(uid.as_bytes());
        mac
    }

    /// The token of the Job with `uid`, hex-encoded.
    pub fn token(&self, uid: &str) -> String {
        hex::encode(self.mac(uid).finalize().into_bytes())
    }

    /// Whether `token` is the token of `uid`, compared in constant time.
    pub fn verify(&self, uid: &str, token: &str) -> bool {
        match hex::decode(token) {
            Ok(bytes) => self.mac(uid).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }

    /// The URL a provider calls back for the Job `namespace/name` with `uid`.
    pub fn url_for(&self, namespace: &str, name: &str, uid: &str) -> String {
        format!(
            "{}{CALLBACK_PATH}/{namespace}/{name}/{uid}/{}",
            self.base,
            self.token(uid)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls() -> CallbackUrls {
        CallbackUrls::new("https://hooks.example/", b"0123456789abcdef0123\n").unwrap()
    }

    #[test]
    fn a_token_verifies_for_its_own_uid_only() {
        let urls = urls();
        let token = urls.token("uid-1");
        assert_eq!(token.len(), 64, "hex of 32 bytes");
        assert!(urls.verify("uid-1", &token));
        assert!(
            !urls.verify("uid-2", &token),
            "a recreated Job gets a new token"
        );
        let mut forged = token.clone();
        forged.replace_range(0..1, if &token[0..1] == "0" { "1" } else { "0" });
        assert!(!urls.verify("uid-1", &forged));
        assert!(!urls.verify("uid-1", "not hex"));
        assert!(!urls.verify("uid-1", &token[..62]), "a truncated token");
    }

    #[test]
    fn another_key_makes_other_tokens() {
        let other =
            CallbackUrls::new("https://hooks.example", b"another key of 16+ bytes").unwrap();
        assert_ne!(urls().token("uid-1"), other.token("uid-1"));
    }

    #[test]
    fn the_url_names_the_job_and_carries_its_token() {
        let urls = urls();
        assert_eq!(
            urls.url_for("ns", "job", "uid-1"),
            format!(
                "https://hooks.example/v1/callbacks/ns/job/uid-1/{}",
                urls.token("uid-1")
            )
        );
    }

    #[test]
    fn short_keys_and_odd_base_urls_are_refused_and_the_key_never_prints() {
        assert!(matches!(
            CallbackUrls::new("https://h", b"short"),
            Err(CallbackConfigError::KeyTooShort(5))
        ));
        assert!(CallbackUrls::new("ftp://h", b"0123456789abcdef").is_err());
        let shown = format!("{:?}", urls());
        assert!(!shown.contains("0123456789"), "{shown}");
    }
}
