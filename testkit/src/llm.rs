//! A scripted OpenAI-compatible chat-completions server, standing in for a
//! paid LLM API in tests. A test gives it a script: a function from the call
//! (its system prompt, its body, how many calls with that system prompt came
//! before) to a reply (an answer, an HTTP error, a delay). The server records
//! every call with its bearer token and timing, so tests can assert on what
//! was sent and on what ran in parallel.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// One chat-completions request as the script sees it.
#[derive(Debug, Clone)]
pub struct Call {
    /// The content of the first `system` message ("" when there is none).
    pub system: String,
    /// Calls with the same system prompt before this one (0 for the first):
    /// a repair request or a retry of a persona counts up.
    pub nth: usize,
    /// The request body as sent.
    pub body: Value,
}

impl Call {
    /// The content of the last message (the request a repair adds, say).
    pub fn last_message(&self) -> &str {
        self.body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
    }
}

/// What the server answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A completion whose message content is this value serialized as JSON.
    Json(Value),
    /// A completion whose message content is this text as is.
    Text(String),
    /// An HTTP error with this status and body.
    Status(u16, String),
    /// A 429 with a `Retry-After` of this many seconds.
    TooManyRequests { retry_after_seconds: u64 },
    /// This reply after a delay.
    After(Duration, Box<Reply>),
}

impl Reply {
    pub fn after(delay: Duration, reply: Reply) -> Self {
        Reply::After(delay, Box::new(reply))
    }
}

/// A call as the server saw it, for assertions.
#[derive(Debug, Clone)]
pub struct Seen {
    pub call: Call,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The path it was sent to.
    pub path: String,
    pub received: Instant,
    /// When the answer was sent; None while it is pending (or when the
    /// client gave up first).
    pub answered: Option<Instant>,
}

type Script = dyn Fn(&Call) -> Reply + Send + Sync;

struct Shared {
    script: Box<Script>,
    seen: Mutex<Vec<Seen>>,
}

/// The running server; it stops when dropped.
pub struct ScriptedLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedLlm {
    /// Serves `script` on 127.0.0.1 at a free port, on the current runtime.
    pub async fn start(
        script: impl Fn(&Call) -> Reply + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            script: Box::new(script),
            seen: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .fallback(post(complete))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    /// The base URL a client is configured with (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every call so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.shared.seen).clone()
    }

    /// The calls whose system prompt contains `needle`.
    pub fn seen_with(&self, needle: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.call.system.contains(needle))
            .collect()
    }
}

impl Drop for ScriptedLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(seen: &Mutex<Vec<Seen>>) -> MutexGuard<'_, Vec<Seen>> {
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn complete(
    State(shared): State<Arc<Shared>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let body: Value = match serde_json::from_str(&body) {
        Ok(body) => body,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")).into_response();
        }
    };
    let system = body["messages"]
        .as_array()
        .and_then(|messages| messages.iter().find(|m| m["role"] == "system"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let (call, index) = {
        let mut seen = lock(&shared.seen);
        let nth = seen.iter().filter(|s| s.call.system == system).count();
        let call = Call { system, nth, body };
        seen.push(Seen {
            call: call.clone(),
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            path: uri.path().to_owned(),
            received: Instant::now(),
            answered: None,
        });
        (call, seen.len() - 1)
    };
    let mut reply = (shared.script)(&call);
    while let Reply::After(delay, next) = reply {
        tokio::time::sleep(delay).await;
        reply = *next;
    }
    lock(&shared.seen)[index].answered = Some(Instant::now());
    let model = call.body["model"].clone();
    match reply {
        Reply::Json(content) => completion(&model, &content.to_string()),
        Reply::Text(content) => completion(&model, &content),
        Reply::Status(code, text) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            text,
        )
            .into_response(),
        Reply::TooManyRequests {
            retry_after_seconds,
        } => {
            let mut response = (
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": {"message": "rate limited", "type": "rate_limit"}}).to_string(),
            )
                .into_response();
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(retry_after_seconds));
            response
        }
        Reply::After(..) => unreachable!("delays are unwrapped above"),
    }
}

fn completion(model: &Value, content: &str) -> Response {
    axum::Json(json!({
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }))
    .into_response()
}
