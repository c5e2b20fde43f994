//! One archived notification by its id: where the archive holds it, what
//! was received, and its verification again now, as the read API answers
//! and the console shows it (card numbers masked).

use paynotify_shared::backend::Backends;
use paynotify_shared::config::Config;
use paynotify_shared::envelope::{rfc3339_ms, Envelope};
use paynotify_shared::segment::{self, Location};
use paynotify_shared::telemetry::mask_card_numbers;
use serde_json::{json, Value};
use time::OffsetDateTime;

/// How long before a notification's own id the segment holding it may
/// have begun: a segment is open for milliseconds (`segment_window_ms`),
/// so a minute leaves room for any clock.
const SEGMENT_SPAN_MS: u64 = 60_000;

/// Where the archive holds notification `id` (the ULID ingest gave it),
/// and its envelope; `None` when the id is not a ULID or no object holds
/// it. Reads the keys of its hour and the hour before (a segment is filed
/// under its first notification's hour), then the segments that began in
/// the minute before it, newest first.
///
/// # Errors
/// The archive's.
pub async fn find(backends: &Backends, id: &str) -> anyhow::Result<Option<(Location, Envelope)>> {
    let Ok(ulid) = ulid::Ulid::from_string(id) else {
        return Ok(None);
    };
    let at = OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ulid.timestamp_ms() as i64);
    let earliest =
        ulid::Ulid::from_parts(ulid.timestamp_ms().saturating_sub(SEGMENT_SPAN_MS), 0).to_string();
    let keys = backends
        .archive
        .list("raw/", Some(at - time::Duration::hours(1)), Some(at))
        .await?;
    let mut candidates: Vec<(&str, &String)> = keys
        .iter()
        .filter_map(|key| {
            let first = segment::first_id(key)?;
            (first >= earliest.as_str() && first <= id).then_some((first, key))
        })
        .collect();
    candidates.sort();
    for (_, key) in candidates.into_iter().rev() {
        let Ok(records) = segment::read_object(backends.archive.as_ref(), key).await? else {
            continue;
        };
        for (location, bytes) in records {
            if let Ok(envelope) = Envelope::from_json(&bytes) {
                if envelope.id == id {
                    return Ok(Some((location, envelope)));
                }
            }
        }
    }
    Ok(None)
}

/// The JSON of notification `id`: its archive location, the request as
/// received (the body as text, or base64 when it is not UTF-8) and its
/// verification at its receive time with the configuration now (the
/// failing step and every step when it fails). Card numbers are masked
/// wherever they are.
///
/// # Errors
/// The archive's, or a source's verifier that cannot be loaded.
pub async fn value(
    config: &Config,
    backends: &Backends,
    id: &str,
) -> anyhow::Result<Option<Value>> {
    let Some((location, envelope)) = find(backends, id).await? else {
        return Ok(None);
    };
    let body = envelope.body_bytes().unwrap_or_default();
    let verification =
        super::dead_letters::verification(config, backends, &envelope, &body).await?;
    let out = json!({
        "notification_id": envelope.id,
        "archive_key": location.to_string(),
        "source": envelope.source,
        "received_at": rfc3339_ms::format(envelope.received_at),
        "remote_addr": envelope.remote_addr,
        "method": envelope.method,
        "path": envelope.path,
        "headers": envelope.headers,
        "body": envelope.body,
        "body_b64": envelope.body_b64,
        "body_sha256": envelope.body_sha256,
        "verification": verification,
    });
    // Masked in the JSON's text: what a notification carries may be anywhere.
    let text = serde_json::to_string(&out)?;
    Ok(Some(serde_json::from_str(&mask_card_numbers(&text))?))
}
