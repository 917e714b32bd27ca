//! The metrics Service of a fleet, so Prometheus can find every worker pod.

use std::collections::BTreeMap;

use drover_crds::PipelineWorker;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::deployment::HTTP_PORT;
use crate::labels;

pub fn metrics_service(pw: &PipelineWorker) -> Service {
    Service {
        metadata: labels::child_meta(pw),
        spec: Some(ServiceSpec {
            // Headless: Prometheus scrapes each pod, not a load-balanced one.
            cluster_ip: Some("None".into()),
            selector: Some(
                labels::selector_labels(pw)
                    .into_iter()
                    .collect::<BTreeMap<_, _>>(),
            ),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}
