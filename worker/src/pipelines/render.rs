//! The render pipeline: a generic client of an outside provider's HTTP API
//! that takes minutes (video generation, say). `submit` POSTs the Job's
//! request; `render` waits for the provider without holding a worker (the
//! Job goes Waiting, and a worker picks it up again when the provider calls
//! back or a poll is due); `store` copies the provider's output into the
//! fleet's storage with the assembly pipeline's storage code.
//!
//! The fleet says where the provider is and how to read its JSON (JSON
//! pointers for the request id, the status and the output URL). Every
//! request goes through the outbound guard, and the output URL a provider
//! names must be http(s) at an address the fleet allows.

use std::time::Duration;

use drover_crds::input::RenderInput;
use drover_crds::pipeline_worker::RenderSpec;
use drover_crds::storage_allowlist::{self, Access};
use drover_crds::{ExternalWait, FailureReason, redact};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::assembly::storage::Location;
use super::{Context, Done, Failure};
use crate::egress;

/// The steps, in order.
pub const STEPS: [&str; 3] = [SUBMIT, RENDER, STORE];
const SUBMIT: &str = "submit";
const RENDER: &str = "render";
const STORE: &str = "store";
/// The worker env var the fleet's `render.authSecretRef` arrives in.
pub const TOKEN_ENV: &str = "DROVER_RENDER_TOKEN";
/// Longest provider answer read.
const MAX_ANSWER_BYTES: u64 = 256 * 1024;
/// One request to the provider gives up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What the provider said of a request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Answer {
    pub request_id: Option<String>,
    pub status: Option<String>,
    pub output_url: Option<String>,
}

impl Answer {
    /// Reads `body` with the fleet's pointers; ids may be strings or numbers.
    pub fn read(body: &Value, render: &RenderSpec) -> Self {
        let text = |pointer: &str| {
            body.pointer(pointer).and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
        };
        Self {
            request_id: text(&render.request_id_pointer),
            status: text(&render.status_pointer),
            output_url: text(&render.output_url_pointer),
        }
    }
}

/// Where a request stands, by the fleet's status words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    Succeeded,
    Failed,
    Working,
}

/// Judges `status` by the fleet's status words; an unknown word is work
/// still going on (the timeout bounds it).
pub fn standing(status: Option<&str>, render: &RenderSpec) -> Standing {
    match status {
        Some(s) if render.succeeded_values.iter().any(|v| v == s) => Standing::Succeeded,
        Some(s) if render.failed_values.iter().any(|v| v == s) => Standing::Failed,
        _ => Standing::Working,
    }
}

