//! The worker binary starts and explains itself. (An integration test also
//! makes `cargo test` build the binary the end-to-end tests run.)

use std::process::Command;

#[test]
fn help_lists_the_identity_it_needs() {
    let out = Command::new(env!("CARGO_BIN_EXE_drover-worker"))
        .arg("--help")
        .output()
        .expect("drover-worker runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--namespace",
        "--worker-name",
        "--pod-name",
        "--http-addr",
        "DROVER_POD_NAME",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
}

#[test]
fn missing_identity_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_drover-worker"))
        .env_clear()
        .output()
        .expect("drover-worker runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--namespace <NAMESPACE>"), "{stderr}");
}
