//! The worker: receives notifications from the queue, verifies them, applies
//! them to the ledger and settles each message with exactly one disposition
//! (DESIGN §1). [`process_one`] decides; [`settle`] acts on the queue; [`run`]
//! is the receive loop around them.
//!
//! Two bounds, kept apart: a transient failure (a backend error, throttling)
//! is retried for `retry_for_secs` of wall time, however many receives that
//! takes, by moving the message to a fresh delivery that carries when its
//! retries began; a message that panics the worker, or is never settled, is
//! bounded by receives (and on SQS by the redrive policy).

pub mod apply;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use paynotify_shared::backend::Backends;
use paynotify_shared::config::Config;
use paynotify_shared::config::WorkerConfig;
use paynotify_shared::envelope::{Envelope, QueuedBody, RetryState};
use paynotify_shared::ports::{Archive, ArchiveError, Ledger, Queue, QueueError, QueueMessage};
use paynotify_shared::scheme::{uses_secrets_manager, SourceVerifier, VerifierSet};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

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
    DeadLetter { reason: String, error: String },
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
    /// Where envelopes too large for the queue are fetched from.
    pub archive: Arc<dyn Archive>,
    pub verifiers: Arc<VerifierSet>,
    pub config: WorkerConfig,
    pub max_receives: u32,
    pub stats: Arc<Stats>,
    pub hooks: Hooks,
}

pub(crate) fn dead(reason: &str, error: impl ToString) -> Disposition {
    Disposition::DeadLetter {
        reason: reason.to_owned(),
        error: error.to_string(),
    }
}

/// Verifies, maps and applies one message; never touches the queue.
pub async fn process_one(ctx: &WorkerContext, message: &QueueMessage) -> Disposition {
    let envelope = match QueuedBody::parse(&message.body) {
        Ok(QueuedBody::Envelope(e)) => *e,
        Ok(QueuedBody::Pointer {
            archive_key: key, ..
        }) => match ctx.archive.get(&key).await {
            Ok(bytes) => match Envelope::from_json(&bytes) {
                Ok(e) => e,
                Err(e) => return dead("malformed_envelope", e),
            },
            Err(ArchiveError::NotFound(k)) => {
                return dead(
                    "missing_archive_object",
                    format!("{k} is not in the archive"),
                )
            }
            Err(e) => return Disposition::Retry(e.to_string()),
        },
        Err(e) => return dead("malformed_envelope", e),
    };
    let body = match envelope.body_bytes() {
        Ok(b) => b,
        Err(e) => return dead("malformed_envelope", e),
    };
    let verifiers = ctx.verifiers.current();
    let Some(verifier) = verifiers.get(&envelope.source) else {
        return dead(
            "unknown_source",
            format!("source {:?} is not configured", envelope.source),
        );
    };
    let event = match verifier.verify(&envelope.source, &body, envelope.received_at) {
        Ok(event) => event,
        Err(e) => {
            warn!(notification_id = %envelope.id, source = %envelope.source, stage = "verify", error = %e, "rejected");
            return dead(e.name(), e);
        }
    };
    if let Some(hook) = &ctx.hooks.before_apply {
        hook(&event);
    }
    let ref_ = event.payment_ref.clone();
    let disposition = apply::apply(ctx.ledger.as_ref(), &envelope.id, event).await;
    match &disposition {
        Disposition::Ack(kind @ (AckKind::Applied | AckKind::Parked)) => {
            if *kind == AckKind::Applied {
                let latency = OffsetDateTime::now_utc() - envelope.received_at;
                ctx.stats
                    .record_latency(latency.whole_microseconds().max(0) as u64);
            }
            info!(notification_id = %envelope.id, source = %envelope.source, payment_ref = %ref_,
                  stage = "apply", outcome = ?kind, "applied");
        }
        Disposition::Retry(why) => {
            warn!(notification_id = %envelope.id, source = %envelope.source, payment_ref = %ref_,
                  stage = "apply", error = %why, "will retry");
        }
        _ => {}
    }
    disposition
}

/// The visibility delay before the `receive_count`-th retry: exponential from
/// `retry_min_delay_ms` up to `retry_max_delay_secs`, with jitter.
pub fn retry_delay(config: &WorkerConfig, receive_count: u32) -> Duration {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(config.retry_min_delay_ms))
        .with_max_delay(Duration::from_secs(config.retry_max_delay_secs))
        .with_jitter()
        .without_max_times()
        .build()
        .nth(receive_count.saturating_sub(1) as usize)
        .unwrap_or(Duration::from_secs(config.retry_max_delay_secs))
}

