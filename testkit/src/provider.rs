//! A scripted outside provider for the render pipeline, the way a video
//! generation API behaves: `POST /jobs` takes a request and answers its id,
//! `GET /jobs/{id}` answers its status, `GET /outputs/{id}` serves the
//! output, and when a request finishes the provider POSTs its callback URL,
//! retrying every second until it gets a 2xx, as the docs ask providers to.
//!
//! Each request scripts itself in its body: `takesMillis` (how long it
//! renders), `never` (it never finishes), `label` (what the output says),
//! `duplicateCallback` (send the callback once more after it landed). The
//! server records submits, polls, downloads and every callback answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// The status words the provider uses.
pub const SUCCEEDED: &str = "succeeded";
pub const RUNNING: &str = "running";
/// How long a callback sender keeps retrying.
const CALLBACK_PATIENCE: Duration = Duration::from_secs(300);
const CALLBACK_RETRY: Duration = Duration::from_secs(1);

/// One request the provider took.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub id: String,
    pub label: String,
    /// The body as submitted (with `callbackUrl` when Drover sent one).
    pub body: Value,
    pub callback_url: Option<String>,
    /// When it finishes; `None`: never.
    pub done_at: Option<Instant>,
    /// Status requests answered.
    pub polls: u32,
    /// Output downloads served.
    pub downloads: u32,
    /// The HTTP status of every callback try, in order (0: no connection).
    pub callback_answers: Vec<u16>,
}

impl Request {
    fn status(&self) -> &'static str {
        match self.done_at {
            Some(at) if Instant::now() >= at => SUCCEEDED,
            _ => RUNNING,
        }
    }
}

#[derive(Debug, Default)]
struct Books {
    requests: BTreeMap<String, Request>,
    next: u32,
}

/// The running provider.
#[derive(Clone)]
pub struct ScriptedProvider {
    addr: SocketAddr,
    books: Arc<Mutex<Books>>,
}

impl ScriptedProvider {
    /// Serves on a free loopback port, on the current runtime.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let provider = Self {
            addr: listener.local_addr()?,
            books: Arc::default(),
        };
        let app = Router::new()
            .route("/jobs", post(submit))
            .route("/jobs/{id}", get(status))
            .route("/outputs/{id}", get(output))
            .with_state(provider.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(provider)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The submit URL a fleet names.
    pub fn submit_url(&self) -> String {
        format!("{}/jobs", self.base_url())
    }

    /// The status URL a fleet names (with `{requestId}`).
    pub fn status_url(&self) -> String {
        format!("{}/jobs/{{requestId}}", self.base_url())
    }

    /// The requests submitted with `label`, in submit order.
    pub fn requests_labelled(&self, label: &str) -> Vec<Request> {
        self.lock()
            .requests
            .values()
            .filter(|r| r.label == label)
            .cloned()
            .collect()
    }

    /// The callback body the provider sends for request `id`.
    pub fn callback_body(&self, id: &str) -> Value {
        json!({"id": id, "status": SUCCEEDED, "outputUrl": self.output_url(id)})
    }

    fn output_url(&self, id: &str) -> String {
        format!("{}/outputs/{id}", self.base_url())
    }

    fn lock(&self) -> MutexGuard<'_, Books> {
        self.books
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends the callback of `id` until a 2xx (and once more when asked).
    async fn call_back(self, id: String, url: String, at: Instant, duplicate: bool) {
        tokio::time::sleep_until(at.into()).await;
        let client = reqwest::Client::new();
        let give_up = Instant::now() + CALLBACK_PATIENCE;
        let mut sends = if duplicate { 2 } else { 1 };
        while sends > 0 && Instant::now() < give_up {
            let sent = client
                .post(&url)
                .json(&self.callback_body(&id))
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            let code = sent.map_or(0, |r| r.status().as_u16());
            if let Some(request) = self.lock().requests.get_mut(&id) {
                request.callback_answers.push(code);
            }
            if (200..300).contains(&code) {
                sends -= 1;
            } else {
                tokio::time::sleep(CALLBACK_RETRY).await;
            }
        }
    }
}

async fn submit(State(provider): State<ScriptedProvider>, body: axum::Json<Value>) -> Response {
    let body = body.0;
    let takes = Duration::from_millis(body["takesMillis"].as_u64().unwrap_or(0));
    let never = body["never"].as_bool().unwrap_or(false);
    let callback_url = body["callbackUrl"].as_str().map(str::to_owned);
    let id = {
        let mut books = provider.lock();
        books.next += 1;
        let id = format!("r-{}", books.next);
        let request = Request {
            id: id.clone(),
            label: body["label"].as_str().unwrap_or_default().to_owned(),
            callback_url: callback_url.clone(),
            done_at: (!never).then(|| Instant::now() + takes),
            body: body.clone(),
            ..Request::default()
        };
        books.requests.insert(id.clone(), request);
        id
    };
    let done_at = provider.lock().requests.get(&id).and_then(|r| r.done_at);
    if let (Some(url), Some(at)) = (callback_url, done_at) {
        let duplicate = body["duplicateCallback"].as_bool().unwrap_or(false);
        tokio::spawn(provider.clone().call_back(id.clone(), url, at, duplicate));
    }
    axum::Json(json!({"id": id, "status": "queued"})).into_response()
}

async fn status(State(provider): State<ScriptedProvider>, Path(id): Path<String>) -> Response {
    let output = provider.output_url(&id);
    let mut books = provider.lock();
    let Some(request) = books.requests.get_mut(&id) else {
        return (StatusCode::NOT_FOUND, "no such request").into_response();
    };
    request.polls += 1;
    let status = request.status();
    let mut answer = json!({"id": id, "status": status});
    if status == SUCCEEDED {
        answer["outputUrl"] = json!(output);
    }
    axum::Json(answer).into_response()
}

async fn output(State(provider): State<ScriptedProvider>, Path(id): Path<String>) -> Response {
    let mut books = provider.lock();
    let Some(request) = books.requests.get_mut(&id) else {
        return (StatusCode::NOT_FOUND, "no such output").into_response();
    };
    if request.status() != SUCCEEDED {
        return (StatusCode::NOT_FOUND, "not rendered yet").into_response();
    }
    request.downloads += 1;
    format!("video of {}", request.label).into_response()
}
