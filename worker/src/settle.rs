//! Settling a processed message on the queue: delete, delay, send again
//! to keep retrying past the receive limit, or dead-letter (DESIGN §1).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use paynotify_config::WorkerConfig;
use paynotify_ports::{DeadLetterReason, QueueError};
use paynotify_records::envelope::{QueuedBody, RetryState};
use paynotify_records::segment::Location;
use time::OffsetDateTime;
use tracing::{warn, Instrument, Span};

use crate::archived::{archived, Young};
use crate::{AckKind, Disposition, Processed, WorkerContext};

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

/// Where a settled message is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Off the queue: deleted, dead-lettered, or moved to a fresh delivery.
    Done,
    /// Still on the queue, invisible until its retry delay has passed.
    Delayed,
    /// Left as it was (the test hook that abandons a message before its
    /// delete); it reappears after its visibility timeout.
    Abandoned,
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
pub async fn settle(ctx: &WorkerContext, processed: &Processed) -> Result<Settled, QueueError> {
    let Processed {
        message,
        disposition,
        source,
        ..
    } = processed;
    match disposition {
        Disposition::Ack(kind) => {
            if crashes_after_apply(ctx) {
                return Ok(Settled::Abandoned);
            }
            deleted(ctx, &[(source, *kind)], ctx.queue.delete(&message.receipt)).await?;
            Ok(Settled::Done)
        }
        Disposition::Retry(why) => retry(ctx, processed, why).await,
        Disposition::Panicked(why)
            if message.receive_count >= last_own_receive(ctx.max_receives) =>
        {
            dead_letter(ctx, processed, DeadLetterReason::Panic, why).await
        }
        Disposition::Panicked(_) => {
            let delay = retry_delay(&ctx.config, message.receive_count);
            ctx.queue.delay(&message.receipt, whole_secs(delay)).await?;
            retried(ctx, source);
            Ok(Settled::Delayed)
        }
        Disposition::DeadLetter { reason, error } => {
            dead_letter(ctx, processed, *reason, error).await
        }
        Disposition::Split {
            location,
            id,
            items,
        } => split(ctx, processed, location, id, *items).await,
    }
}

/// Queues one pointer message per item of the notification, then deletes
/// this message. A failure before the delete leaves the message to come
/// back and be split again: items already queued are then queued twice,
/// which applying idempotently absorbs (an item that fails verification
/// is then dead-lettered twice).
async fn split(
    ctx: &WorkerContext,
    processed: &Processed,
    location: &Location,
    id: &str,
    items: u32,
) -> Result<Settled, QueueError> {
    let message = &processed.message;
    let bodies: Vec<Vec<u8>> = (0..items)
        .map(|i| QueuedBody::pointer(location, Some(id), None, Some(i)))
        .collect();
    for chunk in bodies.chunks(10) {
        ctx.queue.send_batch(chunk).await?;
    }
    deleted(
        ctx,
        &[(&processed.source, AckKind::Split)],
        ctx.queue.delete(&message.receipt),
    )
    .await?;
    Ok(Settled::Done)
}

/// Counts an acknowledged message in the demo's stats and the metrics.
pub fn acknowledged(ctx: &WorkerContext, source: &str, kind: AckKind) {
    ctx.stats.ack(kind);
    ctx.metrics.acknowledged(source, kind.as_str());
}

/// Runs `delete` of the messages `acked` (each its source and how it was
/// acknowledged), counted in the stats before it (whoever sees the queue
/// without them sees them counted; taken back if the delete fails) and in
/// the metrics after it.
async fn deleted(
    ctx: &WorkerContext,
    acked: &[(&str, AckKind)],
    delete: impl std::future::Future<Output = Result<(), QueueError>>,
) -> Result<(), QueueError> {
    for (_, kind) in acked {
        ctx.stats.ack(*kind);
    }
    if let Err(e) = delete.await {
        for (_, kind) in acked {
            ctx.stats.unack(*kind);
        }
        return Err(e);
    }
    for (source, kind) in acked {
        ctx.metrics.acknowledged(source, kind.as_str());
    }
    Ok(())
}

/// Counts a retry in the demo's stats and the metrics.
fn retried(ctx: &WorkerContext, source: &str) {
    ctx.stats.retry();
    ctx.metrics.retried(source);
}