/// Runs the attempt from where it stands: a submit, or a resume after a wait.
pub async fn run(input: &Value, ctx: &Context<'_>) -> Result<Done, Failure> {
    let render = ctx.fleet.render.as_ref().ok_or_else(|| Failure {
        reason: FailureReason::RenderNotConfigured,
        message: "the fleet has no render settings (spec.render)".into(),
        retryable: false,
    })?;
    let request: RenderInput = serde_json::from_value(input.clone()).map_err(|e| Failure {
        reason: FailureReason::InvalidInput,
        message: format!("the input is not render input: {e}"),
        retryable: false,
    })?;
    let provider = Provider::new(render, ctx)?;
    let now = Time(Timestamp::now());
    let fresh = ctx.external.resume.is_none();
    let (answer, request_id, submitted_at, polls) = match &ctx.external.resume {
        None => {
            let answer = ctx
                .progress
                .step(SUBMIT, provider.submit(&request, ctx))
                .await?;
            let id = answer.request_id.clone().ok_or_else(|| Failure {
                reason: FailureReason::ProviderFailed,
                message: format!(
                    "the provider's answer to the submit has no request id at {}",
                    render.request_id_pointer
                ),
                retryable: false,
            })?;
            tracing::info!(event = "provider_submitted", request_id = %id, status = ?answer.status, "submitted to the provider");
            (answer, id, Some(now.clone()), 0)
        }
        Some(wait) => {
            let answer = ctx.progress.step(RENDER, provider.check(wait)).await?;
            let polled = i32::from(answer.1);
            let polls = wait.polls.saturating_add(polled);
            (
                answer.0,
                wait.request_id.clone(),
                wait.submitted_at.clone(),
                polls,
            )
        }
    };
    let status = answer.status.as_deref();
    match standing(status, render) {
        Standing::Working => {
            let note = format!(
                "request {request_id} at the provider: {}",
                status.unwrap_or("submitted")
            );
            ctx.progress.wait(RENDER, &note);
            Ok(Done::Wait(ExternalWait {
                step: RENDER.into(),
                attempt: ctx.attempt.attempt,
                request_id,
                submitted_at,
                waiting_since: Some(now),
                polls,
                provider_status: answer.status.clone(),
                output_url: None,
                callback_at: None,
            }))
        }
        Standing::Failed => Err(Failure {
            reason: FailureReason::ProviderFailed,
            message: format!(
                "the provider failed request {request_id}: {}",
                status.unwrap_or_default()
            ),
            retryable: false,
        }),
        Standing::Succeeded => {
            let output = answer.output_url.clone().ok_or_else(|| Failure {
                reason: FailureReason::ProviderFailed,
                message: format!(
                    "request {request_id} succeeded but names no output at {}",
                    render.output_url_pointer
                ),
                retryable: false,
            })?;
            if fresh {
                // A provider that finished at once: the render step is over too.
                ctx.progress.step(RENDER, async { Ok(()) }).await?;
            }
            let stored = ctx.progress.step(STORE, store(&output, ctx)).await?;
            tracing::info!(event = "provider_output_stored", request_id = %request_id, output = %stored, "stored the provider's output");
            Ok(Done::Finished(json!({
                "outputUrl": stored,
                "requestId": request_id,
                "providerStatus": status,
                "sourceUrl": redact::url(&output),
                "polls": polls,
            })))
        }
    }
}

/// The provider's API as the fleet describes it.
struct Provider<'a> {
    render: &'a RenderSpec,
    client: reqwest::Client,
    policy: drover_crds::egress::AddressPolicy,
    token: Option<String>,
}