/// The receive at which a retried message moves to a fresh delivery (and
/// a panicking one is dead-lettered): two short of the queue's limit, so a
/// failed settle or a crash still leaves a receive before the redrive.
fn last_own_receive(max_receives: u32) -> u32 {
    max_receives.saturating_sub(2).max(1)
}

/// Acts on the queue for `disposition`: delete, delay, re-enqueue or
/// dead-letter.
///
/// A `Retry` is dead-lettered as `retries_exhausted` once its retries have
/// lasted `retry_for_secs` (counted from the first receive of the first
/// delivery). Before that, the message is made invisible for the next delay
/// or, near the queue's receive limit, sent again as a pointer that carries
/// when its retries began and how many there were, and the old delivery is
/// deleted. A `Panicked` message is dead-lettered as `panic` at that receive.
///
/// # Errors
/// Queue errors; the message then reappears after its visibility timeout.
pub async fn settle(
    ctx: &WorkerContext,
    message: &QueueMessage,
    disposition: &Disposition,
) -> Result<(), QueueError> {
    let stats = &ctx.stats;
    match disposition {
        Disposition::Ack(kind) => {
            if crashes_after_apply(ctx) {
                return Ok(());
            }
            ctx.queue.delete(&message.receipt).await?;
            stats.ack(*kind);
        }
        Disposition::Retry(why) => retry(ctx, message, why).await?,
        Disposition::Panicked(why)
            if message.receive_count >= last_own_receive(ctx.max_receives) =>
        {
            ctx.queue.dead_letter(message, "panic", why).await?;
            warn!(message_id = %message.id, stage = "dead_letter", reason = "panic", "dead-lettered");
            stats.dead_letter("panic");
        }
        Disposition::Panicked(_) => {
            let delay = retry_delay(&ctx.config, message.receive_count);
            ctx.queue.delay(&message.receipt, whole_secs(delay)).await?;
            stats.retry();
        }
        Disposition::DeadLetter { reason, error } => {
            ctx.queue.dead_letter(message, reason, error).await?;
            warn!(message_id = %message.id, stage = "dead_letter", reason = %reason, "dead-lettered");
            stats.dead_letter(reason);
        }
    }
    Ok(())
}

fn whole_secs(d: Duration) -> u32 {
    d.as_secs_f64().ceil().clamp(1.0, f64::from(u32::MAX)) as u32
}

/// Settles a transient failure (see [`settle`]).
async fn retry(ctx: &WorkerContext, message: &QueueMessage, why: &str) -> Result<(), QueueError> {
    let now = OffsetDateTime::now_utc();
    let carried = QueuedBody::parse(&message.body).ok();
    let earlier = carried.as_ref().and_then(QueuedBody::retry);
    let since = earlier
        .map(|r| r.since)
        .or(message.first_received_at)
        .unwrap_or(now);
    let attempts = earlier.map_or(0, |r| r.attempts) + message.receive_count;
    let elapsed = now - since;
    if elapsed >= time::Duration::seconds(ctx.config.retry_for_secs as i64) {
        let error = format!("{why} (retried {attempts} times over {elapsed})");
        ctx.queue
            .dead_letter(message, "retries_exhausted", &error)
            .await?;
        warn!(message_id = %message.id, stage = "dead_letter", reason = "retries_exhausted", "dead-lettered");
        ctx.stats.dead_letter("retries_exhausted");
        return Ok(());
    }
    let delay = whole_secs(retry_delay(&ctx.config, attempts));
    match carried.as_ref().map(QueuedBody::archive_key) {
        Some(key) if message.receive_count >= last_own_receive(ctx.max_receives) => {
            // Sent before the delete: a crash between leaves a duplicate
            // delivery, which applying idempotently absorbs; never none.
            let body = QueuedBody::pointer_json_with(&key, Some(RetryState { since, attempts }));
            ctx.queue
                .send_delayed(&body, delay.min(ctx.queue.max_delay_secs()))
                .await?;
            ctx.queue.delete(&message.receipt).await?;
        }
        _ => ctx.queue.delay(&message.receipt, delay).await?,
    }
    ctx.stats.retry();
    Ok(())
}

/// The test fault hook: abandon an acknowledged message before its delete.
fn crashes_after_apply(ctx: &WorkerContext) -> bool {
    ctx.hooks
        .crash_after_apply
        .as_ref()
        .is_some_and(|crash| crash())
}

