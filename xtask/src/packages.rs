//! The Debian packages the tests use, and the apt-get lines that install the
//! missing ones. Each test fails, never skips, without them.

/// A Debian package and the commands the tests run from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebianPackage {
    pub name: &'static str,
    /// Installed means every one of these is on PATH.
    pub commands: &'static [&'static str],
    /// Which tests need it, for the line printed before installing.
    pub needed_by: &'static str,
}

/// What `cargo test --workspace` needs from Debian.
pub const TEST_PACKAGES: [DebianPackage; 6] = [
    DebianPackage {
        name: "prometheus",
        commands: &["prometheus", "promtool"],
        needed_by: "the install and observability tests (promtool checks the alert rules, Prometheus scrapes operator and workers)",
    },
    DebianPackage {
        name: "ffmpeg",
        commands: &["ffmpeg"],
        needed_by: "the assembly tests and benchmark (test audio, and ffmpeg's loudness meter)",
    },
    DebianPackage {
        name: "espeak-ng",
        commands: &["espeak-ng"],
        needed_by: "the assembly tests and benchmark (synthetic speech)",
    },
    DebianPackage {
        name: "faketime",
        commands: &["faketime"],
        needed_by: "the clock-skew test (libfaketime runs a worker 60 s ahead of the others)",
    },
    DebianPackage {
        name: "tmux",
        commands: &["tmux"],
        needed_by: "the CLI's terminal test (kubectl-drover submit --watch in a tmux pane)",
    },
    DebianPackage {
        name: "postgresql",
        // The tests run the server from /usr/lib/postgresql/*/bin, which is
        // not on PATH; postgresql-common's cluster tool is, with the server only.
        commands: &["pg_ctlcluster"],
        needed_by: "the archive test and the sandbox's archive (a throwaway PostgreSQL server)",
    },
];

/// The packages of which at least one command is missing.
pub fn missing(
    packages: &[DebianPackage],
    has_command: impl Fn(&str) -> bool,
) -> Vec<&DebianPackage> {
    packages
        .iter()
        .filter(|p| !p.commands.iter().all(|c| has_command(c)))
        .collect()
}

/// The argv lines that install `names`: an index update, then a quiet,
/// noninteractive install without recommended extras; through sudo unless
/// the caller is root (`env` because sudo drops the caller's environment).
pub fn apt_get_lines(names: &[&str], as_root: bool) -> [Vec<String>; 2] {
    let prefix: &[&str] = if as_root {
        &["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
    } else {
        &["sudo", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
    };
    let line = |args: &[&str]| -> Vec<String> {
        prefix.iter().chain(args).map(|s| (*s).to_owned()).collect()
    };
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend_from_slice(names);
    [line(&["update", "-qq"]), line(&install)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(packages: &[&DebianPackage]) -> Vec<&'static str> {
        packages.iter().map(|p| p.name).collect()
    }

    #[test]
    fn nothing_is_missing_when_every_command_exists() {
        assert!(missing(&TEST_PACKAGES, |_| true).is_empty());
    }

    #[test]
    fn everything_is_missing_on_a_fresh_machine() {
        assert_eq!(
            names(&missing(&TEST_PACKAGES, |_| false)),
            [
                "prometheus",
                "ffmpeg",
                "espeak-ng",
                "faketime",
                "tmux",
                "postgresql"
            ]
        );
    }

    #[test]
    fn prometheus_without_promtool_is_missing() {
        let has = |c: &str| c != "promtool";
        assert_eq!(names(&missing(&TEST_PACKAGES, has)), ["prometheus"]);
    }

    #[test]
    fn only_the_package_of_the_missing_command_is_installed() {
        let has = |c: &str| c != "espeak-ng";
        assert_eq!(names(&missing(&TEST_PACKAGES, has)), ["espeak-ng"]);
    }

    #[test]
    fn root_runs_apt_get_itself() {
        let [update, install] = apt_get_lines(&["ffmpeg", "espeak-ng"], true);
        assert_eq!(
            update,
            [
                "env",
                "DEBIAN_FRONTEND=noninteractive",
                "apt-get",
                "update",
                "-qq"
            ]
        );
        assert_eq!(
            install,
            [
                "env",
                "DEBIAN_FRONTEND=noninteractive",
                "apt-get",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "ffmpeg",
                "espeak-ng"
            ]
        );
    }

    #[test]
    fn anyone_else_goes_through_sudo() {
        for line in apt_get_lines(&["prometheus"], false) {
            assert_eq!(line[..3], ["sudo", "env", "DEBIAN_FRONTEND=noninteractive"]);
        }
    }
}
