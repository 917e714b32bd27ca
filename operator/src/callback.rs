//! The callback receiver: an HTTP endpoint, on its own port, where outside
//! providers report that a Waiting Job's request is done. A valid callback
//! is recorded on the Job (`status.external`), and the Job controller then
//! publishes the attempt again so a worker finishes the step.
//!
//! A forged callback (wrong token) gets 401 and changes nothing. A
//! duplicate, a late one (the Job finished, was deleted or recreated) or one
//! for an older request gets 2xx and changes nothing, so the provider stops
//! retrying; a settled Job never gets a 5xx. Only a Job that is not Waiting
//! *yet* (its worker has not let go of it) gets 503, and the provider
//! retries. The server runs only while this replica leads; while the
//! operator is down the provider's retries find the port closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use drover_crds::job_transition::JobConditionUpdate;
use drover_crds::pipeline_worker::RenderSpec;
use drover_crds::{Job, JobPhase, Pipeline, PipelineWorker};
use drover_runtime::job_status;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::callback_token::{CALLBACK_PATH, CallbackUrls};
use crate::config::OperatorConfig;
use crate::leader::LeaderGate;

/// Largest callback body read, in bytes.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Conditioned writes that lose a race are decided again this often.
const WRITE_TRIES: usize = 5;
/// What a 503 asks the provider to wait before it retries.
const RETRY_AFTER_SECONDS: u64 = 5;

/// The callback URL of `job` when the operator serves callbacks and its
/// fleet is a render fleet that wants them.
pub fn url_for(config: &OperatorConfig, fleet: &PipelineWorker, job: &Job) -> Option<String> {
    let urls = config.callbacks.as_ref()?;
    let render = fleet.spec.render.as_ref()?;
    if fleet.spec.pipeline != Pipeline::Render || !render.callbacks {
        return None;
    }
    Some(urls.url_for(
        &job.namespace().unwrap_or_default(),
        &job.name_any(),
        &job.uid().unwrap_or_default(),
    ))
}

/// What a callback says, read with the fleet's JSON pointers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub request_id: Option<String>,
    pub status: Option<String>,
    pub output_url: Option<String>,
}

impl Report {
    /// Reads `body` (JSON, or nothing) with `render`'s pointers.
    pub fn read(body: &[u8], render: Option<&RenderSpec>) -> Self {
        let Some(render) = render else {
            return Self::default();
        };
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            return Self::default();
        };
        let text = |pointer: &str| value.pointer(pointer).and_then(scalar_text);
        Self {
            request_id: text(&render.request_id_pointer),
            status: text(&render.status_pointer),
            output_url: text(&render.output_url_pointer),
        }
    }

    /// Whether the provider says the request is over (done or failed).
    fn is_final(&self, render: Option<&RenderSpec>) -> bool {
        let (Some(status), Some(render)) = (&self.status, render) else {
            // A callback that says nothing is a wake-up: the worker asks.
            return true;
        };
        render
            .succeeded_values
            .iter()
            .chain(&render.failed_values)
            .any(|v| v == status)
    }
}

/// A string or a number as text.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// What the receiver does with a callback whose token is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Record the callback on the Waiting Job (202).
    Record,
    /// Record only the provider's status word: it is not over yet (202).
    NoteStatus,
    /// Nothing to change; answer 200 with why, so the provider stops.
    Settled(&'static str),
    /// The Job does not wait yet; answer 503 so the provider retries.
    NotYet,
}

/// Decides from the Job as it is now (`None`: it is gone) and the uid the
/// URL was signed for.
pub fn decide(
    job: Option<&Job>,
    uid: &str,
    report: &Report,
    render: Option<&RenderSpec>,
) -> Verdict {
    let Some(job) = job else {
        return Verdict::Settled("the Job is gone");
    };
    if job.uid().as_deref() != Some(uid) {
        return Verdict::Settled("the Job was deleted and created again");
    }
    let status = job.status.clone().unwrap_or_default();
    if status.phase.is_terminal() {
        return Verdict::Settled("the Job has finished");
    }
    let external = status.external.as_ref();
    let current = external.filter(|e| e.attempt == status.attempt);
    if let (Some(sent), Some(external)) = (&report.request_id, current)
        && *sent != external.request_id
    {
        return Verdict::Settled("the callback is for another request");
    }
    match status.phase {
        JobPhase::Waiting => match current {
            Some(e) if e.callback_at.is_some() => Verdict::Settled("duplicate: already received"),
            _ if report.is_final(render) => Verdict::Record,
            _ => Verdict::NoteStatus,
        },
        // Resumed by a callback already: this one is its duplicate.
        JobPhase::Queued | JobPhase::Running
            if current.is_some_and(|e| e.callback_at.is_some()) =>
        {
            Verdict::Settled("duplicate: already received")
        }
        JobPhase::Queued | JobPhase::Running => Verdict::NotYet,
        // The attempt that made the request failed, or none was made yet.
        JobPhase::Pending | JobPhase::Backoff => Verdict::Settled("no request is waiting"),
        JobPhase::Succeeded | JobPhase::Failed | JobPhase::Cancelled => {
            Verdict::Settled("the Job has finished")
        }
    }
}

