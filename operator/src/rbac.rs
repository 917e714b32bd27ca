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
            rule(
                &[drover_crds::GROUP],
                &["pipelineworkers"],
                Some(vec![own_name]),
                &["get", "watch"],
            ),
            // `list` cannot be limited by name; watching one object by name
            // needs list+watch with a field selector, which resourceNames allows.
            rule(&[drover_crds::GROUP], &["pipelineworkers"], None, &["list"]),
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
    fn binding_names_the_fleet_service_account() {
        let binding = role_binding(&sample());
        let subject = &binding.subjects.unwrap()[0];
        assert_eq!(subject.name, "sleeper-worker");
        assert_eq!(subject.namespace.as_deref(), Some("team-a"));
        assert_eq!(binding.role_ref.name, "sleeper-worker");
    }
}
