//! The ingest: `POST /notify/{source}` archives the exact bytes, enqueues
//! them, and only then answers 200 with the source's success body (DESIGN §1,
//! §7). No signature check, no parsing. Health and metrics are served on a
//! separate admin listener.

pub mod serve;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use paynotify_shared::backend::aws::ApiCalls;
use paynotify_shared::backend::Backends;
use paynotify_shared::config::{Config, IngestConfig};
use paynotify_shared::envelope::{Envelope, QueuedBody, Received};
use paynotify_shared::ports::{Archive, ArchiveError, Ledger, Queue};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tracing::{error, info};

/// Counters exported on `/metrics`.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub accepted: AtomicU64,
    pub unknown_source: AtomicU64,
    pub rejected_body: AtomicU64,
    pub unavailable: AtomicU64,
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct IngestState {
    pub archive: Arc<dyn Archive>,
    pub queue: Arc<dyn Queue>,
    /// For the parked-event gauges on `/metrics`.
    pub ledger: Option<Arc<dyn Ledger>>,
    /// A parked event older than this is counted as overdue.
    pub parked_alert_secs: u64,
    /// Success body by source name.
    pub sources: Arc<BTreeMap<String, String>>,
    pub metrics: Arc<IngestMetrics>,
    /// AWS API calls of this process, when on the AWS backend.
    pub api_calls: Option<Arc<ApiCalls>>,
}

impl IngestState {
    /// The state for the configured sources on `backends`.
    pub fn new(config: &Config, backends: &Backends) -> Self {
        Self {
            archive: backends.archive.clone(),
            queue: backends.queue.clone(),
            ledger: Some(backends.ledger.clone()),
            parked_alert_secs: config.worker.parked_alert_secs,
            sources: Arc::new(
                config
                    .sources
                    .iter()
                    .map(|(k, s)| (k.clone(), s.success_body.clone()))
                    .collect(),
            ),
            metrics: Arc::new(IngestMetrics::default()),
            api_calls: backends.api_calls.clone(),
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

/// The admin router: `/healthz`, `/readyz`, `/metrics`.
pub fn admin_router(state: IngestState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn notify(
    State(state): State<IngestState>,
    Path(source): Path<String>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let received_at = OffsetDateTime::now_utc();
    let Some(success_body) = state.sources.get(&source).cloned() else {
        state.metrics.unknown_source.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::NOT_FOUND, "unknown source\n").into_response();
    };
    let (parts, body) = request.into_parts();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    // The body extractor needs the request head (its extensions carry the body
    // limit); keep only method and URI, not a second copy of the headers.
    let (method, uri) = (parts.method.clone(), parts.uri.clone());
    let bytes = match Bytes::from_request(Request::from_parts(parts, body), &()).await {
        Ok(b) => b,
        Err(rejection) => {
            state.metrics.rejected_body.fetch_add(1, Ordering::Relaxed);
            if is_body_timeout(&rejection) {
                return (StatusCode::REQUEST_TIMEOUT, "request body too slow\n").into_response();
            }
            return rejection.into_response();
        }
    };
    // Only the serialised envelope is kept across the awaits below: with a
    // thousand requests in flight, every copy of a body counts.
    let body_len = bytes.len();
    let (id, key, json) = {
        let envelope = Envelope::new(Received {
            source: &source,
            received_at,
            remote_addr: Some(remote.to_string()),
            method: method.as_str(),
            path: uri.path(),
            query: uri.query(),
            headers,
            body: &bytes,
        });
        drop(bytes);
        (
            envelope.id.clone(),
            envelope.archive_key(),
            envelope.to_json(),
        )
    };
    if let Err(e) = archive(state.archive.as_ref(), &key, &json).await {
        error!(notification_id = %id, source = %source, stage = "ingest", error = %e, "archive failed");
        state.metrics.unavailable.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::SERVICE_UNAVAILABLE, "archive unavailable\n").into_response();
    }
    let message = QueuedBody::for_queue(json, &key, state.queue.max_message_bytes());
    if let Err(e) = state.queue.send(&message).await {
        error!(notification_id = %id, source = %source, stage = "ingest", error = %e, "enqueue failed");
        state.metrics.unavailable.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::SERVICE_UNAVAILABLE, "queue unavailable\n").into_response();
    }
    state.metrics.accepted.fetch_add(1, Ordering::Relaxed);
    info!(notification_id = %id, source = %source, stage = "ingest", direction = "notification", bytes = body_len, "accepted");
    (StatusCode::OK, success_body).into_response()
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

/// Puts the envelope. A put that finds its own key taken is a retry of a put
/// that succeeded with its reply lost (an SDK retry after a timeout; keys are
/// fresh ULIDs): it succeeded when the stored object is this envelope.
async fn archive(archive: &dyn Archive, key: &str, json: &[u8]) -> Result<(), ArchiveError> {
    match archive.put(key, json).await {
        Err(ArchiveError::AlreadyExists(k)) => match archive.get(key).await {
            Ok(stored) if stored == json => Ok(()),
            Ok(_) => Err(ArchiveError::AlreadyExists(k)),
            Err(e) => Err(e),
        },
        other => other,
    }
}

async fn readyz(State(state): State<IngestState>) -> Response {
    let fatal = state
        .archive
        .fatal()
        .or_else(|| state.queue.fatal())
        .or_else(|| state.ledger.as_ref().and_then(|l| l.fatal()));
    if let Some(why) = fatal {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
    }
    match state.queue.depth().await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("queue: {e}\n")).into_response(),
    }
}