/// What the receiver needs.
#[derive(Clone)]
pub struct Receiver {
    pub client: Client,
    pub urls: CallbackUrls,
    pub gate: LeaderGate,
}

/// Serves callbacks on `addr` until the listener fails.
pub async fn serve(addr: SocketAddr, receiver: Receiver) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving provider callbacks");
    axum::serve(listener, router(receiver)).await
}

/// The callback routes.
pub fn router(receiver: Receiver) -> Router {
    Router::new()
        .route(
            &format!("{CALLBACK_PATH}/{{namespace}}/{{name}}/{{uid}}/{{token}}"),
            post(receive),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::new(receiver))
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    Path((namespace, name, uid, token)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Response {
    if !receiver.urls.verify(&uid, &token) {
        tracing::warn!(event = "callback_refused", job = %name, %namespace, "a callback with a bad token");
        return (StatusCode::UNAUTHORIZED, "bad token\n").into_response();
    }
    if !receiver.gate.leads() {
        return not_yet("this operator replica is not leading");
    }
    let jobs: Api<Job> = Api::namespaced(receiver.client.clone(), &namespace);
    let fleets: Api<PipelineWorker> = Api::namespaced(receiver.client.clone(), &namespace);
    for _ in 0..WRITE_TRIES {
        let job = match jobs.get_opt(&name).await {
            Ok(job) => job,
            Err(error) => {
                tracing::warn!(job = %name, %error, "cannot read the Job of a callback");
                return not_yet("cannot read the Job now");
            }
        };
        let fleet = match &job {
            Some(job) => match fleets.get_opt(&job.spec.worker).await {
                Ok(fleet) => fleet,
                Err(error) => {
                    tracing::warn!(job = %name, %error, "cannot read the fleet of a callback");
                    return not_yet("cannot read the Job's fleet now");
                }
            },
            None => None,
        };
        let render = fleet.as_ref().and_then(|f| f.spec.render.as_ref());
        let report = Report::read(&body, render);
        let verdict = decide(job.as_ref(), &uid, &report, render);
        let (job, update) = match (&verdict, job) {
            (Verdict::Settled(why), _) => {
                tracing::info!(event = "callback_settled", job = %name, %namespace, why, "callback changes nothing");
                return (StatusCode::OK, format!("{why}\n")).into_response();
            }
            (Verdict::NotYet, _) => return not_yet("the Job is not waiting yet"),
            (_, None) => return (StatusCode::OK, "the Job is gone\n").into_response(),
            (Verdict::Record, Some(job)) => {
                let update = JobConditionUpdate::callback_received(
                    job.phase(),
                    report.status.clone(),
                    report.output_url.clone(),
                    Timestamp::now(),
                );
                (job, update)
            }
            (Verdict::NoteStatus, Some(job)) => {
                let mut update = JobConditionUpdate::callback_received(
                    job.phase(),
                    report.status.clone(),
                    report.output_url.clone(),
                    Timestamp::now(),
                );
                if let Ok(update) = &mut update
                    && let Some(Some(external)) = &mut update.status.external
                {
                    // Not over: shown, but it does not resume the Job.
                    external.callback_at = None;
                }
                (job, update)
            }
        };
        let Ok(update) = update else {
            continue;
        };
        if !receiver.gate.leads() {
            return not_yet("this operator replica is not leading");
        }
        let version = job.resource_version().unwrap_or_default();
        match job_status::write_conditions(&jobs, &name, &version, &update).await {
            Ok(_) => {
                tracing::info!(event = "callback_received", job = %name, %namespace, status = ?report.status, resumes = (verdict == Verdict::Record), "callback recorded");
                return (StatusCode::ACCEPTED, "recorded\n").into_response();
            }
            Err(error) if job_status::is_conflict(&error) => continue,
            Err(error) => {
                tracing::warn!(job = %name, %error, "cannot record a callback");
                return not_yet("cannot record the callback now");
            }
        }
    }
    not_yet("the Job kept changing; try again")
}

/// 503 with `Retry-After`: the provider tries again later.
fn not_yet(why: &str) -> Response {
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(Duration::from_secs(RETRY_AFTER_SECONDS).as_secs()),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_crds::{ExternalWait, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn render() -> RenderSpec {
        serde_json::from_value(json!({
            "submitUrl": "https://p/jobs", "statusUrl": "https://p/jobs/{requestId}",
            "outputPrefix": "s3://renders/", "statusPointer": "/state",
            "succeededValues": ["done"], "failedValues": ["error"],
        }))
        .unwrap()
    }

    fn job(phase: JobPhase, called_back: bool) -> Job {
        let mut job = Job::new(
            "j",
            serde_json::from_value(json!({"worker": "w", "input": {"request": {}}})).unwrap(),
        );
        job.metadata.uid = Some("uid-1".into());
        job.status = Some(JobStatus {
            phase,
            attempt: 1,
            external: Some(ExternalWait {
                step: "render".into(),
                attempt: 1,
                request_id: "r-1".into(),
                callback_at: called_back.then_some(Time(Timestamp::UNIX_EPOCH)),
                ..Default::default()
            }),
            ..JobStatus::default()
        });
        job
    }

    fn report(id: &str, state: &str) -> Report {
        Report::read(
            json!({"id": id, "state": state}).to_string().as_bytes(),
            Some(&render()),
        )
    }

    fn verdict(job: Option<&Job>, report: &Report) -> Verdict {
        decide(job, "uid-1", report, Some(&render()))
    }

    #[test]
    fn a_final_callback_for_the_waiting_request_is_recorded() {
        let done = report("r-1", "done");
        assert_eq!(done.status.as_deref(), Some("done"));
        assert_eq!(
            verdict(Some(&job(JobPhase::Waiting, false)), &done),
            Verdict::Record
        );
        assert_eq!(
            verdict(
                Some(&job(JobPhase::Waiting, false)),
                &report("r-1", "error")
            ),
            Verdict::Record
        );
    }

    #[test]
    fn a_progress_callback_only_notes_the_status() {
        assert_eq!(
            verdict(
                Some(&job(JobPhase::Waiting, false)),
                &report("r-1", "rendering")
            ),
            Verdict::NoteStatus
        );
    }

    #[test]
    fn duplicates_late_and_foreign_callbacks_are_settled_without_a_change() {
        let done = report("r-1", "done");
        for (job, why) in [
            (
                Some(job(JobPhase::Waiting, true)),
                "duplicate: already received",
            ),
            (
                Some(job(JobPhase::Queued, true)),
                "duplicate: already received",
            ),
            (
                Some(job(JobPhase::Running, true)),
                "duplicate: already received",
            ),
            (Some(job(JobPhase::Succeeded, true)), "the Job has finished"),
            (Some(job(JobPhase::Failed, false)), "the Job has finished"),
            (Some(job(JobPhase::Backoff, false)), "no request is waiting"),
            (None, "the Job is gone"),
        ] {
            assert_eq!(
                verdict(job.as_ref(), &done),
                Verdict::Settled(why),
                "{job:?}"
            );
        }
        assert_eq!(
            verdict(Some(&job(JobPhase::Waiting, false)), &report("r-0", "done")),
            Verdict::Settled("the callback is for another request")
        );
        assert_eq!(
            decide(
                Some(&job(JobPhase::Waiting, false)),
                "uid-0",
                &done,
                Some(&render())
            ),
            Verdict::Settled("the Job was deleted and created again")
        );
    }

    #[test]
    fn a_callback_before_the_worker_let_go_is_retried_later() {
        let done = report("r-1", "done");
        assert_eq!(
            verdict(Some(&job(JobPhase::Running, false)), &done),
            Verdict::NotYet
        );
        assert_eq!(
            verdict(Some(&job(JobPhase::Queued, false)), &done),
            Verdict::NotYet
        );
    }

    #[test]
    fn only_a_render_fleet_that_wants_callbacks_gets_a_url_and_only_when_they_are_served() {
        let mut fleet = PipelineWorker::new(
            "w",
            serde_json::from_value(json!({
                "pipeline": "render", "queue": {"topic": "t", "subscription": "s"},
            }))
            .unwrap(),
        );
        fleet.spec.render = Some(render());
        let mut job = job(JobPhase::Queued, false);
        job.metadata.namespace = Some("ns".into());
        let mut config = OperatorConfig::default();
        assert_eq!(url_for(&config, &fleet, &job), None, "no callbacks served");
        config.callbacks = Some(CallbackUrls::new("https://hooks", b"0123456789abcdef").unwrap());
        let url = url_for(&config, &fleet, &job).expect("a URL");
        assert!(
            url.starts_with("https://hooks/v1/callbacks/ns/j/uid-1/"),
            "{url}"
        );
        fleet.spec.render.as_mut().unwrap().callbacks = false;
        assert_eq!(url_for(&config, &fleet, &job), None, "the fleet wants none");
        fleet.spec.render.as_mut().unwrap().callbacks = true;
        fleet.spec.pipeline = Pipeline::Sleep;
        assert_eq!(url_for(&config, &fleet, &job), None, "not a render fleet");
    }

    #[test]
    fn a_body_that_is_not_json_is_a_wake_up() {
        let report = Report::read(b"ping", Some(&render()));
        assert_eq!(report, Report::default());
        assert_eq!(
            verdict(Some(&job(JobPhase::Waiting, false)), &report),
            Verdict::Record
        );
    }
}