/// Settles a received batch: acknowledged messages are deleted together in
/// one call (one `DeleteMessageBatch` on SQS), the others one by one.
pub async fn settle_batch(ctx: &WorkerContext, results: Vec<(QueueMessage, Disposition)>) {
    let mut acked = Vec::new();
    for (message, disposition) in &results {
        match disposition {
            Disposition::Ack(kind) => {
                if crashes_after_apply(ctx) {
                    continue;
                }
                acked.push((message.receipt.clone(), *kind));
            }
            other => {
                if let Err(e) = settle(ctx, message, other).await {
                    warn!(message_id = %message.id, error = %e, "settling failed; the message will be redelivered");
                }
            }
        }
    }
    let receipts: Vec<_> = acked.iter().map(|(r, _)| r.clone()).collect();
    match ctx.queue.delete_batch(&receipts).await {
        Ok(()) => acked.iter().for_each(|(_, kind)| ctx.stats.ack(*kind)),
        Err(e) => {
            warn!(error = %e, count = receipts.len(), "deleting acknowledged messages failed; they will be redelivered as duplicates")
        }
    }
}

/// Processes received messages concurrently. A message whose processing
/// panics is not lost: it is logged with its notification id and settled as
/// `Panicked`.
pub async fn process_batch(
    ctx: &WorkerContext,
    messages: Vec<QueueMessage>,
) -> Vec<(QueueMessage, Disposition)> {
    let handles: Vec<_> = messages
        .into_iter()
        .map(|message| {
            let (ctx, m) = (ctx.clone(), message.clone());
            (
                message,
                tokio::spawn(async move { process_one(&ctx, &m).await }),
            )
        })
        .collect();
    let mut done = Vec::with_capacity(handles.len());
    for (message, handle) in handles {
        let disposition = match handle.await {
            Ok(d) => d,
            Err(e) => {
                let why = panic_text(e);
                let notification_id = QueuedBody::parse(&message.body)
                    .map(|b| b.notification_id())
                    .unwrap_or_default();
                error!(message_id = %message.id, notification_id = %notification_id, error = %why,
                       "processing panicked");
                Disposition::Panicked(why)
            }
        };
        done.push((message, disposition));
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
pub async fn run(ctx: WorkerContext, shutdown: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..ctx.config.concurrency.max(1) {
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        tasks.spawn(async move {
            let wait = Duration::from_millis(ctx.config.receive_wait_ms);
            while !shutdown.is_cancelled() {
                let received = tokio::select! {
                    r = ctx.queue.receive(ctx.config.receive_batch.clamp(1, 10), wait) => r,
                    () = shutdown.cancelled() => break,
                };
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
    /// Builds the worker for `config` on `backends`: loads every source's
    /// verifier and, when a certificate comes from Secrets Manager, starts
    /// the task that reloads them until `shutdown`.
    ///
    /// # Errors
    /// When a source's certificates cannot be read or do not chain.
    pub async fn start(
        config: &Config,
        backends: &Backends,
        stats: Arc<Stats>,
        hooks: Hooks,
        shutdown: &CancellationToken,
    ) -> Result<Self, paynotify_shared::config::ConfigError> {
        let verifiers = Arc::new(VerifierSet::new(
            SourceVerifier::all(config, backends.secrets.as_ref()).await?,
        ));
        if uses_secrets_manager(config) {
            tokio::spawn(refresh_verifiers(
                verifiers.clone(),
                config.clone(),
                backends.secrets.clone(),
                Duration::from_secs(config.backend.aws.secrets_refresh_secs.max(1)),
                shutdown.clone(),
            ));
        }
        Ok(Self {
            queue: backends.queue.clone(),
            ledger: backends.ledger.clone(),
            archive: backends.archive.clone(),
            verifiers,
            config: config.worker.clone(),
            max_receives: config.backend.max_receives,
            stats,
            hooks,
        })
    }
}

/// Reloads every source's certificates each `every` (from files or Secrets
/// Manager) until `shutdown`, so a rotated certificate is used without a
/// restart. A failed reload keeps the verifiers in use and is logged.
pub async fn refresh_verifiers(
    set: Arc<VerifierSet>,
    config: Config,
    secrets: Option<aws_sdk_secretsmanager::Client>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {},
            () = shutdown.cancelled() => return,
        }
        match SourceVerifier::all(&config, secrets.as_ref()).await {
            Ok(v) => set.replace(v),
            Err(e) => warn!(error = %e, "reloading certificates failed; keeping the current ones"),
        }
    }
}
