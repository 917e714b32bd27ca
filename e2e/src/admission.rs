//! Writes refused on purpose, to open a fault window: a
//! ValidatingAdmissionPolicy and its binding that deny the updates a CEL
//! expression rejects, until the test lifts them.

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

/// Which updates a refusal applies to.
pub struct Updates<'a> {
    pub group: &'a str,
    pub version: &'a str,
    /// A resource or subresource, such as `jobs/status` or `leases`.
    pub resource: &'a str,
    /// Only in this namespace, when given.
    pub namespace: Option<&'a str>,
}

/// A policy in force until [`Refusal::lift`].
pub struct Refusal {
    client: Client,
    name: String,
}

/// Denies every update in `scope` for which `allowed` (CEL, over `object`
/// and `oldObject`) is false, answering `message`.
pub async fn refuse(
    client: &Client,
    name: &str,
    scope: Updates<'_>,
    allowed: &str,
    message: &str,
) -> Refusal {
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [scope.group], "apiVersions": [scope.version],
                "operations": ["UPDATE"], "resources": [scope.resource],
            }]},
            "validations": [{"expression": allowed, "message": message}],
        },
    }))
    .expect("policy");
    let match_resources = scope.namespace.map_or_else(
        || json!({}),
        |ns| json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}),
    );
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"], "matchResources": match_resources},
    }))
    .expect("binding");
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .expect("policy is created");
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding is created");
    Refusal {
        client: client.clone(),
        name: name.to_owned(),
    }
}

impl Refusal {
    /// Ends the refusal: the binding first, so nothing is refused after.
    pub async fn lift(self) {
        Api::<ValidatingAdmissionPolicyBinding>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await
            .expect("binding is deleted");
        Api::<ValidatingAdmissionPolicy>::all(self.client)
            .delete(&self.name, &DeleteParams::default())
            .await
            .expect("policy is deleted");
    }
}
