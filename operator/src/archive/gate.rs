//! What stands between a finished Job's TTL and its deletion while the
//! archive is enabled: the Job is deleted only once the archive holds it,
//! and only in the very version that was archived.

use std::time::Duration;

use drover_crds::Job;
use kube::ResourceExt;
use kube::api::Api;

use super::{Archive, ArchiveHealth};

/// How soon a Job the archive could not take tries again (a database that
/// comes back also wakes it at once).
pub const ARCHIVE_RETRY: Duration = Duration::from_secs(5);
/// While the archive is known to be down, a due Job waits this long for
/// its next look, reading nothing: the probe that finds the database back
/// wakes it at once, so this is only the fallback.
pub const ARCHIVE_DOWN_RECHECK: Duration = Duration::from_secs(30);

/// What to do with a finished Job whose TTL has passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BeforeDelete {
    /// Delete it; when a version is named, only that version (the one the
    /// archive holds), so a change made since is decided on again.
    Delete { resource_version: Option<String> },
    /// The archive could not take it: keep it and look again after this.
    Keep(Duration),
    /// It is gone, or the name belongs to another Job now.
    Gone,
}

/// Archives `job` when there is an archive. The Job cache holds Jobs without
/// their steps and result, so what is archived is read from the apiserver.
pub async fn before_delete(
    archive: Option<&Archive>,
    jobs: &Api<Job>,
    job: &Job,
) -> Result<BeforeDelete, kube::Error> {
    let Some(archive) = archive else {
        return Ok(BeforeDelete::Delete {
            resource_version: None,
        });
    };
    let key = (job.namespace().unwrap_or_default(), job.name_any());
    // A pile of due Jobs must not read each from the apiserver and try the
    // dead database every few seconds: they wait for the probe's wake.
    if matches!(archive.health(), ArchiveHealth::Unavailable { .. }) {
        archive.note_waiting(key);
        return Ok(BeforeDelete::Keep(ARCHIVE_DOWN_RECHECK));
    }
    let full = match jobs.get_opt(&job.name_any()).await? {
        Some(full) if full.uid() == job.uid() => full,
        _ => {
            archive.note_archived(&key);
            return Ok(BeforeDelete::Gone);
        }
    };
    match archive.store(&full).await {
        Ok(()) => {
            archive.note_archived(&key);
            tracing::debug!(event = "job_archived", job = %key.1, namespace = %key.0, "archived before its TTL deletes it");
            Ok(BeforeDelete::Delete {
                resource_version: full.resource_version(),
            })
        }
        Err(error) => {
            archive.note_waiting(key.clone());
            tracing::debug!(event = "archive_failed", job = %key.1, namespace = %key.0, %error, "not deleted: the archive cannot take it");
            Ok(BeforeDelete::Keep(ARCHIVE_RETRY))
        }
    }
}
