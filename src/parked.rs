//! Resolving a parked event: an operator takes it out of the ledger (a
//! refund for a payment that will never arrive, an event that contradicts
//! its payment and was handled by hand), with a record of it in the archive
//! under `audit/parked-resolved/{notification id}/{ulid}.json`: the event,
//! why it waited, the operator's note, who and when. The notification stays
//! in the archive (`replay` can bring it back); `reconcile` counts a
//! notification whose event was resolved as `resolved`, not as missing.

use std::collections::HashSet;

use paynotify_shared::backend::Backends;
use paynotify_shared::envelope::rfc3339_ms;
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
