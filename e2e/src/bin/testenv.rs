//! Builds (or finds in the cache) the Go binaries of the test environment and
//! helm, and prints where they are. `.ci/run` calls it so the long first build shows its
//! progress before the tests start.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut progress = |line: &str| {
        let _ = writeln!(std::io::stderr().lock(), "testenv: {line}");
    };
    match drover_e2e::ensure_built(&mut progress) {
        Ok(bins) => {
            for (name, path) in [
                ("etcd", &bins.etcd),
                ("kube-apiserver", &bins.kube_apiserver),
                ("kube-controller-manager", &bins.kube_controller_manager),
                ("kubectl", &bins.kubectl),
                ("pubsub-emulator", &bins.pubsub_emulator),
                ("kubelet", &bins.kubelet),
                ("kube-scheduler", &bins.kube_scheduler),
                ("kube-proxy", &bins.kube_proxy),
            ] {
                println!("{name}\t{}", path.display());
            }
        }
        Err(err) => {
            progress(&format!("error: {}", drover_e2e::error_chain(&err)));
            return ExitCode::FAILURE;
        }
    }
    match drover_e2e::testenv::ensure_helm(&mut progress) {
        Ok(helm) => {
            println!("helm\t{}", helm.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            progress(&format!("error: {}", drover_e2e::error_chain(&err)));
            ExitCode::FAILURE
        }
    }
}
