//! Real identities for the Drover processes a test starts: no operator or
//! worker in a test talks to the apiserver as an admin. Each gets a
//! kubeconfig with the control plane's address and CA and a real token of
//! its own ServiceAccount from the TokenRequest API, the way a kubelet mounts
//! one; the operator's ServiceAccount and RBAC are the install manifest's
//! own (config/install/drover.yaml, rendered from the chart), so a test
//! fails wherever the shipped RBAC would refuse.

use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::flowcontrol::v1::FlowSchema;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::TestEnv;

/// Where the install manifest puts the operator.
pub const OPERATOR_NAMESPACE: &str = "drover-system";
const OPERATOR_ACCOUNT: &str = "drover";
/// How long a token lives; no test runs this long (a kubelet would refresh).
const TOKEN_SECONDS: i64 = 6 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("TokenRequest for {namespace}/{account}: {source}")]
    Token {
        namespace: String,
        account: String,
        source: Box<kube::Error>,
    },
    #[error("the TokenRequest for {0} came back without a token")]
    NoToken(String),
    #[error("cannot write {path}: {reason}")]
    Kubeconfig { path: String, reason: String },
    #[error("cannot install the operator's RBAC from {path}: {reason}")]
    Rbac { path: String, reason: String },
}

/// A token of ServiceAccount `namespace/account`, bound to `pod` when given.
pub async fn service_account_token(
    client: &Client,
    namespace: &str,
    account: &str,
    pod: Option<&Pod>,
) -> Result<String, IdentityError> {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            // The apiserver's own audience, as a kubelet's default token has.
            audiences: None,
            expiration_seconds: Some(TOKEN_SECONDS),
            bound_object_ref: pod.map(|pod| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .map_err(|source| IdentityError::Token {
            namespace: namespace.to_owned(),
            account: account.to_owned(),
            source: Box::new(source),
        })?;
    issued
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| IdentityError::NoToken(format!("{namespace}/{account}")))
}

/// Writes to `path` the `admin` kubeconfig with its credentials replaced by
/// a token of `namespace/account` (bound to `pod` when given).
pub async fn write_token_kubeconfig(
    client: &Client,
    admin: &Path,
    path: &Path,
    namespace: &str,
    account: &str,
    pod: Option<&Pod>,
) -> Result<(), IdentityError> {
    let fail = |reason: String| IdentityError::Kubeconfig {
        path: path.display().to_string(),
        reason,
    };
    let token = service_account_token(client, namespace, account, pod).await?;
    let text = std::fs::read_to_string(admin)
        .map_err(|e| fail(format!("cannot read {}: {e}", admin.display())))?;
    let kubeconfig = with_token(&text, &token).map_err(fail)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    std::fs::write(path, kubeconfig).map_err(|e| fail(e.to_string()))
}

/// `kubeconfig` with every user's credentials replaced by `token`.
pub fn with_token(kubeconfig: &str, token: &str) -> Result<String, String> {
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(kubeconfig).map_err(|e| format!("not a kubeconfig: {e}"))?;
    let users = config
        .get_mut("users")
        .and_then(serde_yaml::Value::as_sequence_mut)
        .ok_or("the kubeconfig has no users")?;
    for user in users {
        let entry = user
            .as_mapping_mut()
            .ok_or("a kubeconfig user entry is not a mapping")?;
        let mut auth = serde_yaml::Mapping::new();
        auth.insert("token".into(), token.into());
        entry.insert("user".into(), serde_yaml::Value::Mapping(auth));
    }
    serde_yaml::to_string(&config).map_err(|e| e.to_string())
}

/// Installs the operator's ServiceAccount, RBAC and FlowSchema from the
/// install manifest (idempotent) and returns a kubeconfig that is that account.
pub async fn operator_kubeconfig(env: &TestEnv) -> Result<PathBuf, IdentityError> {
    let client = env
        .control_plane
        .client()
        .await
        .map_err(|e| rbac_error(format!("no client: {e}")))?;
    install_operator_rbac(&client).await?;
    let path = env.control_plane.state_dir().join("operator.kubeconfig");
    write_token_kubeconfig(
        &client,
        env.control_plane.kubeconfig_path(),
        &path,
        OPERATOR_NAMESPACE,
        OPERATOR_ACCOUNT,
        None,
    )
    .await?;
    Ok(path)
}

fn manifest() -> PathBuf {
    crate::workspace_root().join("config/install/drover.yaml")
}

fn rbac_error(reason: String) -> IdentityError {
    IdentityError::Rbac {
        path: manifest().display().to_string(),
        reason,
    }
}

async fn install_operator_rbac(client: &Client) -> Result<(), IdentityError> {
    let text = std::fs::read_to_string(manifest()).map_err(|e| rbac_error(e.to_string()))?;
    let namespace = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(OPERATOR_NAMESPACE.into()),
            ..Default::default()
        },
        ..Namespace::default()
    };
    apply(Api::<Namespace>::all(client.clone()), &namespace).await?;
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = self::document(document)?;
        let kind = value
            .get("kind")
            .and_then(serde_yaml::Value::as_str)
            .unwrap_or_default();
        let c = client.clone();
        match kind {
            "ServiceAccount" => {
                apply::<ServiceAccount>(Api::namespaced(c, OPERATOR_NAMESPACE), &parse(value)?)
                    .await?
            }
            "Role" => apply::<Role>(Api::namespaced(c, OPERATOR_NAMESPACE), &parse(value)?).await?,
            "RoleBinding" => {
                apply::<RoleBinding>(Api::namespaced(c, OPERATOR_NAMESPACE), &parse(value)?).await?
            }
            "ClusterRole" => apply::<ClusterRole>(Api::all(client.clone()), &parse(value)?).await?,
            "ClusterRoleBinding" => {
                apply::<ClusterRoleBinding>(Api::all(client.clone()), &parse(value)?).await?
            }
            "FlowSchema" => apply::<FlowSchema>(Api::all(client.clone()), &parse(value)?).await?,
            _ => {}
        }
    }
    Ok(())
}

fn parse<K: DeserializeOwned>(value: serde_yaml::Value) -> Result<K, IdentityError> {
    serde_yaml::from_value(value).map_err(|e| rbac_error(e.to_string()))
}

async fn apply<K>(api: Api<K>, object: &K) -> Result<(), IdentityError>
where
    K: Resource + Clone + serde::Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = object.name_any();
    api.patch(
        &name,
        &PatchParams::apply("drover-e2e").force(),
        &Patch::Apply(object),
    )
    .await
    .map(|_| ())
    .map_err(|e| rbac_error(format!("{name}: {e}")))
}

/// One document of a multi-document YAML file.
fn document(document: serde_yaml::Deserializer<'_>) -> Result<serde_yaml::Value, IdentityError> {
    serde::Deserialize::deserialize(document).map_err(|e| rbac_error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_kubeconfig_holds_the_token_and_no_admin_credentials() {
        let admin = "apiVersion: v1\nkind: Config\nusers:\n- name: admin\n  user:\n    client-certificate-data: Y2VydA==\n    client-key-data: a2V5\n";
        let text = with_token(admin, "t0ken").expect("rewritten");
        let config: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
        let user = &config["users"][0]["user"];
        assert_eq!(user["token"].as_str(), Some("t0ken"));
        assert_eq!(user.as_mapping().map(serde_yaml::Mapping::len), Some(1));
        assert!(with_token("kind: Config\n", "t").is_err());
    }
}
