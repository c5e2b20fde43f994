//! The ingest: `POST /notify/{source}` archives the exact bytes (in a
//! segment shared with the notifications received at the same time),
//! enqueues them, and only then answers 200 with the source's success body
//! (DESIGN §1, §7). No signature check, no parsing. Health and metrics are
//! served on a separate admin listener.

pub mod budget;
pub mod segmenter;

pub use paynotify_runtime::serve;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use paynotify_config::{Config, IngestConfig};
use paynotify_ports::ArchiveError;
use paynotify_ports::Backends;
use paynotify_ports::Queue;
use paynotify_records::envelope::{Envelope, QueuedBody, Received};
use paynotify_runtime::admin::Admin;
use paynotify_runtime::metrics::{Metrics, UNKNOWN_SOURCE};
use paynotify_runtime::notification_span;
use segmenter::{Placed, SegmentSettings, Segmenter};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tracing::{error, info, Instrument};

/// Shared state of the handlers.
#[derive(Clone)]
pub struct IngestState {
    /// Archives notifications, grouped into segments.
    pub segmenter: Arc<Segmenter>,
    pub queue: Arc<dyn Queue>,
    /// Success body by source name.
    pub sources: Arc<BTreeMap<String, String>>,
    pub metrics: Arc<Metrics>,
    /// What the admin listener serves.
    pub admin: Admin,
    /// How long archiving and enqueueing one notification may take before
    /// it is answered 503 (`ingest.store_deadline_ms`).
    pub store_deadline: Duration,
    /// Request bodies held at once (`ingest.max_inflight_bytes`).
    pub budget: budget::Budget,
}

impl IngestState {
    /// The state for the configured sources on `backends`, counting into
    /// `metrics` (shared with the workers of the same process). With
    /// `sample_ledger`, `/metrics` also reads the parked events (a process
    /// that runs workers; an ingest alone need not read the ledger).
    pub fn new(
        config: &Config,
        backends: &Backends,
        metrics: Arc<Metrics>,
        sample_ledger: bool,
    ) -> Self {
        Self {
            segmenter: Segmenter::new(backends.archive.clone(), SegmentSettings::of(config)),
            queue: backends.queue.clone(),
            sources: Arc::new(
                config
                    .sources
                    .iter()
                    .map(|(k, s)| (k.clone(), s.success_body().to_owned()))
                    .collect(),
            ),
            admin: Admin {
                metrics: metrics.clone(),
                backends: backends.clone(),
                parked_alert_secs: config.worker.parked_alert_secs,
                sample_ledger,
            },
            metrics,
            store_deadline: Duration::from_millis(config.ingest.store_deadline_ms.max(1)),
            budget: budget::Budget::new(
                config.ingest.max_inflight_bytes,
                config.ingest.max_body_bytes,
            ),
        }
    }
}

/// The public router.
pub fn router(state: IngestState, config: &IngestConfig) -> Router {
    Router::new()
        .route("/notify/{source}", post(notify))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(RequestBodyTimeoutLayer::new(Duration::from_millis(
            config.read_timeout_ms,
        )))
        .with_state(state)
}

async fn notify(
    State(state): State<IngestState>,
    Path(source): Path<String>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let Some(success_body) = state.sources.get(&source).cloned() else {
        // The label is fixed: an attacker's path must not create series.
        state
            .metrics
            .responded(UNKNOWN_SOURCE, 404, started.elapsed());
        return Answer::unknown_source().into_response();
    };
    let span = notification_span!("ingest");
    span.record("source", source.as_str());
    let response = accept(&state, &source, success_body, remote, request)
        .instrument(span)
        .await;
    state
        .metrics
        .responded(&source, response.status().as_u16(), started.elapsed());
    response
}

/// Reads, archives and enqueues one notification of a configured source.
async fn accept(
    state: &IngestState,
    source: &str,
    success_body: String,
    remote: SocketAddr,
    request: Request,
) -> Response {
    let received_at = OffsetDateTime::now_utc();
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // Held until the notification is stored: the body, its envelope and
    // its place in a segment are what a request costs in memory.
    let Some(_reserved) = state.budget.try_reserve(declared) else {
        // Read and dropped as it comes, so the client reads the answer
        // instead of a reset connection (the read timeout still applies).
        discard(body, state.budget.max_body_bytes()).await;
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "1")],
            "busy\n",
        )
            .into_response();
    };
    let headers = header_pairs(&parts.headers);
    // The body extractor needs the request head (its extensions carry the body
    // limit); keep only method and URI, not a second copy of the headers.
    let (method, uri) = (parts.method.clone(), parts.uri.clone());
    let bytes = match Bytes::from_request(Request::from_parts(parts, body), &()).await {
        Ok(b) => b,
        Err(rejection) => {
            if is_body_timeout(&rejection) {
                info!(remote = %remote, "request body too slow");
                return (StatusCode::REQUEST_TIMEOUT, "request body too slow\n").into_response();
            }
            info!(remote = %remote, error = %rejection.body_text(), "request body rejected");
            return rejection.into_response();
        }
    };
    // Only the serialised envelope is kept across the awaits of `store`:
    // with a thousand requests in flight, every copy of a body counts.
    let pending = Pending::new(Received {
        source,
        received_at,
        remote_addr: Some(remote.to_string()),
        method: method.as_str(),
        path: uri.path(),
        query: uri.query(),
        headers,
        body: &bytes,
    });
    drop(bytes);
    store(state, pending, success_body).await.into_response()
}

/// Reads `body` up to `limit` bytes, keeping none of it.
async fn discard(body: axum::body::Body, limit: usize) {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut read = 0;
    while let Some(Ok(frame)) = body.frame().await {
        read += frame.data_ref().map_or(0, |d| d.len());
        if read > limit {
            break;
        }
    }
}

