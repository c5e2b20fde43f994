//! The worker: receives notifications from the queue, verifies them, applies
//! them to the ledger and settles each message with exactly one disposition
//! (DESIGN §1). [`process_one`] decides ([`apply`] plans the ledger write);
//! [`settle`] acts on the queue; [`run`]
//! is the receive loop around them.
//!
//! Two bounds, kept apart: a transient failure (a backend error, throttling)
//! is retried for `retry_for_secs` of wall time, however many receives that
//! takes, by moving the message to a fresh delivery that carries when its
//! retries began; a message that panics the worker, or is never settled, is
//! bounded by receives (and on SQS by the redrive policy).

pub mod apply;
pub mod archived;
pub mod hook;
pub mod query;
mod settle;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use paynotify_shared::backend::Backends;
use paynotify_shared::config::Config;
use paynotify_shared::config::WorkerConfig;
use paynotify_shared::envelope::{Envelope, QueuedBody};
use paynotify_shared::metrics::{Metrics, UNKNOWN_SOURCE};
use paynotify_shared::notification_span;
use paynotify_shared::ports::{
    Archive, ArchiveError, DeadLetterReason, Ledger, ParkedCounts, Queue, QueueMessage,
    PARKED_SCAN_LIMIT,
};
use paynotify_shared::scheme::{
    uses_secrets_manager, Inbound, SourceVerifier, Verified, VerifierSet,
};
use paynotify_shared::segment::{self, Location, ReadError};
use paynotify_shared::telemetry::record_txn_id;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument, Span};

pub use settle::{acknowledged, retry_delay, settle, settle_batch, Settled};
pub use stats::{Stats, StatsSnapshot};

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Durable: delete the message.
    Ack(AckKind),
    /// Transient: make the message visible again later, for up to
    /// `retry_for_secs` of wall time.
    Retry(String),
    /// Processing panicked: retried a few receives, then dead-lettered as
    /// `panic`.
    Panicked(String),
    /// Permanent: move the message to the DLQ with this reason.
    DeadLetter {
        reason: DeadLetterReason,
        error: String,
    },
    /// A notification of several items, each signed on its own, archived
    /// at `location`: queue one message per item, then delete this one.
    Split {
        location: Location,
        id: String,
        items: u32,
    },
}

/// One processed message, ready to be settled.
#[derive(Debug)]
pub struct Processed {
    pub message: QueueMessage,
    pub disposition: Disposition,
    /// The configured source it came from ([`UNKNOWN_SOURCE`] when it
    /// could not be read), for metrics.
    pub source: String,
    /// The notification's span: settling logs in it.
    pub span: Span,
}

/// Why a message was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    /// The payment's state changed.
    Applied,
    /// Recorded without a state change (in-process result, failed refund).
    Recorded,
    /// Arrived before its payment: parked in the ledger until it arrives.
    Parked,
    /// Already applied before (a PSP retry or a redelivery).
    Duplicate,
    /// Authentic, but of a type the source does not map to a payment event
    /// (a webhook's `customer.created`): archived, never applied.
    Ignored,
    /// Several items, queued one message each.
    Split,
}

impl AckKind {
    /// The `outcome` label of `paynotify_worker_acknowledged_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Recorded => "recorded",
            Self::Parked => "parked",
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
            Self::Split => "split",
        }
    }
}

/// A hook called with a verified event.
pub type EventHook = Arc<dyn Fn(&paynotify_shared::event::PaymentEvent) + Send + Sync>;

/// Test-only fault injection.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called after the ledger write and before the queue delete; returning
    /// `true` abandons the message there, as a crash would.
    pub crash_after_apply: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
    /// Called with each verified event before it is applied (a test may
    /// panic in it).
    pub before_apply: Option<EventHook>,
}