impl<'a> Provider<'a> {
    fn new(render: &'a RenderSpec, ctx: &Context<'_>) -> Result<Self, Failure> {
        let policy = egress::policy(ctx.fleet);
        let client =
            egress::client(&policy).map_err(|e| unavailable(format!("no HTTP client: {e}")))?;
        Ok(Self {
            render,
            client,
            policy,
            token: std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()),
        })
    }

    /// POSTs the request (with the callback URL, when there is one). The
    /// idempotency key lets a provider that honours it ignore the repeat of
    /// a submit whose answer was lost.
    async fn submit(&self, input: &RenderInput, ctx: &Context<'_>) -> Result<Answer, Failure> {
        let mut body = input.request.clone();
        if let Some(url) = &ctx.external.callback_url {
            body.insert("callbackUrl".into(), Value::String(url.clone()));
        }
        let key = format!("{}-{}", ctx.attempt.uid, ctx.attempt.attempt);
        let request = self
            .client
            .post(&self.render.submit_url)
            .header("Idempotency-Key", key)
            .json(&body);
        self.send(&self.render.submit_url, request).await
    }

    /// Asks for the request's status, unless its callback already said it
    /// is over. The flag says whether the status API was asked. A poll that
    /// cannot reach the provider is not a failure: the Job waits on, and the
    /// wait timeout bounds it.
    async fn check(&self, wait: &ExternalWait) -> Result<(Answer, bool), Failure> {
        let from_callback = Answer {
            request_id: Some(wait.request_id.clone()),
            status: wait.provider_status.clone(),
            output_url: wait.output_url.clone(),
        };
        let called_back_over = wait.callback_at.is_some()
            && standing(wait.provider_status.as_deref(), self.render) != Standing::Working;
        if called_back_over
            && (from_callback.output_url.is_some()
                || standing(wait.provider_status.as_deref(), self.render) == Standing::Failed)
        {
            return Ok((from_callback, false));
        }
        let id: String = url::form_urlencoded::byte_serialize(wait.request_id.as_bytes()).collect();
        let url = self.render.status_url.replace("{requestId}", &id);
        match self.send(&url, self.client.get(&url)).await {
            Ok(answer) => Ok((answer, true)),
            Err(failure) if failure.retryable => {
                tracing::warn!(request_id = %wait.request_id, message = %failure.message, "cannot ask the provider now; waiting on");
                let status = Some(format!("unreachable: {}", failure.message));
                Ok((
                    Answer {
                        status,
                        ..from_callback
                    },
                    true,
                ))
            }
            Err(failure) => Err(failure),
        }
    }

    async fn send(&self, url: &str, request: reqwest::RequestBuilder) -> Result<Answer, Failure> {
        egress::check_url(url, &self.policy).map_err(refused)?;
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response =
            request.timeout(REQUEST_TIMEOUT).send().await.map_err(
                |e| match egress::refusal_in(&e) {
                    Some(why) => refused(why),
                    None => unavailable(format!("{}: {e}", redact::url(url))),
                },
            )?;
        let code = response.status();
        let body = egress::read_bounded(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| unavailable(format!("{}: {e}", redact::url(url))))?
            .map_err(|too_large| Failure {
                reason: FailureReason::ProviderFailed,
                message: format!("{}: {too_large}", redact::url(url)),
                retryable: false,
            })?;
        if code.is_server_error() || code.as_u16() == 429 {
            return Err(unavailable(format!("{} answered {code}", redact::url(url))));
        }
        if !code.is_success() {
            return Err(Failure {
                reason: FailureReason::ProviderFailed,
                message: format!(
                    "{} answered {code}: {}",
                    redact::url(url),
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ),
                retryable: false,
            });
        }
        let value: Value = serde_json::from_slice(&body).map_err(|e| Failure {
            reason: FailureReason::ProviderFailed,
            message: format!("{} answered with no JSON: {e}", redact::url(url)),
            retryable: false,
        })?;
        Ok(Answer::read(&value, self.render))
    }
}

/// Copies the provider's output to `<outputPrefix><namespace>/<name>-<uid><ext>`:
/// the same place for every attempt of the Job, so a repeat overwrites.
async fn store(output: &str, ctx: &Context<'_>) -> Result<String, Failure> {
    let render = ctx.fleet.render.as_ref().ok_or_else(|| Failure {
        reason: FailureReason::RenderNotConfigured,
        message: "the fleet has no render settings".into(),
        retryable: false,
    })?;
    if !(output.starts_with("https://") || output.starts_with("http://")) {
        return Err(Failure {
            reason: FailureReason::ProviderFailed,
            message: format!(
                "the provider's output {} is not an http(s) URL",
                redact::url(output)
            ),
            retryable: false,
        });
    }
    let policy = egress::policy(ctx.fleet);
    let storage = ctx.fleet.assembly.as_ref();
    let source = Location::parse(output, storage, &policy)?;
    let destination = destination(render, ctx, source.extension());
    let prefixes = storage
        .map(|s| s.storage.allowed_prefixes.as_slice())
        .unwrap_or_default();
    storage_allowlist::check(&destination, Access::Write, prefixes).map_err(|why| Failure {
        reason: FailureReason::InvalidStorageUrl,
        message: format!("render.outputPrefix gives {destination}, which {why}"),
        retryable: false,
    })?;
    let target = Location::parse(&destination, storage, &policy)?;
    let scratch = std::env::temp_dir().join(format!(
        "drover-render-{}-{}",
        ctx.attempt.uid, ctx.attempt.attempt
    ));
    let fetched = source.fetch(&scratch).await;
    let put = match &fetched {
        Ok(file) => target.put_file(file).await,
        Err(failure) => Err(failure.clone()),
    };
    // The scratch copy goes whatever happened; it may not exist.
    let _ = tokio::fs::remove_file(&scratch).await;
    put?;
    Ok(destination)
}

