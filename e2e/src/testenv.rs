//! Locating or building the Go binaries of the test environment: etcd,
//! kube-apiserver, kube-controller-manager, kubectl, the Pub/Sub emulator and
//! the real node's kubelet, kube-scheduler and kube-proxy, and, separately,
//! helm (see [`ensure_helm`]).
//!
//! They are built from the Go module in `e2e/testenv` (which pins every version)
//! into a per-user cache outside the repository, keyed by a hash of everything
//! that determines the result. A cold build takes many minutes; afterwards a
//! lookup costs one `go version` call and a hash of a few files.
//!
//! Several test binaries started by one `cargo test` race to call
//! [`ensure_built`]; an exclusive file lock per cache key makes exactly one of
//! them build while the others wait, and the build goes to a temporary
//! directory that is renamed into place only when complete, so an interrupted
//! build is never mistaken for a finished one.

use std::env;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

use sha2::{Digest, Sha256};

/// The Go module the binaries are built from.
pub const SOURCE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testenv");

/// Overrides the Go toolchain (path to a `go` binary).
pub const GO_ENV: &str = "DROVER_GO";
/// Overrides the cache root.
pub const CACHE_ENV: &str = "DROVER_TESTENV_CACHE";
/// Uses prebuilt binaries from this directory instead of building.
pub const BIN_DIR_ENV: &str = "DROVER_TESTENV_BIN_DIR";

/// The Go module helm is built from. A module of its own, with a cache key of
/// its own: adding or upgrading helm never rebuilds the control plane (and
/// this directory holds no `.go` file, so it is no part of that key either).
pub const HELM_SOURCE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testenv/helm");
/// Uses this helm binary instead of building one.
pub const HELM_ENV: &str = "DROVER_HELM";
/// The helm module whose version `helm version` reports.
const HELM_MODULE: &str = "helm.sh/helm/v3";

/// The Kubernetes module whose version the Kubernetes binaries report.
const KUBERNETES_MODULE: &str = "k8s.io/kubernetes";
/// Where Kubernetes binaries keep their version (normally set by its Makefile).
const VERSION_PACKAGE: &str = "k8s.io/component-base/version";

struct BuildStep {
    what: &'static str,
    packages: &'static [&'static str],
    /// Stamp the Kubernetes version into the binaries, as Kubernetes' own build
    /// does; plain `go build` leaves it at `v0.0.0-master+$Format:%H$`, which is
    /// what `/version` and `kubectl version` would then report.
    stamp_kubernetes_version: bool,
    /// `None`: several packages into the output directory, each named after its
    /// last path element. `Some(name)`: one package into that file name (etcd's
    /// main package is the module root `go.etcd.io/etcd/server/v3`, whose last
    /// element would be `v3`).
    output_name: Option<&'static str>,
}

/// The build recipe. It is part of the cache key, so editing it rebuilds.
const STEPS: &[BuildStep] = &[
    BuildStep {
        what: "kube-apiserver, kube-controller-manager, kubectl and the Pub/Sub emulator",
        packages: &[
            "k8s.io/kubernetes/cmd/kube-apiserver",
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            "k8s.io/kubernetes/cmd/kubectl",
            "./cmd/pubsub-emulator",
        ],
        output_name: None,
        stamp_kubernetes_version: true,
    },
    BuildStep {
        what: "kubelet, kube-scheduler and kube-proxy",
        // Same module and flags as the step above, so Go's build cache shares
        // every package they have in common.
        packages: &[
            "k8s.io/kubernetes/cmd/kubelet",
            "k8s.io/kubernetes/cmd/kube-scheduler",
            "k8s.io/kubernetes/cmd/kube-proxy",
        ],
        output_name: None,
        stamp_kubernetes_version: true,
    },
    BuildStep {
        what: "etcd",
        packages: &["go.etcd.io/etcd/server/v3"],
        output_name: Some("etcd"),
        stamp_kubernetes_version: false,
    },
];

const HELM_STEPS: &[BuildStep] = &[BuildStep {
    what: "helm",
    packages: &["helm.sh/helm/v3/cmd/helm"],
    output_name: Some("helm"),
    stamp_kubernetes_version: false,
}];

/// One cached Go build: where its sources are, how it is built, what it makes.
struct Recipe {
    /// For progress messages.
    what: &'static str,
    source_dir: &'static str,
    steps: &'static [BuildStep],
    /// File names the build must leave in `bin/`.
    outputs: &'static [&'static str],
    /// The `go build` flags of each step (everything but `-o` and the packages).
    flags: fn(&Path) -> Result<Vec<Vec<String>>, TestEnvError>,
}

