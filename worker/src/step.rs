//! One message's steps (decode, fetch, verify, apply), each with its typed error, and the one place that turns an error into a disposition.

use super::*;

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
pub(super) enum StepError {
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
pub(super) fn classify(e: StepError) -> Disposition {
    match e {
        StepError::Malformed(why) => dead(DeadLetterReason::MalformedEnvelope, why),
        StepError::MissingArchiveObject(why) => dead(DeadLetterReason::MissingArchiveObject, why),
        StepError::UnknownSource(why) => dead(DeadLetterReason::UnknownSource, why),
        StepError::Rejected { check, error } => dead(DeadLetterReason::Rejected(check), error),
        StepError::Unavailable(why) => Disposition::Retry(why),
    }
}

/// A message decoded and its envelope fetched.
pub(super) struct Fetched {
    envelope: Envelope,
    /// Where the envelope is (or would be) archived.
    location: Location,
    /// Whether the envelope came in the message itself.
    inline: bool,
    /// The item of a notification of several that this message is about.
    item: Option<u32>,
}

/// Decodes the message and, for a pointer, reads the envelope from the archive.
pub(super) async fn fetch(
    ctx: &WorkerContext,
    message: &QueueMessage,
) -> Result<Fetched, StepError> {
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
pub(super) async fn process(ctx: &WorkerContext, message: &QueueMessage) -> (Disposition, String) {
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
            let disposition = split(ctx, &envelope, location, inline, n).await;
            return (disposition, source);
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
    let disposition = apply_event(ctx, &envelope, event, &source).await;
    (disposition, source)
}

/// Applies a verified event (with the apply hook's before and after, when
/// there is one), and counts and logs what became of it.
async fn apply_event(
    ctx: &WorkerContext,
    envelope: &Envelope,
    event: paynotify_model::event::PaymentEvent,
    source: &str,
) -> Disposition {
    if let Some(hook) = &ctx.hooks.before_apply {
        hook(&event);
    }
    let ref_ = event.payment_ref.clone();
    let hook = ctx.apply_hook.as_deref();
    if let Some(hook) = hook {
        if let Err(e) = hook.before_apply(&event, envelope.received_at).await {
            return classify(StepError::Unavailable(e.to_string()));
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
                ctx.metrics.applied_after(source, latency);
            }
            info!(payment_ref = %ref_, outcome = kind.as_str(), "applied");
        }
        Disposition::Retry(why) => {
            warn!(payment_ref = %ref_, error = %why, "will retry");
        }
        _ => {}
    }
    disposition
}

/// A notification of several items, each signed on its own: the items go
/// back to the queue one by one, pointing into the archive (which must then
/// hold what came inline).
async fn split(
    ctx: &WorkerContext,
    envelope: &Envelope,
    location: Location,
    inline: bool,
    n: u32,
) -> Disposition {
    let location = if inline {
        let now = OffsetDateTime::now_utc();
        let at = archived::archived(
            ctx.archive.as_ref(),
            envelope,
            &location,
            now,
            archived::Young::Wait,
        );
        match at.await {
            Ok(at) => at,
            Err(why) => return classify(StepError::Unavailable(why)),
        }
    } else {
        location
    };
    info!(
        items = n,
        "several items, each signed on its own: queued one by one"
    );
    Disposition::Split {
        location,
        id: envelope.id.clone(),
        items: n,
    }
}
