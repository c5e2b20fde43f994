//! The deliverer (DESIGN §8, docs/events.md): every outgoing event in the
//! outbox to each endpoint whose filter it matches, signed per Standard
//! Webhooks, at least once with a stable id, in order per payment.
//!
//! Each endpoint has its own loop: it moves the outbox records past the
//! endpoint's cursor into its deliveries (one write with the cursor, so a
//! record is never skipped), claims the deliveries that head their
//! payment's line and are due (a lease, so two deliverers never send one
//! at once and a dead one's lease runs out), sends them, and records each
//! attempt. A failure is tried again on the configured schedule and then
//! dead-lettered; the payment's later events wait behind it. An endpoint
//! that fails for too long, or answers 410 Gone, is disabled: its events
//! wait, and the logs and `/metrics` say so.

pub mod http;
pub mod line;
pub mod sign;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use paynotify_config::{Config, DeliveriesConfig, EndpointConfig};
use paynotify_ports::Backends;
use paynotify_ports::{Attempt, Deliveries, Delivery, LedgerError, SecretStore};
use paynotify_runtime::metrics::Metrics;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::http::{Answer, ClientSettings, EndpointClient};
use crate::sign::Signer;

/// Outbox records read per pass.
const FAN_OUT_BATCH: usize = 500;
/// How often an endpoint's status is read for the gauges.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// The longest `retry-after` honoured.
const MAX_RETRY_AFTER_SECS: u64 = 24 * 3600;

/// Why the deliverer cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error("deliveries endpoint {endpoint:?}: {why}")]
    Endpoint { endpoint: String, why: String },
    #[error("deliveries: {0}")]
    Store(#[from] LedgerError),
    #[error("deliveries.endpoints are configured, but this backend has neither an outbox nor a webhook line")]
    NoOutbox,
    #[error("deliveries.endpoints: {0}")]
    Line(String),
    #[error(
        "deliveries.sinks are fed from the AWS ledger table's stream by the events function; \
         the local backend delivers to deliveries.endpoints"
    )]
    SinksNeedStream,
}

/// One endpoint, ready to send.
struct Endpoint {
    config: EndpointConfig,
    signer: Signer,
    client: EndpointClient,
    /// The last outbox record moved into its deliveries, as far as this
    /// process knows (another deliverer may be further: moving a record
    /// twice keeps the first).
    cursor: AtomicU64,
    /// Disabled, as last read or decided here.
    disabled: AtomicBool,
}

impl Endpoint {
    /// `e`, its secrets read now.
    async fn new(
        e: &EndpointConfig,
        secrets: Option<&dyn SecretStore>,
    ) -> Result<Self, DeliverError> {
        let fail = |why: String| DeliverError::Endpoint {
            endpoint: e.name.clone(),
            why,
        };
        let mut keys = Vec::new();
        for r in &e.secrets {
            let secret = paynotify_runtime::secret::read(r, secrets)
                .await
                .map_err(|err| fail(err.to_string()))?;
            keys.push(secret.expose().to_vec());
        }
        let signer = Signer::new(&keys).map_err(|err| fail(err.to_string()))?;
        let client = EndpointClient::new(ClientSettings {
            timeout: Duration::from_millis(e.timeout_ms),
            max_requests_per_sec: e.max_requests_per_sec,
            allow_private: e.allow_private_addresses,
        })
        .map_err(fail)?;
        Ok(Self {
            config: e.clone(),
            signer,
            client,
            cursor: AtomicU64::new(0),
            disabled: AtomicBool::new(false),
        })
    }

