//! Object storage for the assembly pipeline: a URL becomes a store and a
//! path. `file://`, `s3://` and `gs://` read and write; `https://` (and
//! `http://`, for tests and private mirrors) only read. Objects stream to
//! and from local files, so an episode's size never has to fit in memory.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use drover_crds::FailureReason;
use drover_crds::pipeline_worker::AssemblySpec;
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::http::HttpBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;

use super::spill::scratch_failure;

use crate::pipelines::Failure;

/// One object: where it lives and how to reach it.
pub struct Location {
    url: String,
    store: Arc<dyn ObjectStore>,
    path: Path,
    writable: bool,
    /// The file itself, for `file://` URLs: read in place, never copied.
    local: Option<PathBuf>,
}

/// Outputs up to this size go up in one request; larger ones in parts.
const SINGLE_PUT_BYTES: u64 = 32 << 20;
/// Part size of a multipart upload (S3 wants at least 5 MiB).
const PART_BYTES: usize = 8 << 20;

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Location {
    /// Resolves `url` with the fleet's storage settings. Credentials come
    /// from the pod's environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `GOOGLE_SERVICE_ACCOUNT_KEY`), which the
    /// operator fills from the fleet's secret refs.
    pub fn parse(url: &str, settings: Option<&AssemblySpec>) -> Result<Self, Failure> {
        let parsed = Url::parse(url).map_err(|e| invalid(url, &e.to_string()))?;
        let path = Path::from_url_path(parsed.path()).map_err(|e| invalid(url, &e.to_string()))?;
        let (store, writable): (Arc<dyn ObjectStore>, bool) = match parsed.scheme() {
            "file" => (Arc::new(LocalFileSystem::new()), true),
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
                (Arc::new(store), true)
            }
            "gs" => {
                let store = GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| invalid(url, &e.to_string()))?;
                (Arc::new(store), true)
            }
            "https" | "http" => {
                let origin = parsed.origin().ascii_serialization();
                let store = HttpBuilder::new()
                    .with_url(origin)
                    .with_client_options(
                        ClientOptions::new().with_allow_http(parsed.scheme() == "http"),
                    )
                    .build()
                    .map_err(|e| invalid(url, &e.to_string()))?;
                (Arc::new(store), false)
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
            store,
            path,
            writable,
            local: (parsed.scheme() == "file")
                .then(|| parsed.to_file_path().ok())
                .flatten(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The file name at the end of the URL, for a decoder's format hint.
    pub fn extension(&self) -> Option<&str> {
        self.path.extension()
    }

    /// Reads the whole object.
    pub async fn get(&self) -> Result<Bytes, Failure> {
        let result = self
            .store
            .get(&self.path)
            .await
            .map_err(|e| storage_failure(&self.url, "read", e))?;
        result
            .bytes()
            .await
            .map_err(|e| storage_failure(&self.url, "read", e))
    }

    /// The object as a local file: a `file://` URL's own file (checked to
    /// exist), or anything else streamed to `scratch`.
    pub async fn fetch(&self, scratch: &FsPath) -> Result<PathBuf, Failure> {
        if let Some(local) = &self.local {
            self.store
                .head(&self.path)
                .await
                .map_err(|e| storage_failure(&self.url, "read", e))?;
            return Ok(local.clone());
        }
        let result = self
            .store
            .get(&self.path)
            .await
            .map_err(|e| storage_failure(&self.url, "read", e))?;
        let mut file = tokio::fs::File::create(scratch)
            .await
            .map_err(|e| scratch_failure(scratch, e))?;
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| storage_failure(&self.url, "read", e))?;
            file.write_all(&chunk)
                .await
                .map_err(|e| scratch_failure(scratch, e))?;
        }
        file.flush()
            .await
            .map_err(|e| scratch_failure(scratch, e))?;
        Ok(scratch.to_owned())
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
        let upload = self
            .store
            .put_multipart(&self.path)
            .await
            .map_err(|e| storage_failure(&self.url, "write", e))?;
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
                .map_err(|e| storage_failure(&self.url, "write", e))?;
            writer.write(&buffer[..read]);
        }
        writer
            .finish()
            .await
            .map(|_| ())
            .map_err(|e| storage_failure(&self.url, "write", e))
    }

    fn check_writable(&self) -> Result<(), Failure> {
        if self.writable {
            return Ok(());
        }
        Err(Failure {
            reason: FailureReason::OutputNotWritable,
            message: format!(
                "{} cannot be written: https:// URLs are read-only; use file://, s3:// or gs://",
                self.url
            ),
            retryable: false,
        })
    }

    /// Writes the whole object, replacing what was there: a retried attempt
    /// writes the same episode again.
    pub async fn put(&self, bytes: Bytes) -> Result<(), Failure> {
        self.check_writable()?;
        self.store
            .put(&self.path, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| storage_failure(&self.url, "write", e))
    }
}

fn invalid(url: &str, why: &str) -> Failure {
    Failure {
        reason: FailureReason::InvalidStorageUrl,
        message: format!("cannot use {url}: {why}"),
        retryable: false,
    }
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
            message: format!("cannot {verb} {url}: {error}"),
            retryable: false,
        },
        E::InvalidPath { .. } | E::NotSupported { .. } | E::NotImplemented { .. } => Failure {
            reason: FailureReason::InvalidStorageUrl,
            message: format!("cannot {verb} {url}: {error}"),
            retryable: false,
        },
        other => Failure {
            reason: FailureReason::StorageUnavailable,
            message: format!("cannot {verb} {url}: {other}"),
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
        let failure = Location::parse(&url, None)
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
        let location = Location::parse(&url, None).unwrap();
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
        let location = Location::parse(&url, None).unwrap();
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
        let location = Location::parse("https://media.example.invalid/a/b.mp3", None).unwrap();
        let failure = location.put(Bytes::new()).await.unwrap_err();
        assert_eq!(failure.reason, FailureReason::OutputNotWritable);
    }

    #[test]
    fn unknown_schemes_are_refused() {
        let failure = Location::parse("ftp://host/a.wav", None).unwrap_err();
        assert_eq!(
            (failure.reason, failure.retryable),
            (FailureReason::InvalidStorageUrl, false)
        );
    }
}
