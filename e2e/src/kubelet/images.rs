//! Container image -> local executable: the process kubelet's "image pull".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The executable for `image`: the entry for the full image reference if there is
/// one, else the entry for the reference without its tag and digest, so that
/// `ghcr.io/x/worker` maps every tag a manifest may carry.
pub(crate) fn resolve<'a>(images: &'a BTreeMap<String, PathBuf>, image: &str) -> Option<&'a Path> {
    images
        .get(image)
        .or_else(|| images.get(repository(image)))
        .map(PathBuf::as_path)
}

/// `registry:5000/team/app:1.2@sha256:…` -> `registry:5000/team/app`.
pub(crate) fn repository(image: &str) -> &str {
    let without_digest = image.split_once('@').map_or(image, |(name, _)| name);
    // A `:` after the last `/` starts the tag; one before it is a registry port.
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    match without_digest[last_slash..].find(':') {
        Some(colon) => &without_digest[..last_slash + colon],
        None => without_digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_tags_and_digests_but_not_registry_ports() {
        assert_eq!(repository("worker"), "worker");
        assert_eq!(repository("worker:1.0"), "worker");
        assert_eq!(
            repository("ghcr.io/drover/worker:1.0"),
            "ghcr.io/drover/worker"
        );
        assert_eq!(repository("localhost:5000/worker"), "localhost:5000/worker");
        assert_eq!(
            repository("localhost:5000/worker:dev"),
            "localhost:5000/worker"
        );
        assert_eq!(
            repository("ghcr.io/drover/worker:1.0@sha256:0123abcd"),
            "ghcr.io/drover/worker"
        );
        assert_eq!(repository("worker@sha256:0123abcd"), "worker");
    }

    #[test]
    fn prefers_the_exact_reference() {
        let images = BTreeMap::from([
            ("drover/worker".to_owned(), PathBuf::from("/bin/any-tag")),
            (
                "drover/worker:debug".to_owned(),
                PathBuf::from("/bin/debug"),
            ),
        ]);
        assert_eq!(
            resolve(&images, "drover/worker:debug"),
            Some(Path::new("/bin/debug"))
        );
        assert_eq!(
            resolve(&images, "drover/worker:1.0"),
            Some(Path::new("/bin/any-tag"))
        );
        assert_eq!(resolve(&images, "drover/operator:1.0"), None);
    }
}
