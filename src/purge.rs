//! Purging dead letters, with a record of each in the archive.
//!
//! A purged dead letter leaves its notification in the archive (`replay`
//! can bring it back) and a record under `audit/dlq-purged/{notification
//! id}.json`: its reason, error and when it was purged. `reconcile` counts
//! a rejected notification with such a record as purged, not as lost.

use std::collections::HashSet;

use paynotify_shared::backend::Backends;
use paynotify_shared::envelope::{rfc3339_ms, DeadLetterBody};
use paynotify_shared::ports::{ArchiveError, DeadLetter, Progress};
use serde_json::json;
use time::OffsetDateTime;

/// Where purge records live in the archive.
pub const PREFIX: &str = "audit/dlq-purged/";

/// Deletes the dead letters with `reason` (all when `None`) and records
/// each in the archive; returns them. When the process dies between the
/// two, the purged notifications without a record are reported by
/// `reconcile` as rejected and not dead-lettered: loud, not lost.
///
/// # Errors
/// Queue errors (nothing recorded for what was not purged) or archive
/// errors (what was purged is returned by none: run `reconcile`).
pub async fn purge(
    backends: &Backends,
    reason: Option<&str>,
    progress: Progress<'_>,
) -> anyhow::Result<Vec<DeadLetter>> {
    let purged = backends
        .dead_letters
        .purge_dead_letters(reason, progress)
        .await?;
    let now = OffsetDateTime::now_utc();
    for d in &purged {
        let id = d.notification_id().unwrap_or_else(|| d.id.clone());
        let record = json!({
            "notification_id": id, "dead_letter_id": d.id, "reason": d.reason, "error": d.error,
            "dead_at": rfc3339_ms::format(d.dead_at), "purged_at": rfc3339_ms::format(now),
        });
        let key = format!("{PREFIX}{id}.json");
        match backends
            .archive
            .put(&key, record.to_string().as_bytes())
            .await
        {
            // Purged before, redriven, dead again and purged again.
            Ok(()) | Err(ArchiveError::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(purged)
}

/// The notification ids whose dead letters were purged.
///
/// # Errors
/// Archive errors.
pub async fn purged_ids(backends: &Backends) -> anyhow::Result<HashSet<String>> {
    Ok(backends
        .archive
        .list(PREFIX, None, None)
        .await?
        .iter()
        .filter_map(|k| k.strip_prefix(PREFIX)?.strip_suffix(".json"))
        .map(str::to_owned)
        .collect())
}
