//! RBAC refusals in the logs of Drover's own processes. Every process in a
//! test runs as its own ServiceAccount, so a missing permission shows up as a
//! refusal somewhere in a log, often only at debug level and often retried
//! away; the tests treat any one of them as a failure of the test that caused
//! it, as a cluster with least-privilege RBAC would.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Whether a log line reports a refusal by the apiserver's authorizer (RBAC):
/// its message reads "<resource> is forbidden: User <name> cannot <verb> ...".
/// An admission policy's denial ("is forbidden: ValidatingAdmissionPolicy
/// ...") is a test's own doing, not a missing permission.
pub fn is_refusal(line: &str) -> bool {
    line.contains("is forbidden: User")
}

/// A log read from a point on: only what was written after it counts.
#[derive(Clone, Debug)]
pub struct LogSince {
    path: PathBuf,
    offset: u64,
}

impl LogSince {
    /// `path` from its current end.
    pub fn now(path: &Path) -> Self {
        let offset = std::fs::metadata(path).map_or(0, |m| m.len());
        Self {
            path: path.to_path_buf(),
            offset,
        }
    }

    /// `path` from its first line.
    pub fn whole(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            offset: 0,
        }
    }

    /// The refusals written since the offset, each after the log's path.
    pub fn refusals(&self) -> Vec<String> {
        self.refused_lines()
            .into_iter()
            .map(|line| format!("{}: {line}", self.path.display()))
            .collect()
    }

    /// The lines written since the offset that report a refusal.
    pub fn refused_lines(&self) -> Vec<String> {
        let mut text = String::new();
        if let Ok(mut file) = File::open(&self.path)
            && file.seek(SeekFrom::Start(self.offset)).is_ok()
        {
            // A log cut mid-line by a kill still reads as text.
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text.lines()
            .filter(|line| is_refusal(line))
            .map(str::to_owned)
            .collect()
    }
}

/// Every container log of the pods of `namespace` under `pods_dir` (a
/// process kubelet's `pods/`, or a real kubelet's `/var/log/pods`, where each
/// container has a directory of its own), whole: a pod's logs are its own
/// from their first line.
pub fn pod_logs(pods_dir: &Path, namespace: &str) -> Vec<LogSince> {
    let prefix = format!("{namespace}_");
    let Ok(entries) = std::fs::read_dir(pods_dir) else {
        return Vec::new();
    };
    let mut logs = Vec::new();
    for pod in entries.flatten() {
        if pod.file_name().to_string_lossy().starts_with(&prefix) {
            collect_logs(&pod.path(), 2, &mut logs);
        }
    }
    logs
}

fn collect_logs(dir: &Path, depth: usize, into: &mut Vec<LogSince>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && depth > 0 {
            collect_logs(&path, depth - 1, into);
        } else if path.extension().is_some_and(|e| e == "log") {
            into.push(LogSince::whole(&path));
        }
    }
}

/// Panics with every refusal in `logs`, unless there is none.
pub fn assert_none(what: &str, logs: &[LogSince]) {
    let found: Vec<String> = logs.iter().flat_map(LogSince::refusals).collect();
    assert!(
        found.is_empty(),
        "{what}: the apiserver refused Drover's processes {} time(s); a refusal at any log level fails the test:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kube_error_in_a_json_log_line_is_a_refusal() {
        let line = r#"{"level":"DEBUG","fields":{"error":"ApiError: secrets \"key\" is forbidden: User \"system:serviceaccount:a:b\" cannot get resource \"secrets\" in API group \"\" in the namespace \"a\": Forbidden (ErrorResponse { status: \"Failure\", message: \"...\", reason: \"Forbidden\", code: 403 })"}}"#;
        assert!(is_refusal(line));
    }

    #[test]
    fn other_errors_and_words_are_not() {
        assert!(!is_refusal(
            r#"{"fields":{"error":"ApiError: jobs.drover.dev \"a\" not found: NotFound (ErrorResponse { reason: \"NotFound\", code: 404 })"}}"#
        ));
        assert!(!is_refusal(
            r#"{"fields":{"message":"a Job input may not name a forbidden URL"}}"#
        ));
        assert!(!is_refusal(
            r#"{"fields":{"error":"leases \"drover-operator\" is forbidden: ValidatingAdmissionPolicy 'refuse' with binding 'refuse' denied request"}}"#
        ));
    }

    #[test]
    fn only_what_was_written_after_the_offset_counts() {
        let path = std::env::temp_dir().join(format!("drover-refusals-{}.log", std::process::id()));
        std::fs::write(&path, "x is forbidden: User \"a\"\n").expect("write");
        let since = LogSince::now(&path);
        assert!(since.refusals().is_empty());
        assert_eq!(LogSince::whole(&path).refusals().len(), 1);
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("y is forbidden: User \"b\"\n");
        std::fs::write(&path, text).expect("write");
        assert_eq!(since.refusals().len(), 1);
        let _ = std::fs::remove_file(&path);
    }
}
