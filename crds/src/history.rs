//! The wire format of the operator's read-only archive endpoint, shared by
//! the operator that serves it and `kubectl drover history` that reads it:
//! which finished Jobs to list (a query string) and the page that answers.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::job::{Job, JobPhase};

/// Path of the endpoint that lists archived Jobs.
pub const JOBS_PATH: &str = "/archive/v1/jobs";
/// Name of the operator's archive port (in its Pod and Service).
pub const PORT_NAME: &str = "archive";
/// Jobs per page when the query names no limit.
pub const DEFAULT_LIMIT: u32 = 100;
/// The most Jobs one page holds.
pub const MAX_LIMIT: u32 = 1000;

/// Which archived Jobs to list; every filter is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only this namespace (none: every namespace).
    pub namespace: Option<String>,
    /// Only the Jobs of this PipelineWorker.
    pub worker: Option<String>,
    /// Only Jobs that finished at most this long ago.
    pub since: Option<Duration>,
    /// Only Jobs that ended in this phase (a terminal one).
    pub phase: Option<JobPhase>,
    /// At most this many Jobs, newest first.
    pub limit: Option<u32>,
}

/// What is wrong with a query string.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("unknown query parameter {0:?}")]
    UnknownParameter(String),
    #[error("{name} must be a whole number, not {value:?}")]
    NotANumber { name: &'static str, value: String },
    #[error("phase {0:?} is not a phase a finished Job ends in (Succeeded, Failed, Cancelled)")]
    NotTerminal(String),
    #[error("limit must be between 1 and {MAX_LIMIT}, not {0}")]
    Limit(u32),
}

impl HistoryQuery {
    /// The query string (without `?`) that asks for this query.
    pub fn to_query_string(&self) -> String {
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        if let Some(namespace) = &self.namespace {
            pairs.append_pair("namespace", namespace);
        }
        if let Some(worker) = &self.worker {
            pairs.append_pair("worker", worker);
        }
        if let Some(since) = self.since {
            pairs.append_pair("sinceSeconds", &since.as_secs().to_string());
        }
        if let Some(phase) = self.phase {
            pairs.append_pair("phase", &phase_name(phase));
        }
        if let Some(limit) = self.limit {
            pairs.append_pair("limit", &limit.to_string());
        }
        pairs.finish()
    }

    /// Parses a query string (without `?`); an empty value means no filter.
    pub fn from_query_string(query: &str) -> Result<Self, QueryError> {
        let mut parsed = Self::default();
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if value.is_empty() {
                continue;
            }
            let number = |name: &'static str| {
                value.parse::<u64>().map_err(|_| QueryError::NotANumber {
                    name,
                    value: value.to_string(),
                })
            };
            match name.as_ref() {
                "namespace" => parsed.namespace = Some(value.to_string()),
                "worker" => parsed.worker = Some(value.to_string()),
                "sinceSeconds" => parsed.since = Some(Duration::from_secs(number("sinceSeconds")?)),
                "phase" => parsed.phase = Some(terminal_phase(&value)?),
                "limit" => {
                    let limit = u32::try_from(number("limit")?).unwrap_or(u32::MAX);
                    if limit == 0 || limit > MAX_LIMIT {
                        return Err(QueryError::Limit(limit));
                    }
                    parsed.limit = Some(limit);
                }
                other => return Err(QueryError::UnknownParameter(other.to_owned())),
            }
        }
        Ok(parsed)
    }

    /// The page size this query asks for.
    pub fn effective_limit(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
    }
}

/// A terminal phase by its name, as `--phase` and the query take it.
pub fn terminal_phase(name: &str) -> Result<JobPhase, QueryError> {
    serde_json::from_value::<JobPhase>(serde_json::Value::String(name.to_owned()))
        .ok()
        .filter(|phase| phase.is_terminal())
        .ok_or_else(|| QueryError::NotTerminal(name.to_owned()))
}

/// The phase as the API spells it.
pub fn phase_name(phase: JobPhase) -> String {
    match serde_json::to_value(phase) {
        Ok(serde_json::Value::String(name)) => name,
        // A unit variant always serializes as its name.
        _ => format!("{phase:?}"),
    }
}

/// One page of archived Jobs, newest first.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPage {
    /// Each Job as the apiserver last served it before its TTL deleted it.
    pub jobs: Vec<Job>,
    /// More Jobs match than the page holds.
    pub truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_survives_its_query_string() {
        let query = HistoryQuery {
            namespace: Some("team a".into()),
            worker: Some("sleeper".into()),
            since: Some(Duration::from_secs(86_400)),
            phase: Some(JobPhase::Failed),
            limit: Some(20),
        };
        let text = query.to_query_string();
        assert_eq!(
            text,
            "namespace=team+a&worker=sleeper&sinceSeconds=86400&phase=Failed&limit=20"
        );
        assert_eq!(HistoryQuery::from_query_string(&text), Ok(query));
    }

    #[test]
    fn an_empty_query_lists_everything_a_page_holds() {
        let query = HistoryQuery::from_query_string("").unwrap();
        assert_eq!(query, HistoryQuery::default());
        assert_eq!(query.effective_limit(), DEFAULT_LIMIT);
        assert_eq!(query.to_query_string(), "");
    }

    #[test]
    fn only_a_finished_phase_is_asked_for() {
        assert_eq!(
            HistoryQuery::from_query_string("phase=Running"),
            Err(QueryError::NotTerminal("Running".into()))
        );
        assert_eq!(
            HistoryQuery::from_query_string("phase=failed"),
            Err(QueryError::NotTerminal("failed".into()))
        );
        assert_eq!(terminal_phase("Cancelled"), Ok(JobPhase::Cancelled));
    }

    #[test]
    fn bad_numbers_limits_and_names_are_refused() {
        assert!(matches!(
            HistoryQuery::from_query_string("sinceSeconds=1d"),
            Err(QueryError::NotANumber { .. })
        ));
        assert_eq!(
            HistoryQuery::from_query_string("limit=0"),
            Err(QueryError::Limit(0))
        );
        assert_eq!(
            HistoryQuery::from_query_string("limit=5000"),
            Err(QueryError::Limit(5000))
        );
        assert_eq!(
            HistoryQuery::from_query_string("drop=table"),
            Err(QueryError::UnknownParameter("drop".into()))
        );
    }
}
