//! `logs`: which lines of a worker pod's JSON log belong to one Job and
//! attempt, and how such a line reads for a person. A worker logs each
//! line as one JSON object (tracing's JSON format): a Job's lines name it in
//! their own fields (`job`, `namespace`, `attempt`) or in the `job` span
//! they were logged in (`span` and `spans`).

use serde_json::Value;

/// The Job and attempt whose lines are wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted<'a> {
    pub job: &'a str,
    pub namespace: &'a str,
    /// `None`: every attempt.
    pub attempt: Option<i32>,
}

/// The objects of a log line that may carry a Job's fields.
fn scopes(line: &Value) -> Vec<&Value> {
    let mut scopes: Vec<&Value> = ["fields", "span"]
        .iter()
        .filter_map(|key| line.get(*key))
        .collect();
    if let Some(Value::Array(spans)) = line.get("spans") {
        scopes.extend(spans.iter());
    }
    scopes
}

/// Whether `line` was logged for `wanted`: it names the Job, no other
/// namespace, and (when one is wanted) no other attempt.
pub fn belongs(line: &str, wanted: &Wanted) -> bool {
    let Ok(line) = serde_json::from_str::<Value>(line) else {
        return false;
    };
    let scopes = scopes(&line);
    let field = |key: &'static str| scopes.iter().filter_map(move |s| s.get(key));
    let names_job = field("job").any(|j| j.as_str() == Some(wanted.job));
    let other_namespace = field("namespace").any(|n| n.as_str() != Some(wanted.namespace));
    let other_attempt = wanted
        .attempt
        .is_some_and(|want| field("attempt").any(|a| a.as_i64() != Some(i64::from(want))));
    names_job && !other_namespace && !other_attempt
}

/// `08:00:01.234 INFO  step_started  step started  step=fetch`.
pub fn pretty(pod: &str, line: &str) -> String {
    let Ok(value) = serde_json::from_str::<Value>(line) else {
        return format!("{pod}  {line}");
    };
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let timestamp = text(value.get("timestamp"));
    let time = timestamp
        .split_once('T')
        .map_or(timestamp.as_str(), |(_, t)| t.trim_end_matches('Z'));
    let time: String = time.chars().take(12).collect();
    let fields = value.get("fields");
    let mut out = format!("{pod}  {time}  {:<5}", text(value.get("level")),);
    if let Some(event) = fields.and_then(|f| f.get("event")) {
        out.push_str("  ");
        out.push_str(&text(Some(event)));
    }
    out.push_str("  ");
    out.push_str(&text(fields.and_then(|f| f.get("message"))));
    if let Some(Value::Object(map)) = fields {
        for (key, v) in map {
            if !["message", "event", "job", "namespace", "attempt"].contains(&key.as_str()) {
                out.push_str(&format!("  {key}={}", text(Some(v))));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const WANT: Wanted = Wanted {
        job: "mix",
        namespace: "ns",
        attempt: Some(2),
    };

    #[test]
    fn a_line_naming_the_job_in_its_fields_belongs() {
        let line = r#"{"timestamp":"t","level":"INFO","fields":{"message":"claimed","event":"job_started","job":"mix","namespace":"ns","attempt":2,"pod":"p"}}"#;
        assert!(belongs(line, &WANT));
    }

    #[test]
    fn a_line_inside_the_jobs_span_belongs() {
        let line = r#"{"level":"INFO","fields":{"message":"step started","event":"step_started","step":"fetch"},"span":{"job":"mix","namespace":"ns","attempt":2,"name":"job"},"spans":[{"job":"mix","namespace":"ns","attempt":2,"name":"job"}]}"#;
        assert!(belongs(line, &WANT));
    }

    #[test]
    fn other_jobs_attempts_namespaces_and_lines_of_no_job_do_not() {
        let other_job =
            r#"{"fields":{"message":"claimed","job":"mix-2","namespace":"ns","attempt":2}}"#;
        let other_attempt =
            r#"{"fields":{"message":"step"},"span":{"job":"mix","namespace":"ns","attempt":1}}"#;
        let other_namespace =
            r#"{"fields":{"message":"claimed","job":"mix","namespace":"team-b","attempt":2}}"#;
        let no_job = r#"{"fields":{"message":"pulling","subscription":"s"}}"#;
        for line in [
            other_job,
            other_attempt,
            other_namespace,
            no_job,
            "not json",
        ] {
            assert!(!belongs(line, &WANT), "{line}");
        }
        let every = Wanted {
            attempt: None,
            ..WANT
        };
        assert!(belongs(other_attempt, &every));
    }

    #[test]
    fn a_pretty_line_shows_time_level_event_message_and_other_fields() {
        let line = r#"{"timestamp":"2027-01-15T08:00:01.234567Z","level":"INFO","fields":{"message":"claimed","event":"job_started","job":"mix","pod":"w-1"}}"#;
        assert_eq!(
            pretty("w-1", line),
            "w-1  08:00:01.234  INFO   job_started  claimed  pod=w-1"
        );
    }
}