const CONTROL_PLANE: Recipe = Recipe {
    what: "the test environment (etcd, kube-apiserver, kube-controller-manager, kubectl, \
           Pub/Sub emulator, kubelet, kube-scheduler, kube-proxy)",
    source_dir: SOURCE_DIR,
    steps: STEPS,
    outputs: &[
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kubectl",
        "pubsub-emulator",
        "kubelet",
        "kube-scheduler",
        "kube-proxy",
    ],
    flags: build_flags,
};

const HELM: Recipe = Recipe {
    what: "helm",
    source_dir: HELM_SOURCE_DIR,
    steps: HELM_STEPS,
    outputs: &["helm"],
    flags: helm_build_flags,
};

#[derive(Debug, thiserror::Error)]
pub enum TestEnvError {
    /// `looked_for` says where: the default places, or a `DROVER_GO` that
    /// points at nothing usable (an explicit choice is never silently ignored).
    #[error(
        "Go toolchain not found ({looked_for}): Drover's tests and sandbox build \
         kube-apiserver, etcd and the Pub/Sub emulator from source with Go >= 1.26; \
         install Go or set {GO_ENV}"
    )]
    GoNotFound { looked_for: String },
    #[error("`{} version` failed in {SOURCE_DIR}: {detail}", go.display())]
    GoVersion { go: PathBuf, detail: String },
    #[error("{BIN_DIR_ENV}={}: {name} is missing there (expected {})", dir.display(), path.display())]
    PrebuiltMissing {
        dir: PathBuf,
        name: &'static str,
        path: PathBuf,
    },
    #[error(
        "cannot choose a cache directory for the test environment binaries: \
         set {CACHE_ENV}, XDG_CACHE_HOME or HOME"
    )]
    NoCacheDir,
    #[error("{context} {}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("building {what} failed ({status}); the go command's errors are printed above")]
    Build {
        what: &'static str,
        status: ExitStatus,
    },
    #[error("go build of the test environment succeeded but did not produce {}", .0.display())]
    OutputMissing(PathBuf),
    #[error("{HELM_ENV}={}: not an executable file", .0.display())]
    HelmMissing(PathBuf),
}

fn io_err(context: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TestEnvError + use<> {
    let path = path.to_path_buf();
    move |source| TestEnvError::Io {
        context,
        path,
        source,
    }
}

/// Paths of the test environment's binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestEnvBinaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kubectl: PathBuf,
    pub pubsub_emulator: PathBuf,
    /// The real node's binaries (see [`crate::node`]).
    pub kubelet: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kube_proxy: PathBuf,
}

impl TestEnvBinaries {
    /// The binaries as named in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            etcd: dir.join("etcd"),
            kube_apiserver: dir.join("kube-apiserver"),
            kube_controller_manager: dir.join("kube-controller-manager"),
            kubectl: dir.join("kubectl"),
            pubsub_emulator: dir.join("pubsub-emulator"),
            kubelet: dir.join("kubelet"),
            kube_scheduler: dir.join("kube-scheduler"),
            kube_proxy: dir.join("kube-proxy"),
        }
    }

    fn named(&self) -> [(&'static str, &Path); 8] {
        [
            ("etcd", &self.etcd),
            ("kube-apiserver", &self.kube_apiserver),
            ("kube-controller-manager", &self.kube_controller_manager),
            ("kubectl", &self.kubectl),
            ("pubsub-emulator", &self.pubsub_emulator),
            ("kubelet", &self.kubelet),
            ("kube-scheduler", &self.kube_scheduler),
            ("kube-proxy", &self.kube_proxy),
        ]
    }

    fn first_missing(&self) -> Option<(&'static str, &Path)> {
        self.named()
            .into_iter()
            .find(|(_, path)| !is_executable(path))
    }
}

/// Returns the test environment's binaries, building them first if the cache
/// has none for the current sources and Go version. `progress` receives
/// human-readable status lines (a cold build is long; the user should know why).
///
/// Blocking: a build runs `go` as a child process and waits for it.
pub fn ensure_built(progress: &mut dyn FnMut(&str)) -> Result<TestEnvBinaries, TestEnvError> {
    if let Some(dir) = env::var_os(BIN_DIR_ENV).filter(|v| !v.is_empty()) {
        return prebuilt(PathBuf::from(dir));
    }
    let bin_dir = build_cached(&CONTROL_PLANE, cache_root()?, progress)?;
    Ok(TestEnvBinaries::in_dir(&bin_dir))
}

