//! What a Job may reach through its fleet: every storage URL under the
//! fleet's allowed prefixes, and no `https://` input at a loopback,
//! link-local or cluster-internal address the fleet did not allow. The
//! operator checks it before a Job is queued and the worker again before it
//! fetches; the worker also judges every address a name resolves to, which
//! only it can see.

use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;
use serde_json::Value;
use url::{Host, Url};

use crate::egress::{AddressPolicy, Cidr};
use crate::input::{AssemblyInput, InvalidInput};
use crate::storage_allowlist::{self, Access};
use crate::{Pipeline, PipelineWorkerSpec};

/// Names that always mean a local or metadata address, whatever DNS says.
const WELL_KNOWN_NAMES: [(&str, IpAddr); 4] = [
    ("localhost", IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ("metadata.google.internal", METADATA),
    ("metadata", METADATA),
    ("instance-data", METADATA),
];
const METADATA: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));

/// The address policy of a fleet in a cluster with Pod and Service ranges `cluster`.
pub fn address_policy(spec: &PipelineWorkerSpec, cluster: &[Cidr]) -> AddressPolicy {
    AddressPolicy {
        cluster: cluster.to_vec(),
        allowed: spec
            .egress
            .iter()
            .flat_map(|e| &e.allowed_cidrs)
            .filter_map(|c| c.parse().ok())
            .collect(),
    }
}

/// Checks what `input` would make a worker of `spec` read and write. Input
/// that does not parse is left to [`crate::input::validate`], which says why.
pub fn check(
    spec: &PipelineWorkerSpec,
    input: &Value,
    cluster: &[Cidr],
) -> Result<(), InvalidInput> {
    if spec.pipeline != Pipeline::Assembly {
        return Ok(());
    }
    let Ok(assembly) = AssemblyInput::deserialize(input) else {
        return Ok(());
    };
    let invalid = |reason: String| InvalidInput {
        pipeline: Pipeline::Assembly.as_str(),
        reason,
    };
    let prefixes = spec
        .assembly
        .as_ref()
        .map(|a| a.storage.allowed_prefixes.as_slice())
        .unwrap_or_default();
    let policy = address_policy(spec, cluster);
    for (field, url) in urls(&assembly) {
        if let Some(refusal) = literal_address_refusal(url, &policy) {
            return Err(invalid(format!("{field} {refusal}")));
        }
        let access = if field == "outputUrl" {
            Access::Write
        } else {
            Access::Read
        };
        storage_allowlist::check(url, access, prefixes)
            .map_err(|why| invalid(format!("{field} {why}")))?;
    }
    Ok(())
}

/// Every URL of an assembly input, with the field it came from.
pub fn urls(input: &AssemblyInput) -> Vec<(&'static str, &str)> {
    let template = &input.template;
    [
        ("mainUrl", Some(&input.main_url)),
        ("template.introUrl", template.intro_url.as_ref()),
        ("template.outroUrl", template.outro_url.as_ref()),
        ("template.musicBedUrl", template.music_bed_url.as_ref()),
        ("outputUrl", Some(&input.output_url)),
    ]
    .into_iter()
    .filter_map(|(field, url)| Some((field, url?.as_str())))
    .collect()
}