/// The headers of a request as the envelope keeps them (values that are not
/// UTF-8 are kept lossily; the body is what is verified).
pub fn header_pairs(headers: &axum::http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// A notification read in full, its envelope serialised, not yet stored.
pub struct Pending {
    source: String,
    id: String,
    partition: String,
    json: Vec<u8>,
    body_len: usize,
}

impl Pending {
    /// Wraps what a transport received (the server's request, a Lambda
    /// event) in a fresh envelope.
    pub fn new(received: Received<'_>) -> Self {
        let body_len = received.body.len();
        let envelope = Envelope::new(received);
        Self {
            source: envelope.source.clone(),
            id: envelope.id.clone(),
            partition: envelope.partition(),
            json: envelope.to_json(),
            body_len,
        }
    }
}

/// What ingest answers a request: a status and a short text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
}

impl Answer {
    /// `status` with `body`.
    pub fn new(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
        }
    }

    /// The answer to a request for a source that is not configured.
    pub fn unknown_source() -> Self {
        Self::new(StatusCode::NOT_FOUND, "unknown source\n")
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        (self.status, self.body).into_response()
    }
}

/// Archives and enqueues one notification of a configured source, and
/// answers 200 with `success_body` only when both are durable; 503 when
/// either store fails (the PSP sends it again). Every transport (the
/// server, the Lambda handler) stores through here, in the notification's
/// span.
///
/// The queue send runs while the notification's segment is written, once
/// the segment is sealed and the envelope's place in it known: a message
/// carries the whole envelope, so it never depends on the segment. When the
/// segment then fails, the answer is 503 and the message already sent is
/// applied from its own bytes (the PSP's retry is then a duplicate); the
/// worker checks the archive before it derives a pointer from such a
/// message (`paynotify_worker::archived`). An envelope too large to travel
/// inline is sent as a pointer, and only once its segment is durable.
///
/// Both must be done within `ingest.store_deadline_ms`, else the answer is
/// 503 (a backend that stops answering must not hold the PSP's request, or
/// the load balancer's connection, open): what was stored meanwhile makes
/// the PSP's retry a duplicate.
pub async fn store(state: &IngestState, pending: Pending, success_body: String) -> Answer {
    match tokio::time::timeout(
        state.store_deadline,
        store_now(state, pending, success_body),
    )
    .await
    {
        Ok(answer) => answer,
        Err(_) => {
            error!(
                deadline_ms = state.store_deadline.as_millis() as u64,
                "archive and enqueue did not finish within the deadline"
            );
            Answer::new(StatusCode::SERVICE_UNAVAILABLE, "store deadline passed\n")
        }
    }
}

async fn store_now(state: &IngestState, pending: Pending, success_body: String) -> Answer {
    let Pending {
        source,
        id,
        partition,
        json,
        body_len,
    } = pending;
    state.metrics.received(&source);
    tracing::Span::current().record("notification_id", id.as_str());
    // A message sent meanwhile holds the whole envelope: it is applied, and
    // the PSP's retry of this 503 is a duplicate.
    let archive_failed = |e: ArchiveError, enqueued: bool| {
        error!(error = %e, enqueued, "archive failed");
        Answer::new(StatusCode::SERVICE_UNAVAILABLE, "archive unavailable\n")
    };
    let Placed { at, json, durable } =
        match state.segmenter.place(partition, id.clone(), json).await {
            Ok(placed) => placed,
            Err(e) => return archive_failed(e, false),
        };
    let (archived, sent) = match QueuedBody::inline(json, &at, state.queue.max_message_bytes()) {
        Some(message) => tokio::join!(durable.wait(), state.queue.send(&message)),
        None => match durable.wait().await {
            Ok(()) => {
                let pointer = QueuedBody::pointer(&at, Some(&id), None, None);
                (Ok(()), state.queue.send(&pointer).await)
            }
            Err(e) => return archive_failed(e, false),
        },
    };
    if archived.is_ok() {
        state.metrics.archived(&source);
    }
    if sent.is_ok() {
        state.metrics.enqueued(&source);
    }
    if let Err(e) = archived {
        return archive_failed(e, sent.is_ok());
    }
    if let Err(e) = sent {
        error!(error = %e, archive_key = %at, "enqueue failed");
        return Answer::new(StatusCode::SERVICE_UNAVAILABLE, "queue unavailable\n");
    }
    info!(bytes = body_len, archive_key = %at, "accepted");
    Answer::new(StatusCode::OK, success_body)
}

/// Whether reading the body failed because the client sent it too slowly.
fn is_body_timeout(rejection: &axum::extract::rejection::BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(e) = source {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Serves the public and admin listeners until `shutdown` is cancelled, then
/// stops accepting, closes idle connections, and gives requests in flight
/// `drain_secs` to finish ([`serve::serve`]).
///
/// # Errors
/// Listener errors.
pub async fn run(
    listener: TcpListener,
    admin: TcpListener,
    state: IngestState,
    config: &IngestConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limits = serve::Limits {
        header_read_timeout: Duration::from_millis(config.header_read_timeout_ms.max(1)),
        max_connections: config.max_connections,
        drain: Duration::from_secs(config.drain_secs),
    };
    let admin_limits = serve::Limits {
        max_connections: 64,
        ..limits
    };
    let (a, b) = tokio::join!(
        serve::serve(
            listener,
            router(state.clone(), config),
            limits,
            shutdown.clone()
        ),
        serve::serve(
            admin,
            paynotify_runtime::admin::router(state.admin),
            admin_limits,
            shutdown
        )
    );
    a.and(b)
}
