//! The admin listener of every process, apart from the public one:
//! `/healthz` (the process is up), `/readyz` (its stores can be written and
//! its queue reached) and `/metrics` (Prometheus text, see
//! [`crate::metrics`]). Keep it off the public network.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::metrics::{Metrics, Sampler};
use crate::ports::Backends;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub backends: Backends,
    /// A parked event older than this is counted as overdue.
    pub parked_alert_secs: u64,
    /// Whether `/metrics` reads the parked events from the ledger: not in
    /// an ingest-only process, whose role may not read the ledger.
    pub sample_ledger: bool,
}

/// The admin router.
pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(admin)
}

async fn readyz(State(admin): State<Admin>) -> Response {
    if let Some(why) = admin.backends.fatal() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
    }
    match admin.backends.queue.depth().await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("queue: {e}\n")).into_response(),
    }
}

async fn metrics(State(admin): State<Admin>) -> Response {
    let sampler = Sampler {
        queue: admin.backends.queue.clone(),
        ledger: admin.sample_ledger.then(|| admin.backends.ledger.clone()),
        parked_alert_secs: admin.parked_alert_secs,
    };
    let text = admin.metrics.render(Some(&sampler)).await;
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}