/// Everything the worker needs.
#[derive(Clone)]
pub struct WorkerContext {
    pub queue: Arc<dyn Queue>,
    pub ledger: Arc<dyn Ledger>,
    /// UnionPay's status-query watches.
    pub watches: Arc<dyn paynotify_shared::ports::WatchStore>,
    /// Where envelopes too large for the queue are fetched from.
    pub archive: Arc<dyn Archive>,
    pub verifiers: Arc<VerifierSet>,
    /// UnionPay sources' gateways, for status queries.
    pub gateways: Arc<query::Gateways>,
    /// Watch ids known to exist (see [`query::Querier::known`]).
    pub known_watches: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// What the sources' schemes add around applying an event (UnionPay's
    /// status-query watches); `None` when no source has any.
    pub apply_hook: Option<Arc<dyn hook::ApplyHook>>,
    pub config: WorkerConfig,
    pub max_receives: u32,
    pub stats: Arc<Stats>,
    pub metrics: Arc<Metrics>,
    pub hooks: Hooks,
}

pub(crate) fn dead(reason: DeadLetterReason, error: impl ToString) -> Disposition {
    Disposition::DeadLetter {
        reason,
        error: error.to_string(),
    }
}

/// Verifies, maps and applies one message; never touches the queue. Logs
/// and records the notification's fields on the current span.
pub async fn process_one(ctx: &WorkerContext, message: &QueueMessage) -> Disposition {
    process(ctx, message).await.0
}

/// Why a step of [`process`] could not go on. [`classify`] is the one
/// place that decides what happens to the message then.
#[derive(Debug)]
enum StepError {
    /// The message, or the envelope it points to, cannot be read: it never will be.
    Malformed(String),
    /// The archive object the message points to is gone or holds another
    /// notification.
    MissingArchiveObject(String),
    /// The envelope names a source the configuration does not have.
    UnknownSource(String),
    /// Verification refused the notification at this check.
    Rejected { check: &'static str, error: String },
    /// A backend failed or timed out: the same message may succeed later.
    Unavailable(String),
}

impl From<ReadError> for StepError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Envelope { source, .. } => Self::Malformed(source.to_string()),
            ReadError::Archive(ArchiveError::NotFound(k)) => {
                Self::MissingArchiveObject(format!("{k} is not in the archive"))
            }
            e @ ReadError::WrongEnvelope { .. } => Self::MissingArchiveObject(e.to_string()),
            e => Self::Unavailable(e.to_string()),
        }
    }
}

/// Retry or dead letter, and under which reason.
fn classify(e: StepError) -> Disposition {
    match e {
        StepError::Malformed(why) => dead(DeadLetterReason::MalformedEnvelope, why),
        StepError::MissingArchiveObject(why) => dead(DeadLetterReason::MissingArchiveObject, why),
        StepError::UnknownSource(why) => dead(DeadLetterReason::UnknownSource, why),
        StepError::Rejected { check, error } => dead(DeadLetterReason::Rejected(check), error),
        StepError::Unavailable(why) => Disposition::Retry(why),
    }
}

/// A message decoded and its envelope fetched.
struct Fetched {
    envelope: Envelope,
    /// Where the envelope is (or would be) archived.
    location: Location,
    /// Whether the envelope came in the message itself.
    inline: bool,
    /// The item of a notification of several that this message is about.
    item: Option<u32>,
}

/// Decodes the message and, for a pointer, reads the envelope from the archive.
async fn fetch(ctx: &WorkerContext, message: &QueueMessage) -> Result<Fetched, StepError> {
    let queued =
        QueuedBody::parse(&message.body).map_err(|e| StepError::Malformed(e.to_string()))?;
    let location = queued.location();
    Ok(match queued {
        QueuedBody::Envelope(e) => Fetched {
            envelope: *e,
            location,
            inline: true,
            item: None,
        },
        QueuedBody::Pointer {
            location, id, item, ..
        } => {
            let envelope =
                segment::read_envelope(ctx.archive.as_ref(), &location, id.as_deref()).await?;
            Fetched {
                envelope,
                location,
                inline: false,
                item,
            }
        }
    })
}

