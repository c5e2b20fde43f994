//! The worker: receives notifications from the queue, verifies them, applies
//! them to the ledger and settles each message with exactly one disposition
//! (DESIGN §1). [`process_one`] decides; [`settle`] acts on the queue; [`run`]
//! is the receive loop around them.

mod stats;

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use paynotify_shared::backend::Backends;
use paynotify_shared::config::Config;
use paynotify_shared::config::WorkerConfig;
use paynotify_shared::envelope::{Envelope, QueuedBody};
use paynotify_shared::ports::{
    ApplyOutcome, Archive, ArchiveError, Ledger, Queue, QueueError, QueueMessage,
};
use paynotify_shared::scheme::{uses_secrets_manager, SourceVerifier, VerifierSet};
use paynotify_shared::{transition, Transition};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use stats::{Stats, StatsSnapshot};

/// How often `apply` is retried after a version conflict before the message
/// is retried through the queue.
const MAX_VERSION_CONFLICTS: u32 = 5;
/// An event that arrives before its payment is looked at again this many
/// times, pausing a little longer each time, before it goes back to the queue.
const EARLY_EVENT_LOOKS: u32 = 3;
const EARLY_EVENT_PAUSE: Duration = Duration::from_millis(20);

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Durable: delete the message.
    Ack(AckKind),
    /// Transient: make the message visible again later.
    Retry(String),
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
    /// Already applied before (a PSP retry or a redelivery).
    Duplicate,
}

/// Test-only fault injection.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Called after the ledger write and before the queue delete; returning
    /// `true` abandons the message there, as a crash would.
    pub crash_after_apply: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
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

fn dead(reason: &str, error: impl ToString) -> Disposition {
    Disposition::DeadLetter {
        reason: reason.to_owned(),
        error: error.to_string(),
    }
}

/// Verifies, maps and applies one message; never touches the queue.
pub async fn process_one(ctx: &WorkerContext, message: &QueueMessage) -> Disposition {
    let envelope = match QueuedBody::parse(&message.body) {
        Ok(QueuedBody::Envelope(e)) => *e,
        Ok(QueuedBody::Pointer(key)) => match ctx.archive.get(&key).await {
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
    let mut early_looks = 0;
    for _ in 0..MAX_VERSION_CONFLICTS + EARLY_EVENT_LOOKS {
        let current = match ctx.ledger.get_payment(&event.payment_key).await {
            Ok(c) => c,
            Err(e) => return Disposition::Retry(e.to_string()),
        };
        let expected = current.as_ref().map_or(0, |s| s.version);
        let (new_state, kind) = match transition(current.as_ref(), &event) {
            Transition::Apply(s) => (Some(s), AckKind::Applied),
            Transition::Record => (None, AckKind::Recorded),
            // A redelivery of an applied event looks like a conflict or an
            // early event to the state machine: it is a duplicate.
            Transition::Retry(why) | Transition::Conflict(why)
                if ctx
                    .ledger
                    .contains_event(&event.payment_key, &event.event_key)
                    .await
                    .unwrap_or(false) =>
            {
                let _ = why;
                return Disposition::Ack(AckKind::Duplicate);
            }
            // The payment may be in flight in this very batch: look again
            // shortly before paying a queue round trip of a second or more.
            Transition::Retry(_) if early_looks < EARLY_EVENT_LOOKS => {
                early_looks += 1;
                tokio::time::sleep(EARLY_EVENT_PAUSE * early_looks).await;
                continue;
            }
            Transition::Retry(why) => return Disposition::Retry(why),
            Transition::Conflict(why) => return dead("conflict", why),
        };
        match ctx
            .ledger
            .apply(&event, &envelope.id, new_state.as_ref(), expected)
            .await
        {
            Ok(ApplyOutcome::Applied) => {
                let latency = OffsetDateTime::now_utc() - envelope.received_at;
                ctx.stats
                    .record_latency(latency.whole_microseconds().max(0) as u64);
                info!(notification_id = %envelope.id, source = %envelope.source, payment_ref = %event.payment_ref,
                      stage = "apply", status = new_state.as_ref().map(|s| s.status.as_str()), "applied");
                return Disposition::Ack(kind);
            }
            Ok(ApplyOutcome::Duplicate) => return Disposition::Ack(AckKind::Duplicate),
            Ok(ApplyOutcome::VersionConflict) => continue,
            Err(e) => return Disposition::Retry(e.to_string()),
        }
    }
    Disposition::Retry("payment changed concurrently too often".into())
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

/// Acts on the queue for `disposition`: delete, delay, or dead-letter. On the
/// last allowed receive a retry becomes a dead letter with the last error.
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
        Disposition::Retry(why) if message.receive_count >= ctx.max_receives => {
            ctx.queue
                .dead_letter(message, "retries_exhausted", why)
                .await?;
            stats.dead_letter("retries_exhausted");
        }
        Disposition::Retry(_) => {
            let delay = retry_delay(&ctx.config, message.receive_count);
            ctx.queue
                .delay(&message.receipt, delay.as_secs_f64().ceil().max(1.0) as u32)
                .await?;
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
                let mut batch = tokio::task::JoinSet::new();
                for message in messages {
                    let ctx = ctx.clone();
                    batch.spawn(async move {
                        let disposition = process_one(&ctx, &message).await;
                        (message, disposition)
                    });
                }
                let mut done = Vec::new();
                while let Some(result) = batch.join_next().await {
                    if let Ok(pair) = result {
                        done.push(pair);
                    }
                }
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