/// Returns the path of a helm binary: `$DROVER_HELM`, else one built from
/// [`HELM_SOURCE_DIR`] into `<cache root>/helm/<key>/bin/helm` the same way as
/// [`ensure_built`] builds the control plane (a lock per key, an atomic rename,
/// a loud error without Go). A cold build takes a few minutes.
pub fn ensure_helm(progress: &mut dyn FnMut(&str)) -> Result<PathBuf, TestEnvError> {
    if let Some(helm) = env::var_os(HELM_ENV).filter(|v| !v.is_empty()) {
        let helm = PathBuf::from(helm);
        return if is_executable(&helm) {
            Ok(helm)
        } else {
            Err(TestEnvError::HelmMissing(helm))
        };
    }
    let bin_dir = build_cached(&HELM, cache_root()?.join("helm"), progress)?;
    Ok(bin_dir.join("helm"))
}

fn first_missing(bin_dir: &Path, outputs: &[&str]) -> Option<PathBuf> {
    outputs
        .iter()
        .map(|name| bin_dir.join(name))
        .find(|path| !is_executable(path))
}

/// Builds `recipe` into `<root>/<key>/bin` unless it is there already, and
/// returns that directory.
fn build_cached(
    recipe: &Recipe,
    root: PathBuf,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, TestEnvError> {
    let go = find_go()?;
    let source_dir = Path::new(recipe.source_dir);
    let go_version = go_version(&go, source_dir)?;
    let flags = (recipe.flags)(source_dir)?;
    let key = cache_key(source_dir, recipe.steps, &go_version, &flags)?;
    let key_dir = root.join(&key);
    let bin_dir = key_dir.join("bin");

    // The finished directory only ever appears through an atomic rename, so if
    // it is complete it is usable without taking the lock.
    if first_missing(&bin_dir, recipe.outputs).is_none() {
        return Ok(bin_dir);
    }

    fs::create_dir_all(&root).map_err(io_err("cannot create the cache directory", &root))?;
    let lock_path = root.join(format!("{key}.lock"));
    let _lock = lock_exclusive(&lock_path, progress)?;

    // Someone else may have finished the build while we waited for the lock.
    if bin_dir.exists() {
        if first_missing(&bin_dir, recipe.outputs).is_none() {
            progress(&format!(
                "using the {} binaries another process just built in {}",
                recipe.what,
                bin_dir.display()
            ));
            return Ok(bin_dir);
        }
        // Only a rename creates `bin`, so this is tampering (e.g. a deleted file):
        // start over rather than trust it.
        fs::remove_dir_all(&bin_dir).map_err(io_err("cannot remove the incomplete", &bin_dir))?;
    }

    // A leftover from an interrupted build; we hold the lock, so nobody uses it.
    let partial = key_dir.join("bin.partial");
    if partial.exists() {
        fs::remove_dir_all(&partial)
            .map_err(io_err("cannot remove the interrupted build", &partial))?;
    }
    fs::create_dir_all(&partial).map_err(io_err("cannot create the build directory", &partial))?;

    progress(&format!(
        "building {} from {} with {go_version} into {}; a cold build takes minutes, \
         later runs reuse it",
        recipe.what,
        recipe.source_dir,
        bin_dir.display()
    ));
    let total = Instant::now();
    for (step, flags) in recipe.steps.iter().zip(&flags) {
        run_build_step(&go, source_dir, &partial, step, flags, progress)?;
    }
    if let Some(path) = first_missing(&partial, recipe.outputs) {
        return Err(TestEnvError::OutputMissing(path));
    }
    fs::rename(&partial, &bin_dir).map_err(io_err(
        "cannot move the finished build into place at",
        &bin_dir,
    ))?;
    progress(&format!(
        "{} built in {:.1} s",
        recipe.what,
        total.elapsed().as_secs_f64()
    ));
    prune_other_builds(&root, &key, progress);

    // `-mod=mod` lets go rewrite go.mod/go.sum; if it did, the next run hashes to a
    // different key and rebuilds (quickly, from Go's build cache). Say so, so the
    // updated files get committed.
    if cache_key(source_dir, recipe.steps, &go_version, &flags)? != key {
        progress(&format!(
            "warning: the build updated {}/go.mod or go.sum; commit those changes",
            recipe.source_dir
        ));
    }
    Ok(bin_dir)
}

/// Removes the builds of other cache keys (each is a few hundred MB): they are
/// left behind whenever go.mod, the sources or Go change. A build whose lock is
/// held (another checkout is building it right now) is kept. A concurrent run of
/// another checkout that already has its binaries could lose them, and would
/// fail to spawn them with a clear error; two checkouts with different Go
/// modules testing at the same moment on one machine is rare enough to accept
/// that. Best effort: failures only cost disk space.
fn prune_other_builds(root: &Path, key: &str, progress: &mut dyn FnMut(&str)) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        // Only other keys' builds: the cache root also holds other recipes'
        // directories (`helm/`).
        let is_key = name.len() == key.len() && name.bytes().all(|b| b.is_ascii_hexdigit());
        if name == key || !is_key || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let lock_path = root.join(format!("{name}.lock"));
        let Ok(lock) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        else {
            continue;
        };
        if lock.try_lock().is_ok() && fs::remove_dir_all(&path).is_ok() {
            let _ = fs::remove_file(&lock_path);
            progress(&format!("removed the outdated build {}", path.display()));
        }
    }
}

