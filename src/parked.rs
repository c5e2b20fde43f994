//! Resolving a parked event: an operator takes it out of the ledger (a
//! refund for a payment that will never arrive, an event that contradicts
//! its payment and was handled by hand), with a record of it in the archive
//! under `audit/parked-resolved/{notification id}/{ulid}.json`: the event,
//! why it waited, the operator's note, who and when. The notification stays
//! in the archive (`replay` can bring it back); `reconcile` counts a
//! notification whose event was resolved as `resolved`, not as missing.

use std::collections::HashSet;

use paynotify_shared::backend::Backends;
use paynotify_shared::envelope::{rfc3339_ms, QueuedBody};
use paynotify_shared::ports::DeadLetterReason;
use paynotify_shared::{EventKey, PaymentKey};
use serde_json::{json, Value};
use time::OffsetDateTime;

/// Where resolution records live in the archive.
pub const PREFIX: &str = "audit/parked-resolved/";

/// Takes the parked event `event_key` of `payment_key` out of the ledger
/// and records it; the record, or `None` when it is not parked there
/// (applied meanwhile, or resolved before).
///
/// # Errors
/// Ledger errors (nothing done), or archive errors after the event was
/// taken out: it is then in the error and the log, and `reconcile` reports
/// its notification as missing until it is recorded.
pub async fn resolve(
    backends: &Backends,
    payment_key: &str,
    event_key: &str,
    note: &str,
    by: &str,
) -> anyhow::Result<Option<Value>> {
    let key = PaymentKey::from_stored(payment_key);
    let Some(parked) = backends
        .ledger
        .remove_parked(&key, &EventKey::new(event_key))
        .await?
    else {
        return Ok(None);
    };
    let now = OffsetDateTime::now_utc();
    let e = &parked.event;
    let record = json!({
        "notification_id": parked.notification_id,
        "payment_key": payment_key,
        "event_key": event_key,
        "kind": e.kind.as_str(),
        "outcome": e.outcome.as_str(),
        "amount": e.amount.currency.decimal(e.amount.minor),
        "currency": e.amount.currency.as_str(),
        "parked_at": rfc3339_ms::format(parked.parked_at),
        "conflict": parked.conflict,
        "note": note,
        "by": by,
        "resolved_at": rfc3339_ms::format(now),
    });
    let path = format!(
        "{PREFIX}{}/{}.json",
        parked.notification_id,
        ulid::Ulid::new()
    );
    tracing::info!(payment_key, event_key, by, note, "parked event resolved");
    if let Err(e) = backends
        .archive
        .put(&path, record.to_string().as_bytes())
        .await
    {
        tracing::error!(record = %record, error = %e, "a resolved parked event could not be recorded");
        anyhow::bail!(
            "the parked event was taken out of the ledger, but its record could not be written \
             ({e}); reconcile reports its notification as missing until it is: {record}"
        );
    }
    Ok(Some(record))
}

/// Sets the parked event `event_key` of `payment_key` aside: its
/// notification becomes a dead letter (reason `set_aside`, the note and who
/// in its error) pointing at its archived bytes, and the event leaves the
/// ledger. A redrive brings it back once its payment can take it (applied
/// then, or parked again). The dead letter is written first: dying between
/// the two leaves the event parked and its dead letter both, whose redrive
/// is a duplicate the worker recognises, never an event in neither.
///
/// # Errors
/// Store errors.
pub async fn dead_letter(
    backends: &Backends,
    payment_key: &str,
    event_key: &str,
    note: &str,
    by: &str,
) -> anyhow::Result<SetAside> {
    let key = PaymentKey::from_stored(payment_key);
    let entry = backends.ledger.load(&key).await?;
    let Some(parked) = entry
        .parked
        .iter()
        .find(|p| p.event.event_key.as_str() == event_key)
    else {
        return Ok(SetAside::NotParked);
    };
    let id = parked.notification_id.clone();
    let Some((location, _)) = crate::views::notification::find(backends, &id).await? else {
        return Ok(SetAside::NotReceived(id));
    };
    let body = QueuedBody::pointer(&location, Some(&id), None, None);
    let reason = DeadLetterReason::SetAside.as_str();
    backends
        .dead_letters
        .put_dead_letter(&id, &body, reason, &format!("set aside by {by}: {note}"))
        .await?;
    let removed = backends
        .ledger
        .remove_parked(&key, &EventKey::new(event_key))
        .await?;
    tracing::info!(payment_key, event_key, by, note, notification_id = %id, "parked event set aside as a dead letter");
    Ok(SetAside::Done(json!({
        "notification_id": id,
        "payment_key": payment_key,
        "event_key": event_key,
        "archive_key": location.to_string(),
        "reason": reason,
        "note": note,
        "by": by,
        // Applied or resolved between the read and the removal: its dead
        // letter's redrive is then a duplicate.
        "removed": removed.is_some(),
        "dead_lettered_at": rfc3339_ms::format(OffsetDateTime::now_utc()),
    })))
}

/// What setting a parked event aside did.
#[derive(Debug)]
pub enum SetAside {
    /// Its dead letter is written and the event left the ledger: the record.
    Done(Value),
    /// Not parked there (applied meanwhile, or resolved before).
    NotParked,
    /// Its notification (this id) is not among the archive's received
    /// ones: an event of a status query or a settlement file, with nothing
    /// to redrive. Resolve it instead.
    NotReceived(String),
}

/// The notification ids whose parked events were resolved.
///
/// # Errors
/// Archive errors.
pub async fn resolved_ids(backends: &Backends) -> anyhow::Result<HashSet<String>> {
    Ok(backends
        .archive
        .list(PREFIX, None, None)
        .await?
        .iter()
        .filter_map(|k| k.strip_prefix(PREFIX)?.split('/').next().map(str::to_owned))
        .collect())
}