/// Why an `http(s)://` URL whose host is an IP (or a name that always
/// means a local or metadata address) may not be fetched, if it may not.
pub fn literal_address_refusal(url: &str, policy: &AddressPolicy) -> Option<String> {
    let parsed = Url::parse(url).ok()?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return None;
    }
    let ip = match parsed.host()? {
        Host::Ipv4(v4) => IpAddr::V4(v4),
        Host::Ipv6(v6) => IpAddr::V6(v6),
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let known = WELL_KNOWN_NAMES.iter().find(|(known, _)| {
                name == *known || name.ends_with(&format!(".{known}")) && *known == "localhost"
            });
            known?.1
        }
    };
    let refused = policy.refuses(ip)?;
    Some(format!(
        "{} reaches {refused}, which this fleet does not allow (spec.egress.allowedCidrs)",
        crate::redact::url(url)
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::egress::{DEFAULT_CLUSTER_CIDRS, parse_list};

    fn fleet(prefixes: &[&str], allowed_cidrs: &[&str]) -> PipelineWorkerSpec {
        serde_json::from_value(json!({
            "pipeline": "assembly",
            "queue": {"topic": "t", "subscription": "s"},
            "assembly": {"storage": {"allowedPrefixes": prefixes}},
            "egress": {"allowedCidrs": allowed_cidrs},
        }))
        .unwrap()
    }

    fn input(main: &str) -> Value {
        json!({"episodeId": "1", "mainUrl": main, "template": {}, "outputUrl": "s3://media/out/1.mp3"})
    }

    fn reason(spec: &PipelineWorkerSpec, main: &str) -> String {
        let cluster = parse_list(DEFAULT_CLUSTER_CIDRS).unwrap();
        check(spec, &input(main), &cluster).unwrap_err().reason
    }

    #[test]
    fn the_four_hostile_inputs_are_refused_with_reasons_a_person_reads() {
        let spec = fleet(&["s3://media/", "https://cdn.example/"], &[]);
        let token = reason(
            &spec,
            "file:///var/run/secrets/kubernetes.io/serviceaccount/token",
        );
        assert!(
            token.starts_with("mainUrl file:///var/run/secrets"),
            "{token}"
        );
        assert!(
            token.contains("s3://media/, https://cdn.example/"),
            "{token}"
        );
        let metadata = reason(&spec, "https://169.254.169.254/computeMetadata/v1/");
        assert!(metadata.contains("link-local"), "{metadata}");
        assert!(metadata.contains("metadata server"), "{metadata}");
        let service = reason(&spec, "https://10.0.0.10/x.wav");
        assert!(service.contains("cluster-internal"), "{service}");
        let bucket = reason(&spec, "s3://payroll/x.wav");
        assert!(bucket.contains("not under a prefix"), "{bucket}");
    }

    #[test]
    fn well_known_names_are_judged_as_their_addresses() {
        let spec = fleet(&["https://"], &[]);
        assert!(reason(&spec, "https://metadata.google.internal/x").contains("link-local"));
        assert!(reason(&spec, "https://LOCALHOST./x").contains("loopback"));
        assert!(reason(&spec, "https://a.localhost/x").contains("loopback"));
        assert!(reason(&spec, "https://[::ffff:127.0.0.1]/x").contains("loopback"));
    }

    #[test]
    fn an_allowed_range_and_an_allowed_prefix_let_a_job_through() {
        let spec = fleet(
            &["http://127.0.0.1:8099/", "s3://media/"],
            &["127.0.0.1/32"],
        );
        let cluster = parse_list(DEFAULT_CLUSTER_CIDRS).unwrap();
        assert_eq!(
            check(&spec, &input("http://127.0.0.1:8099/m.wav"), &cluster),
            Ok(())
        );
        let other_port = check(&spec, &input("http://127.0.0.1:9/m.wav"), &cluster);
        assert!(
            other_port
                .unwrap_err()
                .reason
                .contains("not under a prefix")
        );
    }

    #[test]
    fn every_url_of_the_input_is_checked_and_other_pipelines_pass() {
        let spec = fleet(&["s3://media/"], &[]);
        let mut bad = input("s3://media/m.wav");
        bad["template"]["musicBedUrl"] = json!("s3://elsewhere/bed.wav");
        let err = check(&spec, &bad, &[]).unwrap_err();
        assert!(err.reason.starts_with("template.musicBedUrl"), "{err}");
        let mut bad = input("s3://media/m.wav");
        bad["outputUrl"] = json!("s3://elsewhere/o.mp3");
        let err = check(&spec, &bad, &[]).unwrap_err();
        assert!(err.reason.starts_with("outputUrl"), "{err}");
        let sleep: PipelineWorkerSpec = serde_json::from_value(
            json!({"pipeline": "sleep", "queue": {"topic": "t", "subscription": "s"}}),
        )
        .unwrap();
        assert_eq!(check(&sleep, &json!({"durationMillis": 1}), &[]), Ok(()));
    }
}
