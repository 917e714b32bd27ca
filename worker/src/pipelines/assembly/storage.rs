//! Object storage for the assembly pipeline: a URL becomes a store and a
//! path. `file://`, `s3://` and `gs://` read and write; `https://` (and
//! `http://`, for tests and private mirrors) only read. Objects stream to
//! and from local files, so an episode's size never has to fit in memory.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use drover_crds::FailureReason;
use drover_crds::egress::AddressPolicy;
use drover_crds::pipeline_worker::AssemblySpec;
use drover_crds::redact;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;

use super::spill::scratch_failure;

use crate::egress;
use crate::pipelines::Failure;

/// One object: where it lives and how to reach it.
pub struct Location {
    url: String,
    /// The URL as messages show it: no userinfo, no query (presigned
    /// URLs carry their signature there).
    shown: String,
    backend: Backend,
    path: Path,
    writable: bool,
    /// The file itself, for `file://` URLs: read in place, never copied.
    local: Option<PathBuf>,
    /// Largest object fetched (`assembly.storage.maxObjectBytes`).
    max_bytes: u64,
}

/// How an object is reached: object storage, or a guarded HTTP fetch for
/// `https://` (whose query string goes along untouched).
enum Backend {
    Store(Arc<dyn ObjectStore>),
    Web(reqwest::Client),
}

