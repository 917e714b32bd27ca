//! Reads multi-document YAML manifests and applies them with server-side
//! apply, the way `kubectl apply --server-side` would. The sandbox applies
//! config/samples with it; tests apply fixtures with it.

use std::path::{Path, PathBuf};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use serde::Deserialize;

/// The field manager of everything the harness applies.
pub const FIELD_MANAGER: &str = "drover-e2e";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: document {index} is not valid YAML: {source}")]
    Yaml {
        path: PathBuf,
        index: usize,
        source: serde_yaml::Error,
    },
    #[error("{path}: document {index} is not a Kubernetes object: {reason}")]
    NotAnObject {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("{what}: the apiserver does not serve {gvk}: {source}")]
    UnknownKind {
        what: String,
        gvk: String,
        source: kube::Error,
    },
    #[error("{what}: the apiserver refused it: {source}")]
    Refused { what: String, source: kube::Error },
}

/// One object read from a file, with where it came from for error messages.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub path: PathBuf,
    pub index: usize,
    pub object: DynamicObject,
}

impl Manifest {
    /// `Kind/name (file#doc)`, for messages.
    pub fn describe(&self) -> String {
        let kind = self
            .object
            .types
            .as_ref()
            .map(|t| t.kind.as_str())
            .unwrap_or("?");
        let name = self.object.metadata.name.as_deref().unwrap_or("?");
        format!("{kind}/{name} ({}#{})", self.path.display(), self.index + 1)
    }
}

/// Parses every document of a YAML file; empty documents are ignored.
pub fn read_file(path: &Path) -> Result<Vec<Manifest>, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses YAML text that came from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Manifest>, ManifestError> {
    let mut manifests = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value =
            serde_yaml::Value::deserialize(document).map_err(|source| ManifestError::Yaml {
                path: path.to_owned(),
                index: index + 1,
                source,
            })?;
        if value.is_null() {
            continue;
        }
        let not_an_object = |reason: String| ManifestError::NotAnObject {
            path: path.to_owned(),
            index: index + 1,
            reason,
        };
        let object: DynamicObject =
            serde_yaml::from_value(value).map_err(|e| not_an_object(e.to_string()))?;
        match &object.types {
            Some(t) if !t.api_version.is_empty() && !t.kind.is_empty() => {}
            _ => return Err(not_an_object("apiVersion and kind are required".into())),
        }
        if object.metadata.name.is_none() {
            return Err(not_an_object("metadata.name is required".into()));
        }
        manifests.push(Manifest {
            path: path.to_owned(),
            index,
            object,
        });
    }
    Ok(manifests)
}

/// Reads every `*.yaml`/`*.yml` file of a directory, in name order.
pub fn read_dir(dir: &Path) -> Result<Vec<Manifest>, ManifestError> {
    let read_err = |source| ManifestError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    paths.sort();
    let mut all = Vec::new();
    for path in paths {
        all.extend(read_file(&path)?);
    }
    Ok(all)
}

/// Applies each manifest (namespaced kinds go to `namespace` unless they name
/// their own) and returns what it applied, as `Kind/name`.
pub async fn apply(
    client: &kube::Client,
    namespace: &str,
    manifests: &[Manifest],
) -> Result<Vec<String>, ManifestError> {
    let mut applied = Vec::new();
    for manifest in manifests {
        let what = manifest.describe();
        let types = manifest.object.types.clone().unwrap_or_default();
        let (group, version) = match types.api_version.split_once('/') {
            Some((group, version)) => (group, version),
            None => ("", types.api_version.as_str()),
        };
        let gvk = GroupVersionKind::gvk(group, version, &types.kind);
        let (resource, caps) = discovery::pinned_kind(client, &gvk)
            .await
            .map_err(|source| ManifestError::UnknownKind {
                what: what.clone(),
                gvk: format!("{}/{}", types.api_version, types.kind),
                source,
            })?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                let ns = manifest
                    .object
                    .metadata
                    .namespace
                    .as_deref()
                    .unwrap_or(namespace);
                Api::namespaced_with(client.clone(), ns, &resource)
            }
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let name = manifest.object.metadata.name.clone().unwrap_or_default();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&name, &params, &Patch::Apply(&manifest.object))
            .await
            .map_err(|source| ManifestError::Refused {
                what: what.clone(),
                source,
            })?;
        applied.push(format!("{}/{}", types.kind, name));
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_file_yields_each_object() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: a\n---\n---\napiVersion: drover.dev/v1alpha1\nkind: Job\nmetadata:\n  name: b\n";
        let objects = parse(Path::new("x.yaml"), text).unwrap();
        let names: Vec<_> = objects.iter().map(|m| m.describe()).collect();
        assert_eq!(names, ["Secret/a (x.yaml#1)", "Job/b (x.yaml#3)"]);
    }

    #[test]
    fn malformed_yaml_names_file_document_and_line() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: a\n---\nkind: Job\nmetadata:\n  name: [unclosed\n";
        let err = parse(Path::new("samples/bad.yaml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("samples/bad.yaml: document 2 is not valid YAML"),
            "{err}"
        );
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn object_without_kind_is_refused() {
        let err = parse(Path::new("a.yaml"), "metadata:\n  name: x\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a Kubernetes object"), "{err}");
    }
}
