//! A container's environment, resolved the way the kubelet does it
//! (`makeEnvironmentVariables` in kubernetes/kubernetes):
//!
//! 1. `envFrom` sources in order (ConfigMaps and Secrets, each key with the
//!    source's prefix), a missing source is an error unless it is `optional`;
//! 2. then `env` in order: a literal `value` with `$(VAR)` references expanded
//!    against everything defined so far, or a `valueFrom` source (downward API
//!    `fieldRef`, `resourceFieldRef`, `configMapKeyRef`, `secretKeyRef`), which
//!    is never expanded.
//!
//! A later definition of a name replaces an earlier one. The node's own
//! variables (the kubelet's Service variables; here, the kubelet's `extra_env`)
//! come first, so the pod's definitions win and may reference them.
//!
//! The work is split so the rules are pure: [`references`] names the objects a
//! container needs, [`fetch`] reads them, [`resolve`] does the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, ResourceFieldSelector,
    Secret,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Api;

use super::expansion::expand;
use super::quantity;

/// Why a container's environment cannot be built. The messages follow the
/// kubelet's, since they end up in `CreateContainerConfigError` waiting states.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EnvError {
    #[error("configmap \"{name}\" not found")]
    ConfigMapNotFound { name: String },
    #[error("secret \"{name}\" not found")]
    SecretNotFound { name: String },
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyNotFound {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyNotFound {
        key: String,
        namespace: String,
        name: String,
    },
    #[error(
        "key {key} in Secret {namespace}/{name} is not UTF-8 text, which the process kubelet cannot put in an environment variable"
    )]
    SecretNotText {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("environment variable {var}: fieldRef {path:?} is not supported")]
    UnsupportedFieldPath { var: String, path: String },
    #[error("environment variable {var}: resourceFieldRef {resource:?}: {reason}")]
    ResourceField {
        var: String,
        resource: String,
        reason: String,
    },
    #[error("cannot write the service account kubeconfig {path}: {reason}")]
    ServiceAccountKubeconfig { path: String, reason: String },
    #[error("environment variable {var} has a valueFrom without a source")]
    EmptyValueFrom { var: String },
    #[error("cannot read {kind} {namespace}/{name}")]
    Fetch {
        kind: &'static str,
        namespace: String,
        name: String,
        /// Boxed: the error travels by value through every resolution step.
        #[source]
        source: Box<kube::Error>,
    },
}