/// Outputs up to this size go up in one request; larger ones in parts.
const SINGLE_PUT_BYTES: u64 = 32 << 20;
/// Part size of a multipart upload (S3 wants at least 5 MiB).
const PART_BYTES: usize = 8 << 20;

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Location {
    /// Resolves `url` with the fleet's storage settings. Credentials come
    /// from the pod's environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `GOOGLE_SERVICE_ACCOUNT_KEY`), which the
    /// operator fills from the fleet's secret refs. `https://` objects are
    /// fetched only from addresses `policy` allows.
    pub fn parse(
        url: &str,
        settings: Option<&AssemblySpec>,
        policy: &AddressPolicy,
    ) -> Result<Self, Failure> {
        let parsed = Url::parse(url).map_err(|e| invalid(url, &e.to_string()))?;
        let path = Path::from_url_path(parsed.path()).map_err(|e| invalid(url, &e.to_string()))?;
        let (backend, writable) = match parsed.scheme() {
            "file" => (Backend::Store(Arc::new(LocalFileSystem::new())), true),
            "s3" => {
                let mut builder = AmazonS3Builder::from_env().with_url(url);
                if let Some(s3) = settings.and_then(|s| s.s3.as_ref()) {
                    builder = builder.with_region(&s3.region);
                    if let Some(endpoint) = &s3.endpoint {
                        builder = builder
                            .with_endpoint(endpoint)
                            .with_allow_http(endpoint.starts_with("http://"));
                    }
                }
                let store = builder.build().map_err(|e| invalid(url, &e.to_string()))?;
                (Backend::Store(Arc::new(store)), true)
            }
            "gs" => {
                let store = GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| invalid(url, &e.to_string()))?;
                (Backend::Store(Arc::new(store)), true)
            }
            "https" | "http" => {
                egress::check_url(url, policy).map_err(address_refused)?;
                let client = egress::client(policy).map_err(|e| invalid(url, &e))?;
                (Backend::Web(client), false)
            }
            other => {
                return Err(invalid(
                    url,
                    &format!("scheme {other}:// is not file, s3, gs or https"),
                ));
            }
        };
        Ok(Self {
            url: url.to_owned(),
            shown: drover_crds::redact::url(url),
            backend,
            path,
            writable,
            local: (parsed.scheme() == "file")
                .then(|| parsed.to_file_path().ok())
                .flatten(),
            max_bytes: settings.map_or(DEFAULT_MAX_OBJECT_BYTES, |s| {
                u64::try_from(s.storage.max_object_bytes).unwrap_or(1)
            }),
        })
    }

    /// The URL as it may be shown: no userinfo, no query.
    pub fn shown_url(&self) -> &str {
        &self.shown
    }

    /// The file name at the end of the URL, for a decoder's format hint.
    pub fn extension(&self) -> Option<&str> {
        self.path.extension()
    }

    /// Reads the whole object.
    pub async fn get(&self) -> Result<Bytes, Failure> {
        match &self.backend {
            Backend::Store(store) => {
                let result = store
                    .get(&self.path)
                    .await
                    .map_err(|e| storage_failure(&self.shown, "read", e))?;
                self.check_size(result.meta.size)?;
                result
                    .bytes()
                    .await
                    .map_err(|e| storage_failure(&self.shown, "read", e))
            }
            Backend::Web(_) => {
                let response = self.request().await?;
                let body = egress::read_bounded(response, self.max_bytes)
                    .await
                    .map_err(|e| self.web_failure(&e))?
                    .map_err(|_| self.too_large())?;
                Ok(Bytes::from(body))
            }
        }
    }

    /// The object as a local file: a `file://` URL's own file (checked to
    /// exist), or anything else streamed to `scratch`.
    pub async fn fetch(&self, scratch: &FsPath) -> Result<PathBuf, Failure> {
        let mut file = match (&self.backend, &self.local) {
            (Backend::Store(store), Some(local)) => {
                let meta = store
                    .head(&self.path)
                    .await
                    .map_err(|e| storage_failure(&self.shown, "read", e))?;
                self.check_size(meta.size)?;
                return Ok(local.clone());
            }
            _ => tokio::fs::File::create(scratch)
                .await
                .map_err(|e| scratch_failure(scratch, e))?,
        };
        let mut written: u64 = 0;
        match &self.backend {
            Backend::Store(store) => {
                let result = store
                    .get(&self.path)
                    .await
                    .map_err(|e| storage_failure(&self.shown, "read", e))?;
                self.check_size(result.meta.size)?;
                let mut stream = result.into_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| storage_failure(&self.shown, "read", e))?;
                    written += chunk.len() as u64;
                    self.check_size(written)?;
                    file.write_all(&chunk)
                        .await
                        .map_err(|e| scratch_failure(scratch, e))?;
                }
            }
            Backend::Web(_) => {
                let mut response = self.request().await?;
                if response
                    .content_length()
                    .is_some_and(|n| n > self.max_bytes)
                {
                    return Err(self.too_large());
                }
                while let Some(chunk) = response.chunk().await.map_err(|e| self.web_failure(&e))? {
                    written += chunk.len() as u64;
                    self.check_size(written)?;
                    file.write_all(&chunk)
                        .await
                        .map_err(|e| scratch_failure(scratch, e))?;
                }
            }
        }
        file.flush()
            .await
            .map_err(|e| scratch_failure(scratch, e))?;
        Ok(scratch.to_owned())
    }

    /// A guarded GET of a web object, its status mapped to a failure.
    async fn request(&self) -> Result<reqwest::Response, Failure> {
        let Backend::Web(client) = &self.backend else {
            return Err(invalid(&self.shown, "not a web object"));
        };
        let response = client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| self.web_failure(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let shown = &self.shown;
        Err(match status.as_u16() {
            404 | 410 => Failure {
                reason: FailureReason::ObjectNotFound,
                message: format!("{shown} does not exist (HTTP {status})"),
                retryable: false,
            },
            401 | 403 => Failure {
                reason: FailureReason::StorageAccessDenied,
                message: format!("cannot read {shown}: HTTP {status}"),
                retryable: false,
            },
            408 | 429 | 500..=599 => Failure {
                reason: FailureReason::StorageUnavailable,
                message: format!("cannot read {shown}: HTTP {status}"),
                retryable: true,
            },
            _ => Failure {
                reason: FailureReason::InvalidStorageUrl,
                message: format!("cannot read {shown}: HTTP {status}"),
                retryable: false,
            },
        })
    }

    fn web_failure(&self, error: &reqwest::Error) -> Failure {
        if let Some(why) = egress::refusal_in(error) {
            return address_refused(format!("{}: {why}", self.shown));
        }
        Failure {
            reason: FailureReason::StorageUnavailable,
            message: format!(
                "cannot read {}: {}",
                self.shown,
                drover_crds::redact::urls_in(&error_chain(error))
            ),
            retryable: true,
        }
    }

    fn check_size(&self, size: u64) -> Result<(), Failure> {
        if size > self.max_bytes {
            return Err(self.too_large());
        }
        Ok(())
    }

    fn too_large(&self) -> Failure {
        Failure {
            reason: FailureReason::ObjectTooLarge,
            message: format!(
                "{} is larger than {} bytes (assembly.storage.maxObjectBytes)",
                self.shown, self.max_bytes
            ),
            retryable: false,
        }
    }

    /// Uploads a local file, replacing what was there: one request for a
    /// small file, parts read one at a time for a large one.
    pub async fn put_file(&self, file: &FsPath) -> Result<(), Failure> {
        self.check_writable()?;
        let size = tokio::fs::metadata(file)
            .await
            .map_err(|e| scratch_failure(file, e))?
            .len();
        if size <= SINGLE_PUT_BYTES {
            let bytes = tokio::fs::read(file)
                .await
                .map_err(|e| scratch_failure(file, e))?;
            return self.put(Bytes::from(bytes)).await;
        }
        let store = self.store()?;
        let upload = store
            .put_multipart(&self.path)
            .await
            .map_err(|e| storage_failure(&self.shown, "write", e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut input = tokio::fs::File::open(file)
            .await
            .map_err(|e| scratch_failure(file, e))?;
        let mut buffer = vec![0u8; PART_BYTES];
        loop {
            let read = input
                .read(&mut buffer)
                .await
                .map_err(|e| scratch_failure(file, e))?;
            if read == 0 {
                break;
            }
            // At most two parts in flight: memory stays a few parts.
            writer
                .wait_for_capacity(2)
                .await
                .map_err(|e| storage_failure(&self.shown, "write", e))?;
            writer.write(&buffer[..read]);
        }
        writer
            .finish()
            .await
            .map(|_| ())
            .map_err(|e| storage_failure(&self.shown, "write", e))
    }

    fn store(&self) -> Result<&Arc<dyn ObjectStore>, Failure> {
        match &self.backend {
            Backend::Store(store) => Ok(store),
            Backend::Web(_) => Err(self.not_writable()),
        }
    }

    fn not_writable(&self) -> Failure {
        Failure {
            reason: FailureReason::OutputNotWritable,
            message: format!(
                "{} cannot be written: https:// URLs are read-only; use file://, s3:// or gs://",
                self.shown
            ),
            retryable: false,
        }
    }

    fn check_writable(&self) -> Result<(), Failure> {
        if self.writable {
            return Ok(());
        }
        Err(self.not_writable())
    }

    /// Writes the whole object, replacing what was there: a retried attempt
    /// writes the same episode again.
    pub async fn put(&self, bytes: Bytes) -> Result<(), Failure> {
        self.check_writable()?;
        self.store()?
            .put(&self.path, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| storage_failure(&self.shown, "write", e))
    }
}

/// Objects fetched when a fleet sets no bound: 2 GiB.
const DEFAULT_MAX_OBJECT_BYTES: u64 = 2 << 30;

fn invalid(url: &str, why: &str) -> Failure {
    Failure {
        reason: FailureReason::InvalidStorageUrl,
        message: format!(
            "cannot use {}: {}",
            drover_crds::redact::url(url),
            drover_crds::redact::urls_in(why)
        ),
        retryable: false,
    }
}

fn address_refused(why: String) -> Failure {
    Failure {
        reason: FailureReason::AddressRefused,
        message: why,
        retryable: false,
    }
}

/// An error and its causes, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        cause = inner.source();
    }
    message
}

