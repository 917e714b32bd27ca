//! Chat completions over HTTP against any OpenAI-compatible API (OpenAI,
//! vLLM, Ollama, llama.cpp): typed request and response, the answer's JSON
//! Schema as `response_format` (with a fallback to JSON mode for servers
//! that refuse schemas), a bearer key when one is set, a per-request
//! timeout, and errors sorted into those another try may fix (429, 5xx,
//! timeouts, lost connections), a refused key (401, 403) and the rest.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use drover_crds::egress::AddressPolicy;
use drover_crds::pipeline_worker::ConsensusSpec;
use drover_crds::redact;
use serde::{Deserialize, Serialize};

use super::schema::{JsonSchema, Shape};
use crate::egress;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

#[derive(Debug, Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    temperature: f64,
    response_format: ResponseFormat<'a>,
}

/// How the answer is constrained.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormat<'a> {
    /// Structured outputs: the server decodes only what fits the schema
    /// (OpenAI, vLLM, llama.cpp's server and Ollama offer it).
    JsonSchema { json_schema: NamedSchema<'a> },
    /// JSON mode: any JSON object; the fallback for servers without schemas.
    JsonObject,
}

#[derive(Debug, Serialize)]
struct NamedSchema<'a> {
    name: &'a str,
    strict: bool,
    schema: JsonSchema<'a>,
}

#[derive(Debug, Deserialize)]
struct ChatResponse {
    #[serde(default)]
    choices: Vec<Choice>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: AnswerMessage,
}

#[derive(Debug, Deserialize)]
struct AnswerMessage {
    #[serde(default)]
    content: Option<String>,
}

/// Why a request brought no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Another try may work: 429, 5xx, a timeout, a lost connection. A 429
    /// may say how long to wait.
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// Another try will not work: a 4xx other than 401, 403, 408 and 429 (an
    /// unknown model, a refused request).
    Permanent { message: String },
    /// The API refused the key (401, 403): no try, and no attempt, can fix
    /// that until someone changes the Secret.
    Unauthorized { message: String },
    /// A 400 that says the server takes no JSON Schema `response_format`;
    /// the client falls back to JSON mode and never returns this itself.
    SchemaRefused { message: String },
}

impl CallError {
    pub fn message(&self) -> &str {
        match self {
            CallError::Retryable { message, .. }
            | CallError::Permanent { message }
            | CallError::Unauthorized { message }
            | CallError::SchemaRefused { message } => message,
        }
    }

    fn retryable(message: String) -> Self {
        CallError::Retryable {
            message,
            retry_after: None,
        }
    }
}

/// The longest model answer read: a chat completion is a few KiB, and a
/// server that sends more must not fill the worker's memory.
pub const MAX_ANSWER_BYTES: u64 = 4 << 20;

/// The longest piece of an error body quoted in a message.
const ERROR_BODY_CHARS: usize = 300;

/// A chat-completions client for one fleet's settings.
pub struct ChatClient {
    http: reqwest::Client,
    url: String,
    /// The URL as messages and logs show it (no userinfo, no query).
    shown: String,
    model: String,
    temperature: f64,
    timeout: Duration,
    api_key: Option<String>,
    /// Which servers refused schemas: process-wide, shared by every Job of
    /// the fleet.
    refusals: &'static SchemaRefusals,
}