    /// Signs and posts one event: `Ok` for a 2xx answer, else what failed.
    async fn post(&self, event_id: &str, body: bytes::Bytes) -> Result<(), Refusal> {
        let timestamp = OffsetDateTime::now_utc().unix_timestamp();
        let headers = [
            ("webhook-id", event_id.to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            (
                "webhook-signature",
                self.signer.sign(event_id, timestamp, &body),
            ),
        ];
        match self.client.post(&self.config.url, &headers, body).await {
            Ok(a) if (200..300).contains(&a.status) => Ok(()),
            Ok(a) => Err(Refusal {
                error: format!("HTTP {}: {}", a.status, a.preview),
                retry_after: retry_after(&a),
                gone: a.status == 410,
            }),
            Err(e) => Err(Refusal {
                error: e.to_string(),
                retry_after: None,
                gone: false,
            }),
        }
    }
}

/// Why an attempt failed.
struct Refusal {
    error: String,
    /// The `retry-after` of a 429 or 503.
    retry_after: Option<u64>,
    /// 410 Gone: the receiver says it is not coming back.
    gone: bool,
}

/// When a delivery that failed `attempts` times before this failure is
/// tried again: the schedule's next wait, or the receiver's `retry-after`
/// when longer; `None` when the schedule is spent.
fn next_try(schedule: &[u64], attempts: u32, retry_after: Option<u64>) -> Option<Duration> {
    schedule.get(attempts as usize).map(|&secs| {
        Duration::from_secs(secs.max(retry_after.unwrap_or(0).min(MAX_RETRY_AFTER_SECS)))
    })
}

/// The deliverer of one process.
pub struct Deliverer {
    store: Arc<dyn Deliveries>,
    endpoints: Vec<Arc<Endpoint>>,
    settings: DeliveriesConfig,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("endpoints", &self.endpoints.len())
            .finish_non_exhaustive()
    }
}