fn prebuilt(dir: PathBuf) -> Result<TestEnvBinaries, TestEnvError> {
    let binaries = TestEnvBinaries::in_dir(&dir);
    if let Some((name, path)) = binaries.first_missing() {
        return Err(TestEnvError::PrebuiltMissing {
            name,
            path: path.to_path_buf(),
            dir,
        });
    }
    Ok(binaries)
}

fn run_build_step(
    go: &Path,
    source_dir: &Path,
    out_dir: &Path,
    step: &BuildStep,
    flags: &[String],
    progress: &mut dyn FnMut(&str),
) -> Result<(), TestEnvError> {
    // `-o DIR/` (trailing slash) is how go build writes several binaries into a directory.
    let mut output: OsString = out_dir.as_os_str().to_owned();
    match step.output_name {
        Some(name) => output.push(format!("/{name}")),
        None => output.push("/"),
    }
    progress(&format!("go build {} ...", step.what));
    let started = Instant::now();
    let mut command = Command::new(go);
    // If the test process is killed, go must not keep writing into a build
    // directory that the next run deletes and reuses. This thread blocks until
    // go exits, so tying go's life to it is safe.
    crate::process::kill_when_parent_thread_exits(&mut command);
    let status = command
        .args(flags)
        .arg("-o")
        .arg(&output)
        .args(step.packages)
        .current_dir(source_dir)
        // The module's go.sum may lag behind the `tool` directives' full
        // dependency graph; let go resolve it rather than fail.
        .env("GOFLAGS", "-mod=mod")
        .stdin(Stdio::null())
        // Inherited so compile errors reach the user directly.
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .map_err(io_err("cannot run", go))?;
    if !status.success() {
        return Err(TestEnvError::Build {
            what: step.what,
            status,
        });
    }
    progress(&format!(
        "built {} in {:.1} s",
        step.what,
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// An exclusive lock on `path`, released when the returned file is dropped.
fn lock_exclusive(path: &Path, progress: &mut dyn FnMut(&str)) -> Result<File, TestEnvError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err("cannot open the build lock", path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => {
            progress(&format!(
                "waiting for another process that is building the test environment (lock {})",
                path.display()
            ));
            let started = Instant::now();
            file.lock()
                .map_err(io_err("cannot take the build lock", path))?;
            progress(&format!(
                "waited {:.1} s for the other build",
                started.elapsed().as_secs_f64()
            ));
            Ok(file)
        }
        Err(TryLockError::Error(e)) => Err(io_err("cannot take the build lock", path)(e)),
    }
}

/// `$DROVER_GO`, else `go` on PATH.
fn find_go() -> Result<PathBuf, TestEnvError> {
    if let Some(go) = env::var_os(GO_ENV).filter(|v| !v.is_empty()) {
        let go = PathBuf::from(go);
        return if is_executable(&go) {
            Ok(go)
        } else {
            Err(TestEnvError::GoNotFound {
                looked_for: format!("{GO_ENV}={} is not an executable file", go.display()),
            })
        };
    }
    let on_path = env::var_os("PATH")
        .into_iter()
        .flat_map(|path| env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("go"))
        .find(|candidate| is_executable(candidate));
    // No guessing at install locations: a Go that is not on PATH is not the
    // Go the user meant, and tests must be able to hide it.
    on_path.ok_or_else(|| TestEnvError::GoNotFound {
        looked_for: format!("looked for ${GO_ENV} and `go` on PATH"),
    })
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The output of `go version`, run in the module directory so that a `toolchain`
/// line in go.mod (GOTOOLCHAIN switching) is reflected.
fn go_version(go: &Path, source_dir: &Path) -> Result<String, TestEnvError> {
    let output = Command::new(go)
        .arg("version")
        .current_dir(source_dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TestEnvError::GoVersion {
            go: go.to_path_buf(),
            detail: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(TestEnvError::GoVersion {
            go: go.to_path_buf(),
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The cache root: `$DROVER_TESTENV_CACHE`, `$XDG_CACHE_HOME/drover/testenv` or
/// `$HOME/.cache/drover/testenv` (never inside the repository, so `cargo clean`
/// and fresh clones keep the multi-minute build).
fn cache_root() -> Result<PathBuf, TestEnvError> {
    drover_cache_dir(CACHE_ENV, "testenv").ok_or(TestEnvError::NoCacheDir)
}

/// `$<override_env>`, else `$XDG_CACHE_HOME/drover/<leaf>`, else
/// `$HOME/.cache/drover/<leaf>`: Drover's caches, outside the repository.
pub(crate) fn drover_cache_dir(override_env: &str, leaf: &str) -> Option<PathBuf> {
    let non_empty = |name: &str| {
        env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(root) = non_empty(override_env) {
        return Some(root);
    }
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(xdg) = non_empty("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        return Some(xdg.join("drover").join(leaf));
    }
    non_empty("HOME").map(|home| home.join(".cache").join("drover").join(leaf))
}

/// The `go build` flags of each step in [`STEPS`] (everything but `-o` and the packages).
fn build_flags(source_dir: &Path) -> Result<Vec<Vec<String>>, TestEnvError> {
    let go_mod = source_dir.join("go.mod");
    let go_mod_text = fs::read_to_string(&go_mod).map_err(io_err("cannot read", &go_mod))?;
    let stamp = kubernetes_version(&go_mod_text).map(|version| version_ldflags(&version));
    Ok(STEPS
        .iter()
        .map(|step| {
            let mut ldflags = String::from("-s -w");
            if step.stamp_kubernetes_version
                && let Some(stamp) = &stamp
            {
                ldflags.push_str(stamp);
            }
            vec![
                "build".to_owned(),
                "-trimpath".to_owned(),
                format!("-ldflags={ldflags}"),
            ]
        })
        .collect())
}

/// helm's `go build` flags: stamped with the helm version go.mod requires,
/// as helm's own release build does (otherwise `helm version` says `v3.x-dev`).
fn helm_build_flags(source_dir: &Path) -> Result<Vec<Vec<String>>, TestEnvError> {
    let go_mod = source_dir.join("go.mod");
    let go_mod_text = fs::read_to_string(&go_mod).map_err(io_err("cannot read", &go_mod))?;
    let mut ldflags = String::from("-s -w");
    if let Some(version) = module_version(&go_mod_text, HELM_MODULE) {
        ldflags.push_str(&format!(
            " -X {HELM_MODULE}/internal/version.version={version}"
        ));
    }
    Ok(HELM_STEPS
        .iter()
        .map(|_| {
            vec![
                "build".to_owned(),
                "-trimpath".to_owned(),
                format!("-ldflags={ldflags}"),
            ]
        })
        .collect())
}

/// The version of `k8s.io/kubernetes` that go.mod requires, e.g. `v1.37.2`.
fn kubernetes_version(go_mod: &str) -> Option<String> {
    module_version(go_mod, KUBERNETES_MODULE)
}

/// The version of `module` that go.mod requires.
fn module_version(go_mod: &str, module_path: &str) -> Option<String> {
    go_mod.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let mut module = words.next()?;
        if module == "require" {
            module = words.next()?;
        }
        let version = words.next()?;
        (module == module_path && version.starts_with('v')).then(|| version.to_owned())
    })
}

/// `-X` linker flags that set the version variables Kubernetes' Makefile sets.
fn version_ldflags(version: &str) -> String {
    let mut parts = version.trim_start_matches('v').split('.');
    let major = parts.next().unwrap_or_default();
    let minor = parts.next().unwrap_or_default();
    [
        ("gitVersion", version),
        ("gitMajor", major),
        ("gitMinor", minor),
        ("gitTreeState", "clean"),
    ]
    .iter()
    .map(|(var, value)| format!(" -X {VERSION_PACKAGE}.{var}={value}"))
    .collect()
}

/// Hash of everything that decides what the build produces: the Go version,
/// the build recipe, go.mod, go.sum and every .go file of the module.
fn cache_key(
    source_dir: &Path,
    steps: &[BuildStep],
    go_version: &str,
    flags: &[Vec<String>],
) -> Result<String, TestEnvError> {
    let mut files = Vec::new();
    for name in ["go.mod", "go.sum"] {
        let path = source_dir.join(name);
        if path.exists() {
            files.push(path);
        }
    }
    collect_go_files(source_dir, &mut files)?;
    files.sort();

    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        // Length-prefixed, so distinct inputs can never concatenate to the same stream.
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(go_version.as_bytes());
    for (step, flags) in steps.iter().zip(flags) {
        field(flags.join(" ").as_bytes());
        field(step.packages.join(" ").as_bytes());
        field(step.output_name.unwrap_or("").as_bytes());
    }
    for path in &files {
        let relative = path.strip_prefix(source_dir).unwrap_or(path);
        field(relative.to_string_lossy().as_bytes());
        let contents = fs::read(path).map_err(io_err("cannot read", path))?;
        field(&contents);
    }
    let digest = hasher.finalize();
    // 80 bits: plenty to tell a handful of cached builds apart, short enough for paths.
    Ok(digest[..10].iter().map(|b| format!("{b:02x}")).collect())
}

fn collect_go_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), TestEnvError> {
    let entries = fs::read_dir(dir).map_err(io_err("cannot list", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("cannot list", dir))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(io_err("cannot inspect", &path))?;
        if file_type.is_dir() {
            collect_go_files(&path, out)?;
        } else if file_type.is_file() && path.extension().is_some_and(|e| e == "go") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_depends_on_sources_and_go_version() {
        let dir = env::temp_dir().join(format!("drover-e2e-key-test-{}", std::process::id()));
        fs::create_dir_all(dir.join("cmd/x")).expect("scratch dir");
        fs::write(dir.join("go.mod"), "module example\n").expect("go.mod");
        fs::write(dir.join("cmd/x/main.go"), "package main\n").expect("main.go");
        let a = cache_key(&dir, STEPS, "go version go1.26.0 linux/amd64", &[]).expect("key");
        assert_eq!(
            a,
            cache_key(&dir, STEPS, "go version go1.26.0 linux/amd64", &[]).expect("key")
        );
        assert_ne!(
            a,
            cache_key(&dir, STEPS, "go version go1.26.1 linux/amd64", &[]).expect("key")
        );
        fs::write(
            dir.join("cmd/x/main.go"),
            "package main\n\nfunc main() {}\n",
        )
        .expect("main.go");
        assert_ne!(
            a,
            cache_key(&dir, STEPS, "go version go1.26.0 linux/amd64", &[]).expect("key")
        );
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn stamps_the_required_kubernetes_version() {
        let go_mod = "module x\n\nreplace (\n\tk8s.io/api => k8s.io/api v0.37.2\n)\n\nrequire (\n\tk8s.io/kubernetes v1.37.2 // indirect\n)\n";
        let version = kubernetes_version(go_mod).expect("version found");
        assert_eq!(version, "v1.37.2");
        assert_eq!(
            version_ldflags(&version),
            " -X k8s.io/component-base/version.gitVersion=v1.37.2 \
             -X k8s.io/component-base/version.gitMajor=1 \
             -X k8s.io/component-base/version.gitMinor=37 \
             -X k8s.io/component-base/version.gitTreeState=clean"
        );
        assert_eq!(
            kubernetes_version("require k8s.io/kubernetes v1.36.0\n").as_deref(),
            Some("v1.36.0")
        );
        assert_eq!(kubernetes_version("module x\n"), None);
    }

    #[test]
    fn go_not_found_explains_what_to_do() {
        let message = TestEnvError::GoNotFound {
            looked_for: "looked for $DROVER_GO and `go` on PATH".into(),
        }
        .to_string();
        assert!(
            message.starts_with("Go toolchain not found (looked for $DROVER_GO and `go` on PATH)")
        );
        assert!(message.ends_with("install Go or set DROVER_GO"));
    }
}
