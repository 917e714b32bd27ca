//! The node's cgroups: a `cgroupRoot` of its own for the kubelet (this
//! machine is cgroup v1, so one directory per controller hierarchy), removed
//! again when the node stops, and by a janitor process when the test binary
//! dies without stopping it.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const CGROUP_FS: &str = "/sys/fs/cgroup";
const REMOVE_TIMEOUT: Duration = Duration::from_secs(15);

/// Removes the cgroup trees given as arguments once its stdin closes (the
/// test process has gone, or stopped the node): processes killed with the
/// PID namespace leave their cgroups behind, and the kernel only lets an
/// empty one be removed, deepest first. Then removes the node's container
/// storage, the bulk of its state directory.
const JANITOR_SCRIPT: &str = r#"cat >/dev/null
storage=$1
shift
i=0
while [ $i -lt 150 ]; do
    left=
    for dir in "$@"; do
        [ -d "$dir" ] || continue
        find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null
        [ -d "$dir" ] && left=1
    done
    [ -z "$left" ] && break
    sleep 0.1
    i=$((i + 1))
done
rm -rf "$storage"
"#;

/// The node's cgroup root in every v1 hierarchy.
#[derive(Debug)]
pub struct CgroupRoot {
    /// As the kubelet's `cgroupRoot` names it: `/<name>`.
    name: String,
    dirs: Vec<PathBuf>,
    janitor: Option<(Child, ChildStdin)>,
}

impl CgroupRoot {
    /// Creates `/<name>` in each hierarchy (cpuset's with the parent's CPUs
    /// and memory nodes, which a new cpuset lacks) and starts the janitor
    /// that removes them, and `storage`, after the test process is gone.
    pub fn create(name: &str, storage: &Path) -> io::Result<Self> {
        let mut dirs = Vec::new();
        for entry in fs::read_dir(CGROUP_FS)? {
            let entry = entry?;
            let hierarchy = entry.path();
            // Every hierarchy, the named `systemd` one (the kubelet checks it)
            // and the hybrid layout's v2 `unified` one (runc creates a
            // container's cgroup there too) included.
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let dir = hierarchy.join(name);
            if !dir.exists() {
                fs::create_dir(&dir)?;
            }
            dirs.push(dir);
        }
        let cpuset = Path::new(CGROUP_FS).join("cpuset");
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let value = fs::read_to_string(cpuset.join(file))?;
            fs::write(cpuset.join(name).join(file), value.trim())?;
        }
        let janitor = start_janitor(&dirs, storage)?;
        Ok(Self {
            name: format!("/{name}"),
            dirs,
            janitor: Some(janitor),
        })
    }

    /// The kubelet's `cgroupRoot`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directories of this root that still exist, in any hierarchy
    /// (looked up afresh: runc also creates the root where the harness did not).
    pub fn remaining(&self) -> Vec<PathBuf> {
        let mut dirs = self.dirs.clone();
        if let Ok(entries) = fs::read_dir(CGROUP_FS) {
            for entry in entries.flatten() {
                let dir = entry.path().join(self.name.trim_start_matches('/'));
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
        }
        dirs.retain(|d| d.exists());
        dirs
    }

    /// Removes every cgroup under the root and the root itself, waiting for
    /// the kernel to let go of the ones whose processes are still dying.
    pub fn remove(&mut self) -> Result<(), Vec<PathBuf>> {
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        loop {
            for dir in self.remaining() {
                remove_tree(&dir);
            }
            let left = self.remaining();
            if left.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(left);
            }
            thread::sleep(Duration::from_millis(50));
        }
        // Nothing left for the janitor: let it run its empty pass and exit.
        if let Some((mut child, stdin)) = self.janitor.take() {
            drop(stdin);
            let _ = child.wait();
        }
        Ok(())
    }
}

/// Removes the cgroup directories under `dir`, deepest first, and `dir`
/// (cgroup directories hold only the kernel's files and go with rmdir).
fn remove_tree(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Starts the janitor in a process group of its own (a Ctrl-C to the test
/// must not reach it) and without a parent-death signal: it is what runs
/// after the parent's death. Its stdin is a pipe only this process holds.
fn start_janitor(dirs: &[PathBuf], storage: &Path) -> io::Result<(Child, ChildStdin)> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(JANITOR_SCRIPT)
        .arg("drover-node-janitor")
        .arg(storage)
        .args(dirs)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("the janitor has no stdin"))?;
    Ok((child, stdin))
}