/// [`process_one`], with the configured source the message came from.
async fn process(ctx: &WorkerContext, message: &QueueMessage) -> (Disposition, String) {
    let span = Span::current();
    let unknown = || UNKNOWN_SOURCE.to_owned();
    let Fetched {
        envelope,
        location,
        inline,
        item,
    } = match fetch(ctx, message).await {
        Ok(f) => f,
        Err(e) => return (classify(e), unknown()),
    };
    span.record("notification_id", envelope.id.as_str());
    let body = match envelope.body_bytes() {
        Ok(b) => b,
        Err(e) => return (classify(StepError::Malformed(e.to_string())), unknown()),
    };
    let verifiers = ctx.verifiers.current();
    let Some(verifier) = verifiers.get(&envelope.source) else {
        let why = format!("source {:?} is not configured", envelope.source);
        return (classify(StepError::UnknownSource(why)), unknown());
    };
    let source = envelope.source.clone();
    span.record("source", source.as_str());
    span.record("stage", "verify");
    let txn_id_field = verifier.txn_id_field();
    let inbound = Inbound {
        body: &body,
        headers: &envelope.headers,
        received_at: envelope.received_at,
    };
    let verified = match item {
        Some(index) => verifier.verify_item(&source, &inbound, index),
        None => verifier.verify(&source, &inbound),
    };
    let event = match verified {
        Ok(Verified::Event(event)) => *event,
        Ok(Verified::Items(n)) => {
            // The items' messages point into the archive: make sure it holds
            // what came inline.
            let location = if inline {
                let now = OffsetDateTime::now_utc();
                let at = archived::archived(
                    ctx.archive.as_ref(),
                    &envelope,
                    &location,
                    now,
                    archived::Young::Wait,
                );
                match at.await {
                    Ok(at) => at,
                    Err(why) => return (classify(StepError::Unavailable(why)), source),
                }
            } else {
                location
            };
            info!(
                items = n,
                "several items, each signed on its own: queued one by one"
            );
            return (
                Disposition::Split {
                    location,
                    id: envelope.id.clone(),
                    items: n,
                },
                source,
            );
        }
        Ok(Verified::Ignored(what)) => {
            info!(event_type = %what, outcome = AckKind::Ignored.as_str(), "not a payment event; ignored");
            return (Disposition::Ack(AckKind::Ignored), source);
        }
        Err(e) => {
            if let Some(id) = verifier.txn_id(&body) {
                record_txn_id(&span, txn_id_field, &id);
            }
            ctx.metrics.verification_failed(&source, e.name());
            warn!(error = %e, step = e.step(), "rejected");
            let e = StepError::Rejected {
                check: e.name(),
                error: e.to_string(),
            };
            return (classify(e), source);
        }
    };
    if let Some(id) = &event.psp_txn_id {
        record_txn_id(&span, txn_id_field, id);
    }
    span.record("stage", "apply");
    if let Some(hook) = &ctx.hooks.before_apply {
        hook(&event);
    }
    let ref_ = event.payment_ref.clone();
    let hook = ctx.apply_hook.as_deref();
    if let Some(hook) = hook {
        if let Err(e) = hook.before_apply(&event, envelope.received_at).await {
            return (classify(StepError::Unavailable(e.to_string())), source);
        }
    }
    // Kept past the apply only for a hook that wants it.
    let applied = hook
        .filter(|h| h.wants_applied(&event))
        .map(|h| (h, event.clone()));
    let disposition = apply::apply(ctx.ledger.as_ref(), &envelope.id, event).await;
    if let (Disposition::Ack(AckKind::Applied), Some((hook, event))) = (&disposition, applied) {
        if let Err(e) = hook.after_applied(&event, &envelope.id).await {
            warn!(error = %e, "the hook after an applied notification failed");
        }
    }
    match &disposition {
        Disposition::Ack(kind) => {
            if *kind == AckKind::Applied {
                let latency = OffsetDateTime::now_utc() - envelope.received_at;
                let latency = latency.unsigned_abs();
                ctx.stats.record_latency(latency.as_micros() as u64);
                ctx.metrics.applied_after(&source, latency);
            }
            info!(payment_ref = %ref_, outcome = kind.as_str(), "applied");
        }
        Disposition::Retry(why) => {
            warn!(payment_ref = %ref_, error = %why, "will retry");
        }
        _ => {}
    }
    (disposition, source)
}