/// Missing objects and refused credentials need a person; anything else
/// (a reset connection, a 503) may pass on another attempt.
fn storage_failure(url: &str, verb: &str, error: object_store::Error) -> Failure {
    use object_store::Error as E;
    match error {
        E::NotFound { .. } => Failure {
            reason: FailureReason::ObjectNotFound,
            message: format!("{url} does not exist"),
            retryable: false,
        },
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => Failure {
            reason: FailureReason::StorageAccessDenied,
            message: format!(
                "cannot {verb} {url}: {}",
                redact::urls_in(&error.to_string())
            ),
            retryable: false,
        },
        E::InvalidPath { .. } | E::NotSupported { .. } | E::NotImplemented { .. } => Failure {
            reason: FailureReason::InvalidStorageUrl,
            message: format!(
                "cannot {verb} {url}: {}",
                redact::urls_in(&error.to_string())
            ),
            retryable: false,
        },
        other => Failure {
            reason: FailureReason::StorageUnavailable,
            message: format!(
                "cannot {verb} {url}: {}",
                redact::urls_in(&other.to_string())
            ),
            retryable: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_file_is_a_permanent_failure_naming_the_url() {
        let url = format!("file:///nonexistent-drover-{}/main.wav", std::process::id());
        let failure = Location::parse(&url, None, &AddressPolicy::default())
            .unwrap()
            .get()
            .await
            .unwrap_err();
        assert_eq!(
            (failure.reason, failure.retryable),
            (FailureReason::ObjectNotFound, false)
        );
        assert!(failure.message.contains(&url), "{}", failure.message);
    }

    #[tokio::test]
    async fn files_round_trip_and_parent_directories_are_made() {
        let dir = std::env::temp_dir().join(format!("drover-storage-{}", std::process::id()));
        let url = format!("file://{}/out/episode.wav", dir.display());
        let location = Location::parse(&url, None, &AddressPolicy::default()).unwrap();
        location.put(Bytes::from_static(b"RIFF")).await.unwrap();
        assert_eq!(location.get().await.unwrap(), Bytes::from_static(b"RIFF"));
        assert_eq!(location.extension(), Some("wav"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_large_file_goes_up_in_parts_and_file_urls_are_read_in_place() {
        let dir = std::env::temp_dir().join(format!("drover-storage-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let local = dir.join("episode.flac");
        let bytes: Vec<u8> = (0..SINGLE_PUT_BYTES + 3 * PART_BYTES as u64 / 2)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&local, &bytes).unwrap();
        let url = format!("file://{}/out/episode.flac", dir.display());
        let location = Location::parse(&url, None, &AddressPolicy::default()).unwrap();
        location.put_file(&local).await.unwrap();
        let fetched = location.fetch(&dir.join("unused")).await.unwrap();
        assert_eq!(fetched, dir.join("out/episode.flac"));
        assert!(
            std::fs::read(&fetched).unwrap() == bytes,
            "the upload differs"
        );
        assert!(!dir.join("unused").exists(), "a file:// input was copied");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn https_is_read_only() {
        let location = Location::parse(
            "https://media.example.invalid/a/b.mp3",
            None,
            &AddressPolicy::default(),
        )
        .unwrap();
        let failure = location.put(Bytes::new()).await.unwrap_err();
        assert_eq!(failure.reason, FailureReason::OutputNotWritable);
    }

    #[test]
    fn unknown_schemes_are_refused() {
        let failure =
            Location::parse("ftp://host/a.wav", None, &AddressPolicy::default()).unwrap_err();
        assert_eq!(
            (failure.reason, failure.retryable),
            (FailureReason::InvalidStorageUrl, false)
        );
    }
}