/// Where a Job's output goes under the fleet's prefix.
fn destination(render: &RenderSpec, ctx: &Context<'_>, extension: Option<&str>) -> String {
    let prefix = render.output_prefix.trim_end_matches('/');
    let extension = extension
        .filter(|e| !e.is_empty() && e.len() <= 16 && e.chars().all(|c| c.is_ascii_alphanumeric()))
        .map(|e| format!(".{e}"))
        .unwrap_or_default();
    format!(
        "{prefix}/{}/{}-{}{extension}",
        ctx.attempt.namespace, ctx.attempt.name, ctx.attempt.uid
    )
}

fn unavailable(message: String) -> Failure {
    Failure {
        reason: FailureReason::ProviderUnavailable,
        message,
        retryable: true,
    }
}

fn refused(why: String) -> Failure {
    Failure {
        reason: FailureReason::AddressRefused,
        message: why,
        retryable: false,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::extract::{Path, State};
    use axum::routing::{get, post};

    use super::*;
    use crate::pipelines::testing;
    use drover_crds::StepPhase;

    /// A scripted provider: submits get id `r-1` and status `queued`;
    /// `/jobs/{id}` answers the status set in `state`; `/out.mp4` serves the output.
    async fn provider(state: Arc<Mutex<&'static str>>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app =
            Router::new()
                .route(
                    "/jobs",
                    post(|body: axum::Json<Value>| async move {
                        axum::Json(json!({"job": {"id": "r-1"}, "state": "queued", "echo": body.0}))
                    }),
                )
                .route(
                    "/jobs/{id}",
                    get(
                        move |State(state): State<Arc<Mutex<&'static str>>>,
                              Path(id): Path<String>| async move {
                            let now = *state.lock().unwrap();
                            let url = format!("http://{addr}/out.mp4");
                            axum::Json(
                                json!({"job": {"id": id}, "state": now, "result": {"url": url}}),
                            )
                        },
                    ),
                )
                .route("/out.mp4", get(|| async { "rendered bytes" }))
                .with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn fleet(addr: SocketAddr, out: &std::path::Path) -> drover_crds::PipelineWorkerSpec {
        let out = format!("file://{}/", out.display());
        testing::fleet(json!({
            "pipeline": "render",
            "egress": {"allowedCidrs": ["127.0.0.1/32"]},
            "assembly": {"storage": {"allowedPrefixes": [out]}},
            "render": {
                "submitUrl": format!("http://{addr}/jobs"),
                "statusUrl": format!("http://{addr}/jobs/{{requestId}}"),
                "requestIdPointer": "/job/id", "statusPointer": "/state",
                "outputUrlPointer": "/result/url",
                "succeededValues": ["done"], "failedValues": ["error"],
                "outputPrefix": out,
            },
        }))
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("drover-render-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn a_submit_waits_and_the_resume_after_the_provider_finished_stores_the_output() {
        let state = Arc::new(Mutex::new("rendering"));
        let addr = provider(state.clone()).await;
        let out = scratch("resume");
        let spec = fleet(addr, &out);
        let input = json!({"request": {"prompt": "a fox"}});

        let ctx = testing::context(&spec, 1);
        let Done::Wait(wait) = run(&input, &ctx).await.unwrap() else {
            panic!("a queued request waits");
        };
        assert_eq!(
            (wait.request_id.as_str(), wait.step.as_str()),
            ("r-1", RENDER)
        );
        assert_eq!(wait.provider_status.as_deref(), Some("queued"));
        let phases: Vec<StepPhase> = ctx.progress.snapshot().iter().map(|s| s.phase).collect();
        assert_eq!(
            phases,
            [StepPhase::Succeeded, StepPhase::Waiting, StepPhase::Pending]
        );

        // A poll while the provider still works: wait again, one poll more.
        let mut ctx = testing::context(&spec, 1);
        ctx.external.resume = Some(wait.clone());
        let Done::Wait(again) = run(&input, &ctx).await.unwrap() else {
            panic!("still rendering");
        };
        assert_eq!(
            (again.polls, again.provider_status.as_deref()),
            (1, Some("rendering"))
        );

        *state.lock().unwrap() = "done";
        let mut ctx = testing::context(&spec, 1);
        ctx.external.resume = Some(again);
        let Done::Finished(result) = run(&input, &ctx).await.unwrap() else {
            panic!("done");
        };
        let stored = format!("file://{}/ns/job-uid-1.mp4", out.display());
        assert_eq!(result["outputUrl"], json!(stored), "{result}");
        assert_eq!(result["polls"], json!(2));
        assert_eq!(
            std::fs::read_to_string(out.join("ns").join("job-uid-1.mp4")).unwrap(),
            "rendered bytes"
        );
        std::fs::remove_dir_all(out).unwrap();
    }

    #[tokio::test]
    async fn a_callback_that_said_done_needs_no_poll_and_a_failed_request_fails_for_good() {
        let state = Arc::new(Mutex::new("error"));
        let addr = provider(state).await;
        let out = scratch("callback");
        let spec = fleet(addr, &out);
        let input = json!({"request": {}});
        let called_back = ExternalWait {
            step: RENDER.into(),
            attempt: 1,
            request_id: "r-1".into(),
            provider_status: Some("done".into()),
            output_url: Some(format!("http://{addr}/out.mp4")),
            callback_at: Some(Time(Timestamp::now())),
            ..ExternalWait::default()
        };
        let mut ctx = testing::context(&spec, 1);
        ctx.external.resume = Some(called_back.clone());
        let Done::Finished(result) = run(&input, &ctx).await.unwrap() else {
            panic!("the callback said done");
        };
        assert_eq!(result["polls"], json!(0), "no poll: {result}");
        assert!(
            result["outputUrl"]
                .as_str()
                .unwrap()
                .ends_with("/ns/job-uid-1.mp4")
        );

        // No callback: the poll finds the provider failed it.
        let mut ctx = testing::context(&spec, 1);
        ctx.external.resume = Some(ExternalWait {
            callback_at: None,
            provider_status: None,
            output_url: None,
            ..called_back
        });
        let failure = run(&input, &ctx).await.unwrap_err();
        assert_eq!(failure.reason, FailureReason::ProviderFailed);
        assert!(!failure.retryable);
        std::fs::remove_dir_all(out).unwrap();
    }

    #[tokio::test]
    async fn a_provider_at_a_loopback_address_the_fleet_does_not_allow_is_refused() {
        let addr = provider(Arc::new(Mutex::new("done"))).await;
        let out = scratch("refused");
        let mut spec = fleet(addr, &out);
        spec.egress = None;
        let failure = run(&json!({"request": {}}), &testing::context(&spec, 1))
            .await
            .unwrap_err();
        assert_eq!(failure.reason, FailureReason::AddressRefused, "{failure:?}");
        std::fs::remove_dir_all(out).unwrap();
    }

    #[test]
    fn status_words_decide_the_standing_and_unknown_words_keep_waiting() {
        let spec = fleet(
            "127.0.0.1:9".parse().unwrap(),
            std::path::Path::new("/tmp/x"),
        );
        let render = spec.render.as_ref().unwrap();
        assert_eq!(standing(Some("done"), render), Standing::Succeeded);
        assert_eq!(standing(Some("error"), render), Standing::Failed);
        assert_eq!(standing(Some("warming up"), render), Standing::Working);
        assert_eq!(standing(None, render), Standing::Working);
    }
}