/// Processes received messages concurrently, each in its notification's
/// span. A message whose processing panics is not lost: it is logged with
/// its notification id and settled as `Panicked`.
pub async fn process_batch(ctx: &WorkerContext, messages: Vec<QueueMessage>) -> Vec<Processed> {
    // Each task shares its message (the body is not copied); when the task
    // ends, its handle is the only one left.
    let handles: Vec<_> = messages
        .into_iter()
        .map(|message| {
            let (ctx, m) = (ctx.clone(), Arc::new(message));
            let span = notification_span!("receive");
            span.record("message_id", m.id.as_str());
            let task = {
                let m = m.clone();
                tokio::spawn(async move { process(&ctx, &m).await }.instrument(span.clone()))
            };
            (m, span, task)
        })
        .collect();
    let mut done = Vec::with_capacity(handles.len());
    for (message, span, handle) in handles {
        let (disposition, source) = match handle.await {
            Ok(d) => d,
            Err(e) => {
                let why = panic_text(e);
                let notification_id = QueuedBody::parse(&message.body)
                    .map(|b| b.notification_id())
                    .unwrap_or_default();
                span.record("notification_id", notification_id.as_str());
                span.in_scope(|| error!(error = %why, "processing panicked"));
                (Disposition::Panicked(why), UNKNOWN_SOURCE.to_owned())
            }
        };
        let message = Arc::try_unwrap(message).unwrap_or_else(|m| (*m).clone());
        done.push(Processed {
            message,
            disposition,
            source,
            span,
        });
    }
    done
}

fn panic_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return format!("processing was cancelled: {e}");
    }
    let payload = e.into_panic();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    format!("panic: {text}")
}

