//! Without a Go toolchain the sandbox and the harness stop at once with an
//! error that says what is missing and how to fix it: never a hang, never a
//! silent skip.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Runs a binary of this crate with no Go anywhere it looks and an empty cache.
fn run_without_go(binary: &str, args: &[&str]) -> (Output, Duration) {
    // With Go reachable this would start a cold build into the scratch cache.
    assert!(
        !Path::new("/usr/bin/go").exists() && !Path::new("/bin/go").exists(),
        "this test hides Go by PATH, but Go is installed in /usr/bin or /bin"
    );
    let scratch =
        std::env::temp_dir().join(format!("drover-e2e-nogo-{}-{binary}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let started = Instant::now();
    let output = Command::new(binary_path(binary))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &scratch)
        .env("DROVER_TESTENV_CACHE", scratch.join("cache"))
        .output()
        .expect("binary runs");
    let _ = std::fs::remove_dir_all(&scratch);
    (output, started.elapsed())
}

fn binary_path(name: &str) -> &'static Path {
    match name {
        "sandbox" => Path::new(env!("CARGO_BIN_EXE_sandbox")),
        "testenv" => Path::new(env!("CARGO_BIN_EXE_testenv")),
        other => panic!("no binary {other}"),
    }
}

fn assert_clear_go_error(output: &Output, took: Duration) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "succeeded without Go: {stderr}");
    assert!(stderr.contains("Go toolchain not found"), "{stderr}");
    assert!(stderr.contains("install Go or set DROVER_GO"), "{stderr}");
    assert!(took < Duration::from_secs(30), "took {took:?} to fail");
}

#[test]
fn sandbox_without_go_says_so() {
    let state = std::env::temp_dir().join(format!("drover-e2e-nogo-state-{}", std::process::id()));
    let state_arg = state.to_string_lossy().into_owned();
    let (output, took) = run_without_go("sandbox", &["--state-dir", &state_arg]);
    let _ = std::fs::remove_dir_all(&state);
    assert_clear_go_error(&output, took);
}

#[test]
fn harness_without_go_says_so() {
    let (output, took) = run_without_go("testenv", &[]);
    assert_clear_go_error(&output, took);
}

/// helm is built from its Go module too: with the control plane prebuilt
/// (here, stand-in files) and no Go, the build of helm fails as loudly.
#[test]
fn helm_without_go_says_so() {
    use std::os::unix::fs::PermissionsExt;
    let prebuilt = std::env::temp_dir().join(format!("drover-e2e-nogo-bin-{}", std::process::id()));
    std::fs::create_dir_all(&prebuilt).expect("prebuilt dir");
    for name in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kubectl",
        "pubsub-emulator",
        "kubelet",
        "kube-scheduler",
        "kube-proxy",
    ] {
        let path = prebuilt.join(name);
        std::fs::write(&path, "#!/bin/sh\n").expect("stand-in");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let scratch = prebuilt.join("home");
    let started = Instant::now();
    let output = Command::new(binary_path("testenv"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &scratch)
        .env("DROVER_TESTENV_CACHE", scratch.join("cache"))
        .env("DROVER_TESTENV_BIN_DIR", &prebuilt)
        .output()
        .expect("binary runs");
    let took = started.elapsed();
    let _ = std::fs::remove_dir_all(&prebuilt);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("kube-apiserver"), "{stdout}");
    assert!(!stdout.contains("helm"), "{stdout}");
    assert_clear_go_error(&output, took);
}
