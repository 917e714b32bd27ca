//! The cluster the CLI talks to, chosen like kubectl: the current kubeconfig
//! context (or `--context`), its namespace (or `-n`), every namespace with `-A`.

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, Resource};
use serde::de::DeserializeOwned;

use crate::args::Cli;

/// A client and the namespace scope of one command.
pub struct Target {
    pub client: Client,
    pub namespace: String,
    pub all_namespaces: bool,
}

impl Target {
    pub async fn connect(cli: &Cli) -> anyhow::Result<Self> {
        let config = match &cli.context {
            Some(context) => {
                let options = KubeConfigOptions {
                    context: Some(context.clone()),
                    ..KubeConfigOptions::default()
                };
                let kubeconfig = Kubeconfig::read().context("reading the kubeconfig")?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .with_context(|| format!("the kubeconfig context {context:?}"))?
            }
            None => Config::infer()
                .await
                .context("no kubeconfig (KUBECONFIG or ~/.kube/config) and not in a cluster")?,
        };
        let namespace = cli
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).context("building the Kubernetes client")?;
        Ok(Self {
            client,
            namespace,
            all_namespaces: cli.all_namespaces,
        })
    }

    /// The API of `K` in the target namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The API of `K` in every namespace with `-A`, else in the target one.
    pub fn list_api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        if self.all_namespaces {
            Api::all(self.client.clone())
        } else {
            self.api()
        }
    }
}