/// Writes to `path` a kubeconfig that authenticates as ServiceAccount
/// `account` of the pod's namespace with a real token bound to the pod, as a
/// kubelet mounts one (see [`crate::identity`]).
pub(crate) async fn write_service_account_kubeconfig(
    client: &kube::Client,
    admin: &std::path::Path,
    path: &std::path::Path,
    pod: &Pod,
    account: &str,
) -> Result<(), EnvError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    crate::identity::write_token_kubeconfig(client, admin, path, &namespace, account, Some(pod))
        .await
        .map_err(|e| EnvError::ServiceAccountKubeconfig {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// The ConfigMaps and Secrets a container's environment refers to.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct References {
    pub config_maps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
}

pub(crate) fn references(container: &Container) -> References {
    let mut refs = References::default();
    for source in container.env_from.iter().flatten() {
        if let Some(cm) = &source.config_map_ref {
            refs.config_maps.insert(cm.name.clone());
        }
        if let Some(secret) = &source.secret_ref {
            refs.secrets.insert(secret.name.clone());
        }
    }
    for var in container.env.iter().flatten() {
        let Some(from) = &var.value_from else {
            continue;
        };
        if let Some(key) = &from.config_map_key_ref {
            refs.config_maps.insert(key.name.clone());
        }
        if let Some(key) = &from.secret_key_ref {
            refs.secrets.insert(key.name.clone());
        }
    }
    refs
}

/// The referenced objects that exist (a missing one is simply absent).
#[derive(Debug, Default)]
pub(crate) struct Objects {
    pub config_maps: BTreeMap<String, ConfigMap>,
    pub secrets: BTreeMap<String, Secret>,
}

/// Reads the referenced objects from the apiserver, fresh on every call: a
/// container that waits for a Secret must see it as soon as it is created.
pub(crate) async fn fetch(
    client: &kube::Client,
    namespace: &str,
    refs: &References,
) -> Result<Objects, EnvError> {
    let mut objects = Objects::default();
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    for name in &refs.config_maps {
        let found = config_maps
            .get_opt(name)
            .await
            .map_err(|source| EnvError::Fetch {
                kind: "ConfigMap",
                namespace: namespace.to_owned(),
                name: name.clone(),
                source: Box::new(source),
            })?;
        if let Some(cm) = found {
            objects.config_maps.insert(name.clone(), cm);
        }
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for name in &refs.secrets {
        let found = secrets
            .get_opt(name)
            .await
            .map_err(|source| EnvError::Fetch {
                kind: "Secret",
                namespace: namespace.to_owned(),
                name: name.clone(),
                source: Box::new(source),
            })?;
        if let Some(secret) = found {
            objects.secrets.insert(name.clone(), secret);
        }
    }
    Ok(objects)
}

/// What the downward API can see of the pod beyond its spec.
pub(crate) struct PodContext<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub pod_ip: Ipv4Addr,
    pub host_ip: Ipv4Addr,
    /// Stands in for unset limits in `resourceFieldRef`, as on a real node.
    pub node_allocatable: &'a BTreeMap<String, Quantity>,
}

/// An environment in definition order; redefining a name keeps its place.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Env(Vec<(String, String)>);

impl Env {
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn set(&mut self, name: &str, value: String) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = value,
            None => self.0.push((name.to_owned(), value)),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// The container's environment: `base` (the node's variables), then `envFrom`,
/// then `env`.
pub(crate) fn resolve(
    ctx: &PodContext<'_>,
    objects: &Objects,
    base: &BTreeMap<String, String>,
) -> Result<Env, EnvError> {
    let namespace = ctx.pod.metadata.namespace.as_deref().unwrap_or_default();
    let mut env = Env::default();
    for (name, value) in base {
        env.set(name, value.clone());
    }

    for source in ctx.container.env_from.iter().flatten() {
        let prefix = source.prefix.as_deref().unwrap_or_default();
        if let Some(cm_ref) = &source.config_map_ref {
            match objects.config_maps.get(&cm_ref.name) {
                Some(cm) => {
                    for (key, value) in cm.data.iter().flatten() {
                        set_from_source(&mut env, prefix, key, value.clone());
                    }
                }
                None if cm_ref.optional == Some(true) => {}
                None => {
                    return Err(EnvError::ConfigMapNotFound {
                        name: cm_ref.name.clone(),
                    });
                }
            }
        }
        if let Some(secret_ref) = &source.secret_ref {
            match objects.secrets.get(&secret_ref.name) {
                Some(secret) => {
                    for (key, value) in secret.data.iter().flatten() {
                        let text = secret_text(value, key, namespace, &secret_ref.name)?;
                        set_from_source(&mut env, prefix, key, text);
                    }
                }
                None if secret_ref.optional == Some(true) => {}
                None => {
                    return Err(EnvError::SecretNotFound {
                        name: secret_ref.name.clone(),
                    });
                }
            }
        }
    }

    for var in ctx.container.env.iter().flatten() {
        let value = match &var.value_from {
            // `valueFrom` wins if both are set (the apiserver forbids that anyway).
            Some(from) => value_from(ctx, objects, namespace, var, from)?,
            None => Some(expand(var.value.as_deref().unwrap_or_default(), |name| {
                env.get(name)
            })),
        };
        // `None`: an optional source that is missing, which defines nothing.
        if let Some(value) = value {
            env.set(&var.name, value);
        }
    }
    Ok(env)
}

/// `envFrom` keys become `prefix + key`; the kubelet skips (with an Event) keys
/// that are not valid variable names. Since Kubernetes 1.34 any printable ASCII
/// other than `=` is valid.
fn set_from_source(env: &mut Env, prefix: &str, key: &str, value: String) {
    let name = format!("{prefix}{key}");
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'=');
    if valid {
        env.set(&name, value);
    } else {
        tracing::debug!(
            name,
            "skipping an envFrom key that is not a valid variable name"
        );
    }
}

fn secret_text(
    value: &k8s_openapi::ByteString,
    key: &str,
    namespace: &str,
    name: &str,
) -> Result<String, EnvError> {
    String::from_utf8(value.0.clone()).map_err(|_| EnvError::SecretNotText {
        key: key.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

fn value_from(
    ctx: &PodContext<'_>,
    objects: &Objects,
    namespace: &str,
    var: &EnvVar,
    from: &EnvVarSource,
) -> Result<Option<String>, EnvError> {
    if let Some(field) = &from.field_ref {
        return field_value(ctx, &var.name, field).map(Some);
    }
    if let Some(resource) = &from.resource_field_ref {
        return resource_value(ctx, &var.name, resource).map(Some);
    }
    if let Some(key_ref) = &from.config_map_key_ref {
        let optional = key_ref.optional == Some(true);
        let Some(cm) = objects.config_maps.get(&key_ref.name) else {
            return if optional {
                Ok(None)
            } else {
                Err(EnvError::ConfigMapNotFound {
                    name: key_ref.name.clone(),
                })
            };
        };
        return match cm.data.as_ref().and_then(|d| d.get(&key_ref.key)) {
            Some(value) => Ok(Some(value.clone())),
            None if optional => Ok(None),
            None => Err(EnvError::ConfigMapKeyNotFound {
                key: key_ref.key.clone(),
                namespace: namespace.to_owned(),
                name: key_ref.name.clone(),
            }),
        };
    }
    if let Some(key_ref) = &from.secret_key_ref {
        let optional = key_ref.optional == Some(true);
        let Some(secret) = objects.secrets.get(&key_ref.name) else {
            return if optional {
                Ok(None)
            } else {
                Err(EnvError::SecretNotFound {
                    name: key_ref.name.clone(),
                })
            };
        };
        return match secret.data.as_ref().and_then(|d| d.get(&key_ref.key)) {
            Some(value) => secret_text(value, &key_ref.key, namespace, &key_ref.name).map(Some),
            None if optional => Ok(None),
            None => Err(EnvError::SecretKeyNotFound {
                key: key_ref.key.clone(),
                namespace: namespace.to_owned(),
                name: key_ref.name.clone(),
            }),
        };
    }
    Err(EnvError::EmptyValueFrom {
        var: var.name.clone(),
    })
}

/// The downward API paths the apiserver allows in env `fieldRef`s.
fn field_value(
    ctx: &PodContext<'_>,
    var: &str,
    field: &ObjectFieldSelector,
) -> Result<String, EnvError> {
    let meta = &ctx.pod.metadata;
    let spec = ctx.pod.spec.as_ref();
    let path = field.field_path.as_str();
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => ctx.pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => ctx.host_ip.to_string(),
        _ => {
            let map_key = |prefix: &str| {
                path.strip_prefix(prefix)
                    .and_then(|rest| rest.strip_prefix("['"))
                    .and_then(|rest| rest.strip_suffix("']"))
            };
            // A missing label or annotation is an empty value, as in the kubelet.
            if let Some(key) = map_key("metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(key))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(key) = map_key("metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(key))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(EnvError::UnsupportedFieldPath {
                    var: var.to_owned(),
                    path: path.to_owned(),
                });
            }
        }
    };
    Ok(value)
}

/// `limits.*` / `requests.*` of cpu, memory and ephemeral-storage, divided by the
/// divisor and rounded up, with unset limits standing for the node's allocatable.
fn resource_value(
    ctx: &PodContext<'_>,
    var: &str,
    selector: &ResourceFieldSelector,
) -> Result<String, EnvError> {
    let err = |reason: String| EnvError::ResourceField {
        var: var.to_owned(),
        resource: selector.resource.clone(),
        reason,
    };
    let container = match selector.container_name.as_deref() {
        None | Some("") => ctx.container,
        Some(name) => ctx
            .pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .find(|c| c.name == name)
            .ok_or_else(|| err(format!("the pod has no container named {name:?}")))?,
    };
    let (kind, resource) = selector
        .resource
        .split_once('.')
        .ok_or_else(|| err("expected limits.<resource> or requests.<resource>".into()))?;
    let milli_precision = match resource {
        "cpu" => true,
        "memory" | "ephemeral-storage" => false,
        other => return Err(err(format!("resource {other:?} is not supported"))),
    };
    let resources = container.resources.as_ref();
    let amount = match kind {
        "limits" => resources
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get(resource))
            .or_else(|| ctx.node_allocatable.get(resource))
            .map(|q| q.0.as_str()),
        // An unset request is zero (the apiserver defaults it to the limit when
        // only the limit is set).
        "requests" => resources
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource))
            .map(|q| q.0.as_str()),
        other => return Err(err(format!("{other:?} is neither limits nor requests"))),
    };
    let value = match amount {
        Some(text) => {
            quantity::parse_nanos(text).ok_or_else(|| err(format!("{text:?} is not a quantity")))?
        }
        None => 0,
    };
    let divisor_text = selector.divisor.as_ref().map_or("1", |d| d.0.as_str());
    let divisor = quantity::parse_nanos(divisor_text)
        .filter(|d| *d > 0)
        .ok_or_else(|| {
            err(format!(
                "divisor {divisor_text:?} is not a positive quantity"
            ))
        })?;
    Ok(quantity::divide_ceil(value, divisor, milli_precision).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(container_env: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "web-1",
                "namespace": "shop",
                "uid": "u-1",
                "labels": {"app": "web"},
                "annotations": {"team": "blue"},
            },
            "spec": {
                "nodeName": "node-a",
                "serviceAccountName": "web-sa",
                "containers": [{
                    "name": "main",
                    "image": "web",
                    "resources": {"limits": {"memory": "1Gi"}, "requests": {"cpu": "250m"}},
                    "env": container_env["env"],
                    "envFrom": container_env["envFrom"],
                }],
            },
        }))
        .expect("test pod")
    }

    fn allocatable() -> BTreeMap<String, Quantity> {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity("64".into())),
            ("memory".to_owned(), Quantity("256Gi".into())),
        ])
    }

    fn objects() -> Objects {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "settings"},
            "data": {"MODE": "fast", "LEVEL": "3", "bad=name": "x"},
        }))
        .expect("configmap");
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "creds"},
            // base64 of "s3cret" and of "envsecret"
            "data": {"token": "czNjcmV0", "ENV_TOKEN": "ZW52c2VjcmV0"},
        }))
        .expect("secret");
        Objects {
            config_maps: BTreeMap::from([("settings".to_owned(), cm)]),
            secrets: BTreeMap::from([("creds".to_owned(), secret)]),
        }
    }

    fn resolve_for(spec: serde_json::Value, objects: &Objects) -> Result<Env, EnvError> {
        let pod = pod(spec);
        let container = &pod.spec.as_ref().expect("spec").containers[0];
        let allocatable = allocatable();
        let ctx = PodContext {
            pod: &pod,
            container,
            pod_ip: Ipv4Addr::new(127, 1, 0, 7),
            host_ip: Ipv4Addr::LOCALHOST,
            node_allocatable: &allocatable,
        };
        let base = BTreeMap::from([("CLUSTER".to_owned(), "test".to_owned())]);
        resolve(&ctx, objects, &base)
    }

    fn field(name: &str, path: &str) -> serde_json::Value {
        json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
    }

    #[test]
    fn resolves_values_downward_api_and_references() {
        let env = resolve_for(
            json!({
                "envFrom": [
                    {"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
                    {"secretRef": {"name": "creds"}},
                    {"configMapRef": {"name": "absent", "optional": true}},
                ],
                "env": [
                    field("POD_NAME", "metadata.name"),
                    field("POD_NAMESPACE", "metadata.namespace"),
                    field("POD_UID", "metadata.uid"),
                    field("APP", "metadata.labels['app']"),
                    field("TEAM", "metadata.annotations['team']"),
                    field("NO_LABEL", "metadata.labels['missing']"),
                    field("NODE", "spec.nodeName"),
                    field("SA", "spec.serviceAccountName"),
                    field("POD_IP", "status.podIP"),
                    field("HOST_IP", "status.hostIP"),
                    {"name": "ADDR", "value": "$(POD_IP):8080"},
                    {"name": "WHERE", "value": "$(CLUSTER)/$(CFG_MODE)/$(LATER)/$$(POD_IP)"},
                    {"name": "LATER", "value": "defined-too-late"},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                    {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
                    {"name": "OPT_KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope", "optional": true}}},
                    {"name": "OPT_OBJ", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k", "optional": true}}},
                    {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "CPU_REQ_M", "valueFrom": {"resourceFieldRef": {"containerName": "main", "resource": "requests.cpu", "divisor": "1m"}}},
                    {"name": "CFG_MODE", "value": "overridden"},
                ],
            }),
            &objects(),
        )
        .expect("env resolves");
        let get = |name| env.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(get("CLUSTER"), "test");
        assert_eq!(get("CFG_LEVEL"), "3");
        assert_eq!(get("ENV_TOKEN"), "envsecret");
        assert_eq!(get("POD_NAME"), "web-1");
        assert_eq!(get("POD_NAMESPACE"), "shop");
        assert_eq!(get("POD_UID"), "u-1");
        assert_eq!(get("APP"), "web");
        assert_eq!(get("TEAM"), "blue");
        assert_eq!(get("NO_LABEL"), "");
        assert_eq!(get("NODE"), "node-a");
        assert_eq!(get("SA"), "web-sa");
        assert_eq!(get("POD_IP"), "127.1.0.7");
        assert_eq!(get("HOST_IP"), "127.0.0.1");
        assert_eq!(get("ADDR"), "127.1.0.7:8080");
        assert_eq!(get("WHERE"), "test/fast/$(LATER)/$(POD_IP)");
        assert_eq!(get("TOKEN"), "s3cret");
        assert_eq!(get("LEVEL"), "3");
        assert_eq!(get("MEM_MI"), "1024");
        // No CPU limit: the node's allocatable stands in, as on a real node.
        assert_eq!(get("CPU_LIMIT"), "64");
        assert_eq!(get("CPU_REQ_M"), "250");
        // Redefined later: the later value, in the first definition's place.
        assert_eq!(get("CFG_MODE"), "overridden");
        assert_eq!(env.iter().position(|(n, _)| n == "CFG_MODE"), Some(2));
        assert_eq!(env.get("OPT_KEY"), None);
        assert_eq!(env.get("OPT_OBJ"), None);
        assert_eq!(env.get("CFG_bad=name"), None);
    }

    #[test]
    fn names_what_is_missing() {
        let missing = |spec| {
            resolve_for(spec, &objects())
                .expect_err("must fail")
                .to_string()
        };
        assert_eq!(
            missing(
                json!({"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "nope"}}}]})
            ),
            "couldn't find key nope in Secret shop/creds"
        );
        assert_eq!(
            missing(
                json!({"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}}}]})
            ),
            "secret \"other\" not found"
        );
        assert_eq!(
            missing(
                json!({"env": [{"name": "T", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "nope"}}}]})
            ),
            "couldn't find key nope in ConfigMap shop/settings"
        );
        assert_eq!(
            missing(json!({"envFrom": [{"configMapRef": {"name": "absent"}}]})),
            "configmap \"absent\" not found"
        );
        assert!(
            missing(json!({"env": [field("X", "metadata.generateName")]}))
                .contains("not supported")
        );
    }

    #[test]
    fn lists_the_objects_to_fetch() {
        let pod = pod(json!({
            "envFrom": [{"configMapRef": {"name": "a"}}, {"secretRef": {"name": "s1"}}],
            "env": [
                {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "b", "key": "k"}}},
                {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "s2", "key": "k"}}},
                field("Z", "metadata.name"),
            ],
        }));
        let refs = references(&pod.spec.as_ref().expect("spec").containers[0]);
        assert_eq!(refs.config_maps, BTreeSet::from(["a".into(), "b".into()]));
        assert_eq!(refs.secrets, BTreeSet::from(["s1".into(), "s2".into()]));
    }
}