/// Receives and processes until `shutdown` is cancelled, then finishes the
/// messages in hand and returns. `concurrency` receive loops each take up to
/// `receive_batch` messages per call and process them concurrently, so one
/// receive (and, on SQS, one batched delete) serves many notifications.
///
/// A receive in flight at shutdown is not dropped: the queue may already
/// have taken its messages (hidden for the visibility timeout), and a
/// dropped reply would leave them hidden and unprocessed. Shutdown waits
/// for it (at most `receive_wait_ms`, 20 s on SQS) and settles what it
/// brought.
pub async fn run(ctx: WorkerContext, shutdown: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..ctx.config.concurrency.max(1) {
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        tasks.spawn(async move {
            let wait = Duration::from_millis(ctx.config.receive_wait_ms);
            while !shutdown.is_cancelled() {
                let received = ctx
                    .queue
                    .receive(ctx.config.receive_batch.clamp(1, 10), wait)
                    .await;
                let messages = match received {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(error = %e, "receive failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                let done = process_batch(&ctx, messages).await;
                settle_batch(&ctx, done).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

impl WorkerContext {
    /// Builds the worker for `config` on `backends` and starts its
    /// background tasks ([`WorkerContext::build`], then
    /// [`WorkerContext::spawn_refresh`] and [`watch_parked`] every
    /// `worker.parked_check_secs`), until `shutdown`.
    ///
    /// # Errors
    /// When a source's certificates cannot be read or do not chain.
    pub async fn start(
        config: &Config,
        backends: &Backends,
        stats: Arc<Stats>,
        metrics: Arc<Metrics>,
        hooks: Hooks,
        shutdown: &CancellationToken,
    ) -> Result<Self, paynotify_shared::config::ConfigError> {
        let ctx = Self::build(config, backends, stats, metrics, hooks).await?;
        ctx.spawn_refresh(config, backends, shutdown);
        tokio::spawn(watch_parked(
            backends.ledger.clone(),
            config.worker.parked_alert_secs,
            Duration::from_secs(config.worker.parked_check_secs.max(1)),
            shutdown.clone(),
        ));
        if ctx.gateways.any_auto() {
            tokio::spawn(query::watch_queries(
                ctx.querier(),
                Duration::from_secs(config.worker.query_check_secs.max(1)),
                shutdown.clone(),
            ));
        }
        Ok(ctx)
    }

    /// Builds the worker for `config` on `backends`, loading every source's
    /// verifier; starts nothing.
    ///
    /// # Errors
    /// When a source's certificates cannot be read or do not chain.
    pub async fn build(
        config: &Config,
        backends: &Backends,
        stats: Arc<Stats>,
        metrics: Arc<Metrics>,
        hooks: Hooks,
    ) -> Result<Self, paynotify_shared::config::ConfigError> {
        // The worker's verifiers and gateways are its querier's.
        let q = query::Querier::build(config, backends).await?;
        Ok(Self {
            queue: backends.queue.clone(),
            ledger: backends.ledger.clone(),
            watches: backends.watches.clone(),
            archive: backends.archive.clone(),
            verifiers: q.verifiers,
            apply_hook: query::StatusQueries::hook(backends.watches.clone(), &q.gateways),
            gateways: q.gateways,
            known_watches: q.known,
            config: config.worker.clone(),
            max_receives: config.backend.max_receives,
            stats,
            metrics,
            hooks,
        })
    }

    /// What asks UnionPay about late payments, on this worker's ports.
    pub fn querier(&self) -> query::Querier {
        query::Querier {
            archive: self.archive.clone(),
            ledger: self.ledger.clone(),
            watches: self.watches.clone(),
            verifiers: self.verifiers.clone(),
            gateways: self.gateways.clone(),
            metrics: Some(self.metrics.clone()),
            known: self.known_watches.clone(),
        }
    }

    /// When a certificate comes from Secrets Manager, starts the task that
    /// reloads the verifiers every `backend.aws.secrets_refresh_secs` until
    /// `shutdown` ([`refresh_verifiers`]).
    pub fn spawn_refresh(
        &self,
        config: &Config,
        backends: &Backends,
        shutdown: &CancellationToken,
    ) {
        if uses_secrets_manager(config) {
            tokio::spawn(refresh_verifiers(
                self.verifiers.clone(),
                config.clone(),
                backends.secrets.clone(),
                Duration::from_secs(config.backend.aws.secrets_refresh_secs.max(1)),
                shutdown.clone(),
            ));
        }
    }
}

/// Every `every` until `shutdown`, [`check_parked`].
pub async fn watch_parked(
    ledger: Arc<dyn Ledger>,
    alert_secs: u64,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {},
            () = shutdown.cancelled() => return,
        }
        // A failure is logged by `check_parked`; the next round tries again.
        let _ = check_parked(ledger.as_ref(), alert_secs).await;
    }
}

/// Reads the parked events and, when some are older than `alert_secs` or
/// contradict their payment, logs one warning `parked events need
/// attention` with `overdue` and `conflicted` counts (the stacks' log metric
/// filters alarm on it; `/metrics` has the same counts as gauges where
/// Prometheus scrapes).
///
/// # Errors
/// When the ledger cannot be read (logged as well).
pub async fn check_parked(
    ledger: &dyn Ledger,
    alert_secs: u64,
) -> Result<ParkedCounts, paynotify_shared::ports::LedgerError> {
    let now = OffsetDateTime::now_utc();
    match ledger.parked_before(now, PARKED_SCAN_LIMIT).await {
        Ok(parked) => {
            let counts = ParkedCounts::of(&parked, now, alert_secs);
            if counts.overdue + counts.conflicted > 0 {
                warn!(
                    overdue = counts.overdue,
                    conflicted = counts.conflicted,
                    "parked events need attention"
                );
            }
            Ok(counts)
        }
        Err(e) => {
            warn!(error = %e, "reading parked events failed");
            Err(e)
        }
    }
}

/// Reloads every source's certificates each `every` (from files or Secrets
/// Manager) until `shutdown`, so a rotated certificate is used without a
/// restart. A failed reload keeps the verifiers in use and is logged.
pub async fn refresh_verifiers(
    set: Arc<VerifierSet>,
    config: Config,
    secrets: Option<Arc<dyn paynotify_shared::ports::SecretStore>>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {},
            () = shutdown.cancelled() => return,
        }
        match SourceVerifier::all(&config, secrets.as_deref()).await {
            Ok(v) => set.replace(v),
            Err(e) => warn!(error = %e, "reloading certificates failed; keeping the current ones"),
        }
    }
}
