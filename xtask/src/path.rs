//! Finding commands on PATH, the way `command -v` does, and putting Go on it.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where Go is installed on the machines Drover is developed and tested on,
/// not always on PATH.
pub const GO_FALLBACK_DIR: &str = "/usr/local/go/bin";

/// The first executable called `name` in the directories of `path`.
pub fn find_command(
    name: &str,
    path: &OsStr,
    is_executable: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    std::env::split_paths(path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a file someone may execute.
pub fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// How Go was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoLocation {
    /// `go` is on PATH already.
    OnPath(PathBuf),
    /// `go` is in this directory, which was put at the front of the new PATH.
    Added { dir: PathBuf, path: OsString },
}

/// Finds `go` on `path`, else in `fallback_dir` (then returns the PATH with
/// that directory in front); `None` when neither has it.
pub fn locate_go(
    path: &OsStr,
    fallback_dir: &Path,
    is_executable: impl Fn(&Path) -> bool,
) -> Option<GoLocation> {
    if let Some(go) = find_command("go", path, &is_executable) {
        return Some(GoLocation::OnPath(go));
    }
    if !is_executable(&fallback_dir.join("go")) {
        return None;
    }
    let dirs = std::iter::once(fallback_dir.to_path_buf()).chain(std::env::split_paths(path));
    // A directory with a `:` in it cannot be on PATH at all; keep the old PATH then.
    let path = std::env::join_paths(dirs).unwrap_or_else(|_| path.to_owned());
    Some(GoLocation::Added {
        dir: fallback_dir.to_path_buf(),
        path,
    })
}

/// The effective user id from the text of `/proc/self/status`.
pub fn effective_uid(proc_status: &str) -> Option<u32> {
    let ids = proc_status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    // Real, effective, saved and filesystem ids, in that order.
    ids.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exists_in<'a>(files: &'a [&'a str]) -> impl Fn(&Path) -> bool + 'a {
        move |p: &Path| files.iter().any(|f| Path::new(f) == p)
    }

    #[test]
    fn the_first_directory_that_has_the_command_wins() {
        let files = ["/opt/bin/promtool", "/usr/bin/promtool"];
        assert_eq!(
            find_command(
                "promtool",
                OsStr::new("/bin:/opt/bin:/usr/bin"),
                exists_in(&files)
            ),
            Some(PathBuf::from("/opt/bin/promtool"))
        );
    }

    #[test]
    fn a_command_in_no_directory_is_not_found() {
        let files = ["/usr/bin/ffmpeg"];
        assert_eq!(
            find_command("espeak-ng", OsStr::new("/bin:/usr/bin"), exists_in(&files)),
            None
        );
    }

    #[test]
    fn an_empty_path_entry_is_not_the_current_directory() {
        let files = ["go"];
        assert_eq!(
            find_command("go", OsStr::new("::/bin"), exists_in(&files)),
            None
        );
    }

    #[test]
    fn go_on_path_leaves_path_alone() {
        let files = ["/usr/bin/go", "/usr/local/go/bin/go"];
        assert_eq!(
            locate_go(
                OsStr::new("/usr/bin"),
                Path::new(GO_FALLBACK_DIR),
                exists_in(&files)
            ),
            Some(GoLocation::OnPath(PathBuf::from("/usr/bin/go")))
        );
    }

    #[test]
    fn go_only_in_the_fallback_directory_goes_in_front_of_path() {
        let files = ["/usr/local/go/bin/go"];
        assert_eq!(
            locate_go(
                OsStr::new("/usr/bin:/bin"),
                Path::new(GO_FALLBACK_DIR),
                exists_in(&files)
            ),
            Some(GoLocation::Added {
                dir: PathBuf::from(GO_FALLBACK_DIR),
                path: OsString::from("/usr/local/go/bin:/usr/bin:/bin"),
            })
        );
    }

    #[test]
    fn no_go_anywhere_is_none() {
        assert_eq!(
            locate_go(
                OsStr::new("/usr/bin"),
                Path::new(GO_FALLBACK_DIR),
                exists_in(&[])
            ),
            None
        );
    }

    #[test]
    fn the_effective_uid_is_the_second_field() {
        let status =
            "Name:\tcargo\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Name:\tcargo\n"), None);
    }

    #[test]
    fn this_process_has_a_uid() {
        let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
        assert!(effective_uid(&status).is_some());
    }
}
