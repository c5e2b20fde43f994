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

use paynotify_config::Config;
use paynotify_config::WorkerConfig;
use paynotify_ports::Backends;
use paynotify_ports::{
    Archive, ArchiveError, DeadLetterReason, Ledger, ParkedCounts, Queue, QueueMessage,
    PARKED_SCAN_LIMIT,
};
use paynotify_records::envelope::{Envelope, QueuedBody};
use paynotify_records::segment::{self, Location, ReadError};
use paynotify_runtime::metrics::{Metrics, UNKNOWN_SOURCE};
use paynotify_runtime::notification_span;
use paynotify_runtime::scheme::{
    uses_secrets_manager, Inbound, SourceVerifier, Verified, VerifierSet,
};
use paynotify_runtime::telemetry::record_txn_id;
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
pub type EventHook = Arc<dyn Fn(&paynotify_model::event::PaymentEvent) + Send + Sync>;

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
    pub watches: Arc<dyn paynotify_ports::WatchStore>,
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

mod context;
mod step;

pub use context::*;
pub(crate) use step::dead;
pub use step::process_one;
use step::*;

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