/// Moves the message to the DLQ with its reason, logs and counts it.
async fn dead_letter(
    ctx: &WorkerContext,
    processed: &Processed,
    reason: DeadLetterReason,
    error: &str,
) -> Result<Settled, QueueError> {
    Span::current().record("stage", "dead_letter");
    let reason = reason.as_str();
    // Counted first, as an acknowledgement (see `deleted`).
    ctx.stats.dead_letter(reason);
    if let Err(e) = ctx
        .queue
        .dead_letter(&processed.message, reason, error)
        .await
    {
        ctx.stats.undo_dead_letter(reason);
        return Err(e);
    }
    warn!(reason = %reason, error = %error, "dead-lettered");
    ctx.metrics.dead_lettered(&processed.source, reason);
    Ok(Settled::Done)
}

fn whole_secs(d: Duration) -> u32 {
    d.as_secs_f64().ceil().clamp(1.0, f64::from(u32::MAX)) as u32
}

/// Settles a transient failure (see [`settle`]).
async fn retry(
    ctx: &WorkerContext,
    processed: &Processed,
    why: &str,
) -> Result<Settled, QueueError> {
    let message = &processed.message;
    Span::current().record("stage", "retry");
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
        return dead_letter(ctx, processed, DeadLetterReason::RetriesExhausted, &error).await;
    }
    let delay = whole_secs(retry_delay(&ctx.config, attempts));
    match &carried {
        Some(carried) if message.receive_count >= last_own_receive(ctx.max_receives) => {
            let retry = RetryState { since, attempts };
            let body = match carried {
                // The fresh delivery is a pointer: make sure the archive
                // holds what came inline.
                QueuedBody::Envelope(e) => {
                    let location = carried.location();
                    let at = archived(ctx.archive.as_ref(), e, &location, now, Young::ArchiveNow);
                    match at.await {
                        Ok(at) => QueuedBody::pointer(&at, Some(&e.id), Some(retry), None),
                        Err(e) => {
                            // Left on the queue: the next receive tries again
                            // (and the queue's own limit still holds).
                            warn!(error = %e, "cannot move the message to a fresh delivery");
                            ctx.queue.delay(&message.receipt, delay).await?;
                            retried(ctx, &processed.source);
                            return Ok(Settled::Delayed);
                        }
                    }
                }
                QueuedBody::Pointer { .. } => carried.retried(retry),
            };
            // Sent before the delete: a crash between leaves a duplicate
            // delivery, which applying idempotently absorbs; never none.
            ctx.queue
                .send_delayed(&body, delay.min(ctx.queue.max_delay_secs()))
                .await?;
            ctx.queue.delete(&message.receipt).await?;
            retried(ctx, &processed.source);
            Ok(Settled::Done)
        }
        _ => {
            ctx.queue.delay(&message.receipt, delay).await?;
            retried(ctx, &processed.source);
            Ok(Settled::Delayed)
        }
    }
}

/// The test fault hook: abandon an acknowledged message before its delete.
fn crashes_after_apply(ctx: &WorkerContext) -> bool {
    ctx.hooks
        .crash_after_apply
        .as_ref()
        .is_some_and(|crash| crash())
}

/// Settles a received batch: acknowledged messages are deleted together in
/// one call (one `DeleteMessageBatch` on SQS), the others one by one, each
/// in its notification's span.
pub async fn settle_batch(ctx: &WorkerContext, results: Vec<Processed>) {
    let mut acked = Vec::new();
    for processed in &results {
        match &processed.disposition {
            Disposition::Ack(kind) => {
                if crashes_after_apply(ctx) {
                    continue;
                }
                acked.push((processed, *kind));
            }
            _ => {
                let span = processed.span.clone();
                if let Err(e) = settle(ctx, processed).instrument(span.clone()).await {
                    span.in_scope(
                        || warn!(error = %e, "settling failed; the message will be redelivered"),
                    );
                }
            }
        }
    }
    if acked.is_empty() {
        return;
    }
    let receipts: Vec<_> = acked
        .iter()
        .map(|(p, _)| p.message.receipt.clone())
        .collect();
    let kinds: Vec<(&str, AckKind)> = acked
        .iter()
        .map(|(p, kind)| (p.source.as_str(), *kind))
        .collect();
    if let Err(e) = deleted(ctx, &kinds, ctx.queue.delete_batch(&receipts)).await {
        warn!(error = %e, count = receipts.len(), "deleting acknowledged messages failed; they will be redelivered as duplicates");
    }
}
