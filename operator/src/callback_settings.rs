//! The operator's callback flags: where the receiver listens, the public
//! URL providers reach it by, and the file holding the HMAC key (a mounted
//! Secret). All unset: no callbacks, Waiting Jobs are only polled.

use std::net::SocketAddr;
use std::path::PathBuf;

use kube::Client;

use crate::callback::{self, Receiver};
use crate::callback_token::{CallbackConfigError, CallbackUrls};
use crate::leader::LeaderGate;

/// Why the callback flags cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CallbackSettingsError {
    #[error(
        "--callback-addr, --callback-base-url and --callback-key-file go together; {0} is missing"
    )]
    Incomplete(&'static str),
    #[error("cannot read the callback key from {path}: {source}")]
    Key {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] CallbackConfigError),
}

/// Flags of the callback receiver.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CallbackArgs {
    /// Address of the provider callback server (its own port; the chart's
    /// callback Service and ingress point at it). Unset: no callbacks.
    #[arg(long, env = "DROVER_CALLBACK_ADDR")]
    pub callback_addr: Option<SocketAddr>,
    /// The URL providers reach the callback server by, for example
    /// `https://drover-hooks.example.com`; per-Job URLs start with it.
    #[arg(long, env = "DROVER_CALLBACK_BASE_URL")]
    pub callback_base_url: Option<String>,
    /// File holding the key callback tokens are signed with (at least 16
    /// bytes; a Secret mounted as a file).
    #[arg(long, env = "DROVER_CALLBACK_KEY_FILE")]
    pub callback_key_file: Option<PathBuf>,
}

impl CallbackArgs {
    /// The URL signer, or `None` when callbacks are off.
    pub fn urls(&self) -> Result<Option<CallbackUrls>, CallbackSettingsError> {
        let (addr, base, key) = (
            &self.callback_addr,
            &self.callback_base_url,
            &self.callback_key_file,
        );
        if addr.is_none() && base.is_none() && key.is_none() {
            return Ok(None);
        }
        addr.ok_or(CallbackSettingsError::Incomplete("--callback-addr"))?;
        let base = base
            .as_deref()
            .ok_or(CallbackSettingsError::Incomplete("--callback-base-url"))?;
        let path = key
            .as_ref()
            .ok_or(CallbackSettingsError::Incomplete("--callback-key-file"))?;
        let key = std::fs::read(path).map_err(|source| CallbackSettingsError::Key {
            path: path.clone(),
            source,
        })?;
        Ok(Some(CallbackUrls::new(base, &key)?))
    }

    /// Serves callbacks while this replica leads (forever, or until the
    /// listener fails, which is logged); returns at once when they are off.
    pub async fn serve(self, client: Client, urls: Option<CallbackUrls>, gate: LeaderGate) {
        let (Some(addr), Some(urls)) = (self.callback_addr, urls) else {
            return;
        };
        let receiver = Receiver { client, urls, gate };
        if let Err(error) = callback::serve(addr, receiver).await {
            tracing::error!(%addr, %error, "the callback server stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_flags_mean_no_callbacks_and_half_of_them_is_an_error() {
        assert!(CallbackArgs::default().urls().unwrap().is_none());
        let half = CallbackArgs {
            callback_addr: Some("127.0.0.1:0".parse().unwrap()),
            ..CallbackArgs::default()
        };
        assert!(matches!(
            half.urls(),
            Err(CallbackSettingsError::Incomplete("--callback-base-url"))
        ));
    }

    #[test]
    fn the_key_is_read_from_its_file() {
        let dir = std::env::temp_dir().join(format!("drover-callback-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "0123456789abcdef-key\n").unwrap();
        let args = CallbackArgs {
            callback_addr: Some("127.0.0.1:0".parse().unwrap()),
            callback_base_url: Some("http://127.0.0.1:1".into()),
            callback_key_file: Some(path),
        };
        let urls = args.urls().unwrap().expect("callbacks on");
        assert!(
            urls.url_for("ns", "j", "u")
                .starts_with("http://127.0.0.1:1/v1/callbacks/ns/j/u/")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
