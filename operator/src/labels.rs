//! Names, labels and owner references shared by everything the operator
//! creates for a PipelineWorker.

use std::collections::BTreeMap;

use drover_crds::PipelineWorker;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "drover-operator";

/// Label carrying the owning PipelineWorker's name on its pods and objects.
pub const WORKER_LABEL: &str = "drover.dev/pipeline-worker";

/// Name of the Deployment, ServiceAccount, Role, RoleBinding and Service of a fleet.
pub fn child_name(pw: &PipelineWorker) -> String {
    format!("{}-worker", pw.metadata.name.as_deref().unwrap_or_default())
}

/// The labels that select a fleet's pods. Immutable once a Deployment exists,
/// so they hold only what never changes.
pub fn selector_labels(pw: &PipelineWorker) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "drover-worker".to_owned(),
        ),
        (
            WORKER_LABEL.to_owned(),
            pw.metadata.name.clone().unwrap_or_default(),
        ),
    ])
}

/// Selector labels plus the descriptive ones users filter by.
pub fn labels(pw: &PipelineWorker) -> BTreeMap<String, String> {
    let mut labels = selector_labels(pw);
    labels.extend([
        (
            "app.kubernetes.io/instance".to_owned(),
            pw.metadata.name.clone().unwrap_or_default(),
        ),
        (
            "app.kubernetes.io/component".to_owned(),
            "worker".to_owned(),
        ),
        ("app.kubernetes.io/part-of".to_owned(), "drover".to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "drover-operator".to_owned(),
        ),
        (
            "drover.dev/pipeline".to_owned(),
            pw.spec.pipeline.as_str().to_owned(),
        ),
    ]);
    labels
}

/// `app.kubernetes.io/name=drover-worker,drover.dev/pipeline-worker=NAME`.
pub fn selector_string(pw: &PipelineWorker) -> String {
    selector_labels(pw)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Metadata for a child object: same namespace, our labels, owned by the
/// PipelineWorker so the garbage collector removes it with its owner.
pub fn child_meta(pw: &PipelineWorker) -> ObjectMeta {
    ObjectMeta {
        name: Some(child_name(pw)),
        namespace: pw.metadata.namespace.clone(),
        labels: Some(labels(pw)),
        owner_references: owner_reference(pw).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

/// The controller owner reference to `pw`; `None` for an object the apiserver
/// has not stored yet (no uid).
pub fn owner_reference(pw: &PipelineWorker) -> Option<OwnerReference> {
    pw.controller_owner_ref(&())
}
