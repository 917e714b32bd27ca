//! The operator binary starts and explains itself. (An integration test also
//! makes `cargo test` build the binary the end-to-end tests run.)

use std::process::Command;

#[test]
fn help_lists_the_settings() {
    let out = Command::new(env!("CARGO_BIN_EXE_drover-operator"))
        .arg("--help")
        .output()
        .expect("drover-operator runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--pubsub-project",
        "--worker-image",
        "--metrics-addr",
        "--lease-namespace",
        "--lease-seconds",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
}

#[test]
fn without_a_cluster_it_fails_with_a_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_drover-operator"))
        .env_clear()
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("DROVER_METRICS_ADDR", "127.0.0.1:0")
        .output()
        .expect("drover-operator runs");
    assert!(!out.status.success());
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(logs.contains("cannot reach the Kubernetes API"), "{logs}");
}
