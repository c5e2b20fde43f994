//! A stand-in for Lambda's Runtime API (`/2018-06-01/runtime/...`) on
//! loopback, for running the real bootstrap binaries: it hands out queued
//! events on `invocation/next`, with the headers Lambda sends, and keeps
//! each response or error with the time it arrived.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tokio::sync::Notify;

/// What the function answered one invocation.
#[derive(Debug, Clone)]
pub enum Outcome {
    Response(Value),
    Error(Value),
}

#[derive(Default)]
struct Inner {
    events: Mutex<VecDeque<(String, Value)>>,
    arrived: Notify,
    outcomes: Mutex<HashMap<String, (Outcome, Instant)>>,
    handed_out: Mutex<HashMap<String, Instant>>,
    /// When the function first asked for an event: its init was over.
    first_next: Mutex<Option<Instant>>,
    init_error: Mutex<Option<Value>>,
}

/// The Runtime API of one function.
#[derive(Clone)]
pub struct RuntimeApi {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl RuntimeApi {
    /// Serves on a free loopback port.
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, inner }
    }

    /// Queues an invocation of `event` with request id `id`.
    pub fn invoke(&self, id: &str, event: Value) {
        self.inner
            .events
            .lock()
            .unwrap()
            .push_back((id.to_owned(), event));
        self.inner.arrived.notify_waiters();
        self.inner.arrived.notify_one();
    }

    /// Waits up to `within` for the answer to invocation `id`, and how long
    /// it took from the moment the function received the event.
    pub async fn outcome(&self, id: &str, within: Duration) -> (Outcome, Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some((o, at)) = self.inner.outcomes.lock().unwrap().get(id).cloned() {
                let handed = self.inner.handed_out.lock().unwrap()[id];
                return (o, at - handed);
            }
            if let Some(e) = self.inner.init_error.lock().unwrap().clone() {
                panic!("the function failed to start: {e}");
            }
            assert!(Instant::now() < deadline, "no answer to {id}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// When the function first asked for an event.
    pub async fn ready_at(&self, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if let Some(at) = *self.inner.first_next.lock().unwrap() {
                return at;
            }
            if let Some(e) = self.inner.init_error.lock().unwrap().clone() {
                panic!("the function failed to start: {e}");
            }
            assert!(
                Instant::now() < deadline,
                "the function never asked for an event"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The environment a bootstrap needs to find this API.
    pub fn env(&self, function: &str) -> Vec<(String, String)> {
        [
            ("AWS_LAMBDA_RUNTIME_API", self.addr.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", function.to_owned()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512".to_owned()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

async fn next(State(inner): State<Arc<Inner>>) -> impl IntoResponse {
    inner
        .first_next
        .lock()
        .unwrap()
        .get_or_insert_with(Instant::now);
    loop {
        let notified = inner.arrived.notified();
        let event = inner.events.lock().unwrap().pop_front();
        if let Some((id, event)) = event {
            inner
                .handed_out
                .lock()
                .unwrap()
                .insert(id.clone(), Instant::now());
            let deadline = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                + 60_000;
            let mut headers = HeaderMap::new();
            headers.insert("lambda-runtime-aws-request-id", id.parse().unwrap());
            headers.insert(
                "lambda-runtime-deadline-ms",
                deadline.to_string().parse().unwrap(),
            );
            headers.insert(
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:ap-east-1:123456789012:function:paynotify"
                    .parse()
                    .unwrap(),
            );
            headers.insert(
                "lambda-runtime-trace-id",
                "Root=1-6552e6f7-3c4a1f0e5b2d7a8c9e0f1a2b".parse().unwrap(),
            );
            return (StatusCode::OK, headers, event.to_string());
        }
        notified.await;
    }
}

fn json(body: &Bytes) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into()))
}

async fn response(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    let outcome = (Outcome::Response(json(&body)), Instant::now());
    inner.outcomes.lock().unwrap().insert(id, outcome);
    StatusCode::ACCEPTED
}

async fn error(State(inner): State<Arc<Inner>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let outcome = (Outcome::Error(json(&body)), Instant::now());
    inner.outcomes.lock().unwrap().insert(id, outcome);
    StatusCode::ACCEPTED
}

async fn init_error(State(inner): State<Arc<Inner>>, body: Bytes) -> StatusCode {
    *inner.init_error.lock().unwrap() = Some(json(&body));
    StatusCode::ACCEPTED
}
