//! The plugin binary starts and explains itself. (An integration test also
//! makes `cargo test` build the binary the end-to-end tests run.)

use std::process::Command;

fn kubectl_drover(args: &[&str], kubeconfig: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-drover"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("kubectl-drover runs")
}

#[test]
fn help_lists_every_command_and_kubectls_flags() {
    let out = kubectl_drover(&["--help"], "/nonexistent");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "submit",
        "get",
        "describe",
        "logs",
        "cancel",
        "retry",
        "resubmit",
        "dlq",
        "fleet",
        "history",
        "--namespace",
        "--context",
        "--all-namespaces",
    ] {
        assert!(
            help.contains(word),
            "--help does not mention {word}:\n{help}"
        );
    }
}

#[test]
fn without_a_cluster_it_fails_with_a_reason() {
    let dir = std::env::temp_dir().join(format!("kubectl-drover-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let missing = dir.join("no-kubeconfig");
    let out = kubectl_drover(&["get"], missing.to_str().expect("utf-8 path"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("kubeconfig"), "{stderr}");
}