impl Deliverer {
    /// A deliverer for the endpoints of `config`, their secrets read now.
    ///
    /// # Errors
    /// A secret that cannot be read or is not a `whsec_` key, or no TLS roots.
    pub async fn new(
        config: &DeliveriesConfig,
        store: Arc<dyn Deliveries>,
        secrets: Option<&dyn SecretStore>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DeliverError> {
        let mut endpoints = Vec::new();
        for e in &config.endpoints {
            endpoints.push(Arc::new(Endpoint::new(e, secrets).await?));
        }
        Ok(Self {
            store,
            endpoints,
            settings: config.clone(),
            metrics,
        })
    }

    /// Delivers until `shutdown` is cancelled; the attempts in flight then
    /// finish (each bounded by its endpoint's timeout).
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut tasks = Vec::new();
        for i in 0..this.endpoints.len() {
            let (this, shutdown) = (this.clone(), shutdown.clone());
            tasks.push(tokio::spawn(async move {
                this.endpoint_loop(i, shutdown).await
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    /// One endpoint's loop: keeps up to `concurrency` deliveries in flight,
    /// claiming more as each ends (a slow answer holds only its own slot).
    async fn endpoint_loop(&self, i: usize, shutdown: CancellationToken) {
        use futures_util::StreamExt as _;
        let endpoint = &self.endpoints[i];
        let name = endpoint.config.name.as_str();
        let poll = Duration::from_millis(self.settings.poll_ms);
        let mut status_at = tokio::time::Instant::now();
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        let log = |r: Result<(), LedgerError>| {
            if let Err(e) = r {
                // The lease runs out and the delivery is sent again, same id.
                tracing::warn!(endpoint = name, error = %e, "recording an attempt failed");
            }
        };
        while !shutdown.is_cancelled() {
            if status_at <= tokio::time::Instant::now() {
                self.report_status(endpoint).await;
                status_at = tokio::time::Instant::now() + STATUS_EVERY;
            }
            let free = self.settings.concurrency.saturating_sub(in_flight.len());
            let progressed = match self.pass(endpoint, free).await {
                Ok((moved, due)) => {
                    let n = due.len();
                    in_flight.extend(due.into_iter().map(|d| self.deliver(endpoint, d)));
                    moved + n > 0
                }
                Err(e) => {
                    tracing::warn!(endpoint = name, error = %e, "deliveries store unavailable; trying again");
                    false
                }
            };
            if progressed && in_flight.len() < self.settings.concurrency {
                continue;
            }
            // Wait for a slot, new work, or the end.
            tokio::select! {
                Some(r) = in_flight.next(), if !in_flight.is_empty() => log(r),
                () = tokio::time::sleep(poll) => {}
                () = shutdown.cancelled() => {}
            }
        }
        while let Some(r) = in_flight.next().await {
            log(r);
        }
    }

    /// Reads the endpoint's status into the gauges, its cursor and whether
    /// it is disabled.
    async fn report_status(&self, endpoint: &Endpoint) {
        let name = endpoint.config.name.as_str();
        match self.store.endpoint_status(name).await {
            Ok(s) => {
                let now = OffsetDateTime::now_utc();
                let oldest = s
                    .oldest_pending
                    .map(|t| (now - t).try_into().unwrap_or_default());
                self.metrics.delivery_status(
                    name,
                    s.pending,
                    s.dead_lettered,
                    oldest,
                    s.disabled.is_some(),
                );
                if let Some(why) = &s.disabled {
                    tracing::error!(endpoint = name, reason = %why, backlog = s.pending,
                                    "deliveries endpoint disabled: its events wait (paynotify deliveries enable)");
                }
                endpoint.cursor.fetch_max(s.cursor, Ordering::SeqCst);
                endpoint
                    .disabled
                    .store(s.disabled.is_some(), Ordering::SeqCst);
                let failing_too_long = s.failing_since.filter(|since| {
                    now - *since >= Duration::from_secs(self.settings.disable_after_secs)
                });
                if let (None, Some(since)) = (&s.disabled, failing_too_long) {
                    self.disable(endpoint, format!("every attempt failed since {since}"))
                        .await;
                }
            }
            Err(e) => {
                tracing::warn!(endpoint = name, error = %e, "reading the endpoint's status failed");
            }
        }
    }

    /// New outbox records become deliveries; then up to `free` due ones
    /// are claimed. How many records it moved, and the claimed deliveries.
    async fn pass(
        &self,
        endpoint: &Endpoint,
        free: usize,
    ) -> Result<(usize, Vec<Delivery>), LedgerError> {
        let moved = self.fan_out(endpoint).await?;
        if free == 0 || endpoint.disabled.load(Ordering::SeqCst) {
            return Ok((moved, Vec::new()));
        }
        let now = OffsetDateTime::now_utc();
        // Longer than an attempt can take: its wait for a rate-limit slot
        // (at most one per delivery in flight) and its timeout.
        let slots = Duration::from_secs(1) * self.settings.concurrency as u32
            / endpoint.config.max_requests_per_sec.max(1);
        let lease = now
            + slots
            + Duration::from_millis(endpoint.config.timeout_ms)
            + Duration::from_secs(5);
        let due = self
            .store
            .claim(&endpoint.config.name, now, lease, free)
            .await?;
        Ok((moved, due))
    }

    /// Moves the records past the endpoint's cursor into its deliveries.
    async fn fan_out(&self, endpoint: &Endpoint) -> Result<usize, LedgerError> {
        let e = &endpoint.config;
        let cursor = endpoint.cursor.load(Ordering::SeqCst);
        let records = self.store.outbox_after(cursor, FAN_OUT_BATCH).await?;
        let Some(last) = records.last().map(|r| r.seq) else {
            return Ok(0);
        };
        let wanted: Vec<u64> = records
            .iter()
            .filter(|r| e.wants(r.event_type, &r.source, &r.merchant))
            .map(|r| r.seq)
            .collect();
        self.store
            .enqueue(&e.name, &wanted, last, OffsetDateTime::now_utc())
            .await?;
        endpoint.cursor.fetch_max(last, Ordering::SeqCst);
        Ok(records.len())
    }

    /// Sends one delivery and records the attempt.
    async fn deliver(&self, endpoint: &Endpoint, mut d: Delivery) -> Result<(), LedgerError> {
        let name = endpoint.config.name.as_str();
        let body = bytes::Bytes::from(std::mem::take(&mut d.record.body));
        let id = d.record.event_id.as_str();
        let result = endpoint.post(id, body).await;
        let now = OffsetDateTime::now_utc();
        let attempt = match &result {
            Ok(()) => Attempt::Delivered,
            Err(r) => Attempt::Failed {
                error: r.error.clone(),
                retry_at: next_try(
                    &self.settings.retry_schedule_secs,
                    d.attempts,
                    r.retry_after,
                )
                .map(|wait| now + wait),
            },
        };
        self.store.settle(name, d.record.seq, &attempt, now).await?;
        match &attempt {
            Attempt::Delivered => {
                let lag = (now - d.record.recorded_at).try_into().ok();
                self.metrics.delivery_attempt(name, "delivered", lag);
                tracing::debug!(endpoint = name, event_id = id, payment_key = %d.record.payment_key,
                                event_type = d.record.event_type.as_str(), "delivered");
            }
            Attempt::Failed { error, retry_at } => {
                let outcome = if retry_at.is_some() {
                    "failed"
                } else {
                    "dead_lettered"
                };
                self.metrics.delivery_attempt(name, outcome, None);
                if retry_at.is_some() {
                    tracing::warn!(endpoint = name, event_id = id, payment_key = %d.record.payment_key,
                                   attempt = d.attempts + 1, error = %error, "delivery failed; trying again");
                } else {
                    tracing::error!(endpoint = name, event_id = id, payment_key = %d.record.payment_key,
                                    attempts = d.attempts + 1, error = %error,
                                    "delivery dead-lettered: the payment's later events wait (paynotify deliveries resend)");
                }
                // 410 Gone: the receiver says it is not coming back. An
                // endpoint failing for days is disabled by the status read.
                if matches!(result, Err(Refusal { gone: true, .. })) {
                    self.disable(endpoint, "the endpoint answered 410 Gone".to_owned())
                        .await;
                }
            }
        }
        Ok(())
    }

    /// Stops sending to `endpoint` (its events wait), saying `why`.
    async fn disable(&self, endpoint: &Endpoint, why: String) {
        let name = endpoint.config.name.as_str();
        endpoint.disabled.store(true, Ordering::SeqCst);
        match self.store.set_disabled(name, Some(&why)).await {
            Ok(()) => {
                tracing::error!(endpoint = name, reason = %why, "deliveries endpoint disabled")
            }
            // Disabled in this process; the next status read tries again.
            Err(e) => tracing::warn!(endpoint = name, reason = %why, error = %e,
                                     "recording that the endpoint is disabled failed"),
        }
    }
}

/// Starts delivering outgoing events when endpoints are configured (in
/// every process that runs workers: their leases keep two deliverers from
/// sending one delivery at once): from the outbox on the local backend,
/// from the webhook line on AWS.
///
/// # Errors
/// Endpoints configured on a backend without an outbox, or an endpoint
/// that cannot be set up.
pub async fn start(
    config: &Config,
    backends: &Backends,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, DeliverError> {
    if !config.deliveries.sinks.is_empty() && backends.deliveries.is_some() {
        return Err(DeliverError::SinksNeedStream);
    }
    if config.deliveries.endpoints.is_empty() {
        return Ok(None);
    }
    let Some(store) = backends.deliveries.clone() else {
        let Some(line) = backends.webhooks.clone() else {
            return Err(DeliverError::NoOutbox);
        };
        let sender = line::LineSender::new(
            &config.deliveries,
            line,
            backends.secrets.as_deref(),
            metrics.clone(),
        )
        .await?;
        return Ok(Some(tokio::spawn(sender.run(shutdown.clone()))));
    };
    let deliverer = Deliverer::new(
        &config.deliveries,
        store,
        backends.secrets.as_deref(),
        metrics.clone(),
    )
    .await?;
    Ok(Some(tokio::spawn(deliverer.run(shutdown.clone()))))
}

/// `retry-after` of a 429 or 503 answer.
fn retry_after(a: &Answer) -> Option<u64> {
    matches!(a.status, 429 | 503)
        .then_some(a.retry_after)
        .flatten()
}
