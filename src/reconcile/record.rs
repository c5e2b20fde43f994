//! Each `reconcile` run's report, kept in the archive under
//! `audit/reconcile/date=YYYY-MM-DD/{ulid}.json` (when it ran, whether it
//! was clean, the report): the read API serves the latest.

use paynotify_shared::backend::Backends;
use paynotify_shared::envelope::rfc3339_ms;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::Report;

/// Where the reports live in the archive.
pub const PREFIX: &str = "audit/reconcile/";

/// Keeps `report`; returns its key.
///
/// # Errors
/// Archive errors.
pub async fn record(backends: &Backends, report: &Report) -> anyhow::Result<String> {
    let now = OffsetDateTime::now_utc();
    let key = format!("{PREFIX}date={}/{}.json", now.date(), ulid::Ulid::new());
    let body = json!({
        "at": rfc3339_ms::format(now),
        "clean": report.is_clean(),
        "report": report,
    });
    backends
        .archive
        .put(&key, body.to_string().as_bytes())
        .await?;
    Ok(key)
}

/// The newest report kept, with its key; `None` before the first.
///
/// # Errors
/// Archive errors, or a record that is not JSON.
pub async fn latest(backends: &Backends) -> anyhow::Result<Option<(String, Value)>> {
    // Dates, then ULIDs, sort in time order.
    let keys = backends.archive.list(PREFIX, None, None).await?;
    let Some(key) = keys.into_iter().max() else {
        return Ok(None);
    };
    let bytes = backends.archive.get(&key).await?;
    Ok(Some((key, serde_json::from_slice(&bytes)?)))
}