// By hand, so the key never reaches a log line.
impl std::fmt::Debug for ChatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatClient")
            .field("url", &self.shown)
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl ChatClient {
    /// A client for `spec`; `api_key` is sent as a bearer token when set.
    /// Connections go only where `policy` allows (see [`crate::egress`]).
    pub fn new(
        spec: &ConsensusSpec,
        api_key: Option<String>,
        policy: &AddressPolicy,
    ) -> Result<Self, String> {
        let url = format!("{}/chat/completions", spec.base_url.trim_end_matches('/'));
        Ok(Self {
            http: egress::client(policy)?,
            shown: drover_crds::redact::url(&url),
            url,
            model: spec.model.clone(),
            temperature: spec.temperature,
            timeout: Duration::from_secs(spec.request_timeout_seconds.max(1).unsigned_abs()),
            api_key,
            refusals: SchemaRefusals::process_wide(),
        })
    }

    /// The fleet's endpoint, as schema refusals are remembered: a spec edit
    /// that points the fleet at another server or model asks again.
    fn endpoint(&self) -> String {
        format!("{} {}", self.url, self.model)
    }

    /// Sends `messages` asking for an answer of `shape`, and returns the
    /// answer's text ("" when the answer has none: that is for the caller's
    /// schema check to refuse). `step` (`expand`, `review:<persona>`) is
    /// what the call is logged under.
    ///
    /// The shape goes as a strict JSON Schema, unless this fleet's server
    /// refused one before; a refusal is remembered and the request is sent
    /// again at once in JSON mode.
    pub async fn complete(
        &self,
        step: &str,
        messages: &[ChatMessage],
        shape: &Shape,
    ) -> Result<String, CallError> {
        let endpoint = self.endpoint();
        let schema_format = || ResponseFormat::JsonSchema {
            json_schema: NamedSchema {
                name: shape.name,
                strict: true,
                schema: shape.json_schema(),
            },
        };
        if self.refusals.refused(&endpoint) {
            return self
                .logged(step, messages, ResponseFormat::JsonObject)
                .await;
        }
        match self.logged(step, messages, schema_format()).await {
            Err(CallError::SchemaRefused { message }) => {
                if self.refusals.remember(&endpoint) {
                    tracing::warn!(
                        step,
                        url = %self.shown,
                        model = %self.model,
                        refusal = %message,
                        "the model server takes no JSON Schema response_format; this fleet uses JSON mode from now on"
                    );
                }
                self.logged(step, messages, ResponseFormat::JsonObject)
                    .await
            }
            outcome => outcome,
        }
    }

    async fn logged(
        &self,
        step: &str,
        messages: &[ChatMessage],
        format: ResponseFormat<'_>,
    ) -> Result<String, CallError> {
        let started = Instant::now();
        let outcome = self.send(messages, format).await;
        let took_ms = started.elapsed().as_millis() as u64;
        match &outcome {
            Ok((status, _)) => {
                tracing::debug!(step, status, took_ms, "model call answered");
            }
            Err(error) => {
                tracing::debug!(step, took_ms, error = error.message(), "model call failed");
            }
        }
        outcome.map(|(_, text)| text)
    }

    async fn send(
        &self,
        messages: &[ChatMessage],
        format: ResponseFormat<'_>,
    ) -> Result<(u16, String), CallError> {
        let asked_schema = matches!(format, ResponseFormat::JsonSchema { .. });
        let body = ChatRequest {
            model: &self.model,
            messages,
            temperature: self.temperature,
            response_format: format,
        };
        let mut request = self.http.post(&self.url).timeout(self.timeout).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = egress::read_bounded(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| self.transport(&e))?
            .map_err(|too_large| CallError::Permanent {
                message: format!("the answer of {} was cut off: {too_large}", self.shown),
            })?;
        // A server may echo the request (a hostile one, or a proxy's error
        // page): the key never goes on into a message, a status or a log.
        let text = self.scrub(&String::from_utf8_lossy(&body));
        if !status.is_success() {
            if asked_schema && refuses_schemas(status.as_u16(), &text) {
                return Err(CallError::SchemaRefused {
                    message: format!("HTTP {status}: {}", excerpt(&text)),
                });
            }
            return Err(classify(status.as_u16(), &text, retry_after));
        }
        let parsed: ChatResponse = serde_json::from_str(&text).map_err(|e| {
            CallError::retryable(format!(
                "HTTP {status} from {} is not a chat completion ({e}): {}",
                self.shown,
                excerpt(&text)
            ))
        })?;
        let content = parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .unwrap_or_default();
        Ok((status.as_u16(), content))
    }

    /// `text` with every occurrence of the API key replaced.
    fn scrub(&self, text: &str) -> String {
        match self.api_key.as_deref() {
            Some(key) if !key.is_empty() => text.replace(key, "<redacted>"),
            _ => text.to_owned(),
        }
    }

    fn transport(&self, error: &reqwest::Error) -> CallError {
        if let Some(why) = egress::refusal_in(error) {
            // The guard refuses the same address every time.
            return CallError::Permanent {
                message: format!("{} is not reachable from this fleet: {why}", self.shown),
            };
        }
        if error.is_builder() {
            // A request that cannot be built (a base URL that does not parse, a
            // key that is not a valid header value) fails the same way again.
            return CallError::Permanent {
                message: format!(
                    "cannot build a request to {}: {}",
                    self.shown,
                    redact::urls_in(&source_chain(error))
                ),
            };
        }
        let message = if error.is_timeout() {
            format!(
                "no answer from {} within {} ms",
                self.shown,
                self.timeout.as_millis()
            )
        } else if error.is_connect() {
            format!(
                "cannot connect to {}: {}",
                self.shown,
                redact::urls_in(&source_chain(error))
            )
        } else {
            format!(
                "request to {} failed: {}",
                self.shown,
                redact::urls_in(&source_chain(error))
            )
        };
        CallError::retryable(message)
    }
}

/// Sorts an HTTP error answer: 408, 429 and 5xx may pass on another try;
/// 401 and 403 are a refused key.
pub fn classify(status: u16, body: &str, retry_after: Option<Duration>) -> CallError {
    let message = format!("HTTP {status}: {}", excerpt(body));
    match status {
        408 | 429 | 500..=599 => CallError::Retryable {
            message,
            retry_after,
        },
        401 | 403 => CallError::Unauthorized { message },
        _ => CallError::Permanent { message },
    }
}