async fn metrics(State(state): State<IngestState>) -> String {
    let m = &state.metrics;
    let depth = state.queue.depth().await.map(|d| d as i64).unwrap_or(-1);
    let mut out = format!(
        "# TYPE paynotify_ingest_requests_total counter\n\
         paynotify_ingest_requests_total{{result=\"accepted\"}} {}\n\
         paynotify_ingest_requests_total{{result=\"unknown_source\"}} {}\n\
         paynotify_ingest_requests_total{{result=\"rejected_body\"}} {}\n\
         paynotify_ingest_requests_total{{result=\"unavailable\"}} {}\n\
         # TYPE paynotify_queue_depth gauge\npaynotify_queue_depth {depth}\n",
        m.accepted.load(Ordering::Relaxed),
        m.unknown_source.load(Ordering::Relaxed),
        m.rejected_body.load(Ordering::Relaxed),
        m.unavailable.load(Ordering::Relaxed),
    );
    if let Some(ledger) = &state.ledger {
        out.push_str(&parked_gauges(ledger.as_ref(), state.parked_alert_secs).await);
    }
    if let Some(calls) = &state.api_calls {
        out.push_str("# TYPE paynotify_aws_api_calls_total counter\n");
        for (operation, n) in calls.snapshot() {
            out.push_str(&format!(
                "paynotify_aws_api_calls_total{{operation=\"{operation}\"}} {n}\n"
            ));
        }
    }
    out
}

/// Parked events counted at most per scrape.
const MAX_PARKED_COUNTED: usize = 10_000;

/// Parked events overdue (older than the bound) and conflicted (kept parked
/// because they contradict their payment); -1 when the ledger cannot be read.
async fn parked_gauges(ledger: &dyn Ledger, alert_secs: u64) -> String {
    // One read, oldest first: the overdue ones lead.
    let now = OffsetDateTime::now_utc();
    let bound = now - time::Duration::seconds(alert_secs as i64);
    let (overdue, conflicted) = match ledger.parked_before(now, MAX_PARKED_COUNTED).await {
        Ok(parked) => (
            parked.iter().filter(|p| p.parked.parked_at < bound).count() as i64,
            parked
                .iter()
                .filter(|p| p.parked.conflict.is_some())
                .count() as i64,
        ),
        Err(_) => (-1, -1),
    };
    format!(
        "# HELP paynotify_parked_events_overdue Events parked for longer than worker.parked_alert_secs.
         # TYPE paynotify_parked_events_overdue gauge
paynotify_parked_events_overdue {overdue}
         # HELP paynotify_parked_events_conflicted Parked events that contradict their payment.
         # TYPE paynotify_parked_events_conflicted gauge
paynotify_parked_events_conflicted {conflicted}
"
    )
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
        serve::serve(admin, admin_router(state), admin_limits, shutdown)
    );
    a.and(b)
}
