//! Two operators competing for one Lease, for the leader-election tests:
//! started with their own identity, with the leader and the standby told
//! apart once one holds the Lease. A test binary that uses this must start
//! no other operator, so the two have the cluster's Lease to themselves.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use serde_json::Value;

use crate::drover::{OperatorOptions, start_operator};
use crate::identity::{OPERATOR_NAMESPACE, operator_kubeconfig};
use crate::process::ManagedProcess;
use crate::refusals::{self, LogSince};
use crate::{TestEnv, error_chain, ports, wait};

/// The name of the operator's leader Lease.
pub const LEASE_NAME: &str = "drover-operator";

/// One operator process and the identity it holds the Lease as.
pub struct Contender {
    pub identity: String,
    pub process: ManagedProcess,
}

/// The two operators, once one leads.
pub struct Contenders {
    pub leader: Contender,
    pub standby: Contender,
    pub leases: Api<Lease>,
}

impl Contenders {
    /// Starts `<prefix>-a` and `<prefix>-b` with a lease of `lease_seconds`
    /// and waits until one of them holds the Lease.
    pub async fn start(env: &TestEnv, prefix: &str, lease_seconds: u64) -> Self {
        let client = env.control_plane.client().await.expect("client");
        let kubeconfig = operator_kubeconfig(env)
            .await
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        let ports = ports::free_loopback_ports(2).expect("ports");
        let start = |identity: String, port: u16| {
            let options = OperatorOptions {
                identity: identity.clone(),
                lease_seconds,
                metrics_port: port,
                kubeconfig: kubeconfig.clone(),
                failpoints: None,
            };
            let process = start_operator(env, &options)
                .unwrap_or_else(|e| panic!("cannot start {identity}: {}", error_chain(&e)));
            Contender { identity, process }
        };
        let a = start(format!("{prefix}-a"), ports[0]);
        let b = start(format!("{prefix}-b"), ports[1]);
        let leases: Api<Lease> = Api::namespaced(client, OPERATOR_NAMESPACE);
        let holder = wait::until("a leader", Duration::from_secs(20), || {
            lease_holder(&leases)
        })
        .await;
        let (leader, standby) = if holder == a.identity { (a, b) } else { (b, a) };
        Self {
            leader,
            standby,
            leases,
        }
    }

    /// Panics with any RBAC refusal either operator logged.
    pub fn assert_no_refusals(&self) {
        let logs = [&self.leader, &self.standby].map(|c| LogSince::whole(c.process.log_path()));
        refusals::assert_none("the contending operators", &logs);
    }

    /// Waits until the standby holds the Lease.
    pub async fn standby_took_over(&self, within: Duration) {
        wait::until("the standby to take over", within, || async {
            match lease_holder(&self.leases).await? {
                holder if holder == self.standby.identity => Ok(()),
                holder => Err(holder),
            }
        })
        .await;
    }

    /// The identity holding the Lease now.
    pub async fn holder(&self) -> Result<String, String> {
        lease_holder(&self.leases).await
    }
}

/// The identity holding the operator's Lease, or why there is none to name.
pub async fn lease_holder(leases: &Api<Lease>) -> Result<String, String> {
    let lease = leases
        .get_opt(LEASE_NAME)
        .await
        .map_err(|e| e.to_string())?;
    lease
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty())
        .ok_or_else(|| "no holder".to_owned())
}

/// The Jobs an operator's log says it published (`enqueued`) at or after `since`.
pub fn published_since(log: &Path, since: Timestamp) -> Vec<String> {
    logged_jobs(log, "enqueued", |t| t >= since)
}

/// The publishes an operator began (`publishing`, logged once its leader
/// gate let it) at or after `since`, whether or not they completed.
pub fn publishes_begun_since(log: &Path, since: Timestamp) -> Vec<String> {
    logged_jobs(log, "publishing", |t| t >= since)
}

fn logged_jobs(log: &Path, event: &str, when: impl Fn(Timestamp) -> bool) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| entry["fields"]["event"] == event)
        .filter(|entry| {
            entry["timestamp"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .is_some_and(&when)
        })
        .map(|entry| entry["fields"]["job"].as_str().unwrap_or("?").to_owned())
        .collect()
}
