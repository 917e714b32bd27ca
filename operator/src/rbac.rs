//! The ServiceAccount, Role and RoleBinding of a fleet: exactly what a worker
//! needs and nothing more.

use drover_crds::PipelineWorker;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use crate::labels;

pub fn service_account(pw: &PipelineWorker) -> ServiceAccount {
    ServiceAccount {
        metadata: labels::child_meta(pw),
        // The worker talks to the apiserver with this token; nothing else.
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    }
}

/// The worker may read and watch its own PipelineWorker (its configuration),
/// read, watch and create Jobs (adoption of foreign messages), patch Job
/// status (claims, steps, outcome) and record Events. It cannot read Secrets
/// (they arrive as env by reference) nor change a Job's spec.
pub fn role(pw: &PipelineWorker) -> Role {
    let own_name = pw.metadata.name.clone().unwrap_or_default();
    let rule = |groups: &[&str], resources: &[&str], names: Option<Vec<String>>, verbs: &[&str]| {
        PolicyRule {
            api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
            resources: Some(resources.iter().map(|s| s.to_string()).collect()),
            resource_names: names,
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            non_resource_urls: None,
        }
    };
    Role {
        metadata: labels::child_meta(pw),
        rules: Some(vec![
            // Its own fleet only: the worker lists and watches it with a
            // `metadata.name` field selector, which resourceNames admits; a
            // list of all fleets is refused.
            rule(
                &[drover_crds::GROUP],
                &["pipelineworkers"],
                Some(vec![own_name]),
                &["get", "list", "watch"],
            ),
            rule(
                &[drover_crds::GROUP],
                &["jobs"],
                None,
                &["get", "list", "watch", "create"],
            ),
            rule(
                &[drover_crds::GROUP],
                &["jobs/status"],
                None,
                &["get", "patch", "update"],
            ),
            rule(
                &["", "events.k8s.io"],
                &["events"],
                None,
                &["create", "patch"],
            ),
        ]),
    }
}

/// How the operator reads the Secrets a fleet references (SecretNotFound)
/// without a cluster-wide grant: it binds itself, in each fleet's namespace
/// only, to a ClusterRole the chart ships unbound.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretCheck {
    /// The ClusterRole that grants `get` on Secrets.
    pub cluster_role: String,
    /// The operator itself, as the binding's subject.
    pub subject: Subject,
}

impl SecretCheck {
    /// The subject a username names: a ServiceAccount for
    /// `system:serviceaccount:NS:NAME`, otherwise that user.
    pub fn for_user(cluster_role: &str, username: &str) -> Self {
        let subject = match username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        {
            Some((namespace, name)) => Subject {
                kind: "ServiceAccount".into(),
                name: name.into(),
                namespace: Some(namespace.into()),
                api_group: None,
            },
            None => Subject {
                kind: "User".into(),
                name: username.into(),
                namespace: None,
                api_group: Some("rbac.authorization.k8s.io".into()),
            },
        };
        Self {
            cluster_role: cluster_role.into(),
            subject,
        }
    }
}

/// Name of the RoleBinding that lets the operator check a fleet's Secrets.
pub fn secret_check_name(pw: &PipelineWorker) -> String {
    format!("{}-secret-check", labels::child_name(pw))
}

/// Lets the operator read Secrets in the fleet's namespace, and only
/// while the fleet exists (the fleet owns the binding).
pub fn secret_check_binding(pw: &PipelineWorker, check: &SecretCheck) -> RoleBinding {
    let mut metadata = labels::child_meta(pw);
    metadata.name = Some(secret_check_name(pw));
    RoleBinding {
        metadata,
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: check.cluster_role.clone(),
        },
        subjects: Some(vec![check.subject.clone()]),
    }
}

pub fn role_binding(pw: &PipelineWorker) -> RoleBinding {
    let name = labels::child_name(pw);
    RoleBinding {
        metadata: labels::child_meta(pw),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: pw.spec.service_account_name.clone().unwrap_or(name),
            namespace: pw.metadata.namespace.clone(),
            api_group: None,
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PipelineWorker {
        let spec = serde_json::from_value(serde_json::json!({
            "pipeline": "sleep",
            "queue": {"topic": "jobs", "subscription": "jobs-sub"},
        }))
        .unwrap();
        let mut pw = PipelineWorker::new("sleeper", spec);
        pw.metadata.namespace = Some("team-a".into());
        pw
    }

    fn verbs_on(role: &Role, resource: &str) -> Vec<String> {
        role.rules
            .iter()
            .flatten()
            .filter(|r| r.resources.iter().flatten().any(|x| x == resource))
            .flat_map(|r| r.verbs.clone())
            .collect()
    }

    #[test]
    fn role_grants_no_secrets_and_no_job_spec_writes() {
        let role = role(&sample());
        assert!(verbs_on(&role, "secrets").is_empty());
        let job_verbs = verbs_on(&role, "jobs");
        assert!(
            !job_verbs
                .iter()
                .any(|v| v == "update" || v == "patch" || v == "delete")
        );
        assert!(verbs_on(&role, "jobs/status").contains(&"patch".to_owned()));
    }

    #[test]
    fn the_worker_reads_only_its_own_fleet() {
        let role = role(&sample());
        let fleet_rules: Vec<&PolicyRule> = role
            .rules
            .iter()
            .flatten()
            .filter(|r| r.resources.iter().flatten().any(|x| x == "pipelineworkers"))
            .collect();
        assert!(!fleet_rules.is_empty());
        for rule in fleet_rules {
            assert_eq!(
                rule.resource_names,
                Some(vec!["sleeper".to_owned()]),
                "{rule:?}"
            );
        }
    }

    #[test]
    fn the_secret_check_binds_the_operator_in_the_fleet_namespace_only() {
        let check = SecretCheck::for_user(
            "drover-secret-check",
            "system:serviceaccount:drover-system:drover",
        );
        let binding = secret_check_binding(&sample(), &check);
        assert_eq!(binding.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(
            binding.metadata.name.as_deref(),
            Some("sleeper-worker-secret-check")
        );
        assert_eq!(
            (
                binding.role_ref.kind.as_str(),
                binding.role_ref.name.as_str()
            ),
            ("ClusterRole", "drover-secret-check")
        );
        let subject = &binding.subjects.unwrap()[0];
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            ("ServiceAccount", "drover", Some("drover-system"))
        );
        let user = SecretCheck::for_user("r", "admin").subject;
        assert_eq!((user.kind.as_str(), user.name.as_str()), ("User", "admin"));
    }

    #[test]
    fn binding_names_the_fleet_service_account() {
        let binding = role_binding(&sample());
        let subject = &binding.subjects.unwrap()[0];
        assert_eq!(subject.name, "sleeper-worker");
        assert_eq!(subject.namespace.as_deref(), Some("team-a"));
        assert_eq!(binding.role_ref.name, "sleeper-worker");
    }
}