/// A 400 about the request's `response_format` or `json_schema`: the
/// server does not take (this) schema. Servers word it differently (OpenAI:
/// "'response_format' of type 'json_schema' is not supported with this
/// model"; older servers: "unknown response_format type"), but every one
/// names the parameter it refused.
fn refuses_schemas(status: u16, body: &str) -> bool {
    let body = body.to_ascii_lowercase();
    status == 400 && (body.contains("json_schema") || body.contains("response_format"))
}

/// The endpoints (URL and model) whose server refused a JSON Schema
/// `response_format`, for the life of the process: one refusal per fleet
/// endpoint, then JSON mode without asking again.
#[derive(Debug, Default)]
pub struct SchemaRefusals {
    endpoints: Mutex<HashSet<String>>,
}

impl SchemaRefusals {
    fn process_wide() -> &'static SchemaRefusals {
        static REFUSALS: OnceLock<SchemaRefusals> = OnceLock::new();
        REFUSALS.get_or_init(SchemaRefusals::default)
    }

    fn refused(&self, endpoint: &str) -> bool {
        self.lock().contains(endpoint)
    }

    /// Remembers a refusal; true the first time for this endpoint.
    fn remember(&self, endpoint: &str) -> bool {
        self.lock().insert(endpoint.to_owned())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare from these APIs and
/// is ignored; the backoff schedule applies).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn excerpt(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    let mut cut: String = text.chars().take(ERROR_BODY_CHARS).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::super::schema::REVIEW;
    use super::*;

    #[test]
    fn rate_limits_timeouts_and_server_errors_are_retryable() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classify(status, "", None), CallError::Retryable { .. }),
                "{status}"
            );
        }
        let wait = Some(Duration::from_secs(3));
        assert_eq!(
            classify(429, "slow down", wait),
            CallError::Retryable {
                message: "HTTP 429: slow down".into(),
                retry_after: wait
            }
        );
    }

    #[test]
    fn a_refused_key_is_unauthorized() {
        for status in [401, 403] {
            assert!(
                matches!(classify(status, "", None), CallError::Unauthorized { .. }),
                "{status}"
            );
        }
    }

    #[test]
    fn a_400_about_the_response_format_is_a_schema_refusal() {
        for body in [
            r#"{"error": {"message": "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.", "param": "response_format"}}"#,
            "unknown response_format type",
            "JSON_SCHEMA is not supported",
        ] {
            assert!(refuses_schemas(400, body), "{body}");
        }
        assert!(!refuses_schemas(400, "messages must not be empty"));
        assert!(!refuses_schemas(422, "response_format"));
    }

    #[test]
    fn other_client_errors_are_permanent() {
        for status in [400, 404, 422] {
            assert!(
                matches!(classify(status, "", None), CallError::Permanent { .. }),
                "{status}"
            );
        }
    }

    #[test]
    fn long_error_bodies_are_cut() {
        let error = classify(400, &"x".repeat(1000), None);
        assert!(error.message().len() < ERROR_BODY_CHARS + 20);
        assert!(error.message().ends_with('…'));
        assert_eq!(classify(404, " ", None).message(), "HTTP 404: (empty body)");
    }

    #[test]
    fn the_request_is_an_openai_chat_completion_with_a_strict_schema_or_json_mode() {
        let messages = [
            ChatMessage::new(Role::System, "s"),
            ChatMessage::new(Role::User, "u"),
        ];
        let request = |format| {
            serde_json::to_value(ChatRequest {
                model: "m",
                messages: &messages,
                temperature: 0.2,
                response_format: format,
            })
            .unwrap()
        };
        let body = request(ResponseFormat::JsonSchema {
            json_schema: NamedSchema {
                name: "review",
                strict: true,
                schema: REVIEW.json_schema(),
            },
        });
        assert_eq!(
            body,
            serde_json::json!({
                "model": "m", "temperature": 0.2,
                "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                "response_format": {"type": "json_schema", "json_schema": {
                    "name": "review", "strict": true, "schema": REVIEW.json_schema().to_value(),
                }},
            })
        );
        assert_eq!(
            request(ResponseFormat::JsonObject)["response_format"],
            serde_json::json!({"type": "json_object"})
        );
    }

    #[test]
    fn the_key_is_not_in_debug_output() {
        let spec: ConsensusSpec = serde_json::from_value(serde_json::json!({
            "baseUrl": "http://llm/v1/", "model": "m", "personas": [{"name": "a", "prompt": "p"}],
        }))
        .unwrap();
        let client =
            ChatClient::new(&spec, Some("sk-secret".into()), &AddressPolicy::default()).unwrap();
        let debug = format!("{client:?}");
        assert!(!debug.contains("sk-secret"), "{debug}");
        assert!(debug.contains("http://llm/v1/chat/completions"), "{debug}");
    }
}
