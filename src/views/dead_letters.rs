//! The dead-letter queue as `paynotify dlq list|show --json` print it and
//! the read API answers: each dead letter's reason, the request it carries
//! and, when it does not verify now, the step that fails (card numbers
//! masked).

use std::collections::{BTreeMap, HashMap};

use paynotify_shared::backend::Backends;
use paynotify_shared::config::Config;
use paynotify_shared::envelope::{rfc3339_ms, DeadLetterBody, Envelope, QueuedBody};
use paynotify_shared::ports::{canonical_reason, same_reason, DeadLetter};
use paynotify_shared::scheme::{Inbound, SourceVerifier, Verified};
use paynotify_shared::segment;
use paynotify_shared::telemetry::mask_card_numbers;
use serde_json::{json, Value};

/// Dead letters read at most by `show` and the dry runs (SQS is scanned).
pub const MAX_SCAN: usize = 100_000;

/// Reads up to `limit` dead letters and says when the backend could not
/// reach them all (on SQS, messages another reader holds are skipped).
pub async fn read(backends: &Backends, limit: usize) -> anyhow::Result<Vec<DeadLetter>> {
    let depth = backends.dead_letters.dlq_depth().await?;
    let listed = backends.dead_letters.dlq_list(limit).await?;
    if (listed.len() as u64) < depth && listed.len() < limit {
        tracing::warn!(
            read = listed.len(),
            depth,
            "not every dead letter was read: the others are in flight (another listing or redrive)"
        );
    }
    Ok(listed)
}

/// The envelope a dead letter carries or points to.
async fn envelope_of(backends: &Backends, d: &DeadLetter) -> Option<(Envelope, String)> {
    let queued = QueuedBody::parse(&d.body).ok()?;
    let at = queued.location();
    match queued {
        QueuedBody::Envelope(e) => Some((*e, at.to_string())),
        QueuedBody::Pointer { location, id, .. } => {
            let e = segment::read_envelope(backends.archive.as_ref(), &location, id.as_deref())
                .await
                .ok()?;
            Some((e, at.to_string()))
        }
    }
}

pub fn summary(d: &DeadLetter) -> Value {
    let parsed = QueuedBody::parse(&d.body).ok();
    json!({
        "id": d.id,
        "notification_id": parsed.as_ref().map(QueuedBody::notification_id),
        "reason": d.reason,
        "error": mask_card_numbers(&d.error),
        "receive_count": d.receive_count,
        "dead_at": rfc3339_ms::format(d.dead_at),
        "archive_key": parsed.as_ref().map(|p| p.location().to_string()),
    })
}

/// The dead letter whose id, or whose notification's id, is `id`.
///
/// # Errors
/// The store's.
pub async fn find(backends: &Backends, id: &str) -> anyhow::Result<Option<DeadLetter>> {
    Ok(read(backends, MAX_SCAN)
        .await?
        .into_iter()
        .find(|d| d.id == id || d.notification_id().as_deref() == Some(id)))
}

/// What a redrive answers: how many moved, how many are still
/// dead-lettered.
///
/// # Errors
/// The store's.
pub async fn redriven(backends: &Backends, moved: u64) -> anyhow::Result<Value> {
    let left = backends.dead_letters.dlq_depth().await?;
    Ok(json!({ "redriven": moved, "still_in_dlq": left }))
}

/// Moves the dead letter `id` (its id or its notification's) back to the
/// queue, or with `dry_run` says that it would, as `dlq redrive --id`
/// prints it and the read API answers; `None` when there is no such dead
/// letter.
///
/// # Errors
/// The store's.
pub async fn redrive_one(
    backends: &Backends,
    id: &str,
    dry_run: bool,
) -> anyhow::Result<Option<Value>> {
    let Some(d) = find(backends, id).await? else {
        return Ok(None);
    };
    if dry_run {
        return Ok(Some(
            json!({ "dry_run": true, "would_redrive": 1, "by_reason": { d.reason.clone(): 1 } }),
        ));
    }
    let moved = backends.dead_letters.redrive_one(&d.id).await?;
    Ok(Some(redriven(backends, u64::from(moved)).await?))
}

/// One dead letter (by its id or its notification id) as `dlq show --json`
/// and the read API give it, card numbers masked; `None` when there is no
/// such dead letter.
///
/// # Errors
/// Backend errors, or a source's verifier that cannot be loaded.
pub async fn show_value(
    config: &Config,
    backends: &Backends,
    id: &str,
) -> anyhow::Result<Option<Value>> {
    let Some(d) = find(backends, id).await? else {
        return Ok(None);
    };
    let mut out = summary(&d);
    if let Some((envelope, key)) = envelope_of(backends, &d).await {
        out["archive_key"] = key.into();
        let header = |name: &str| {
            envelope
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let body = envelope.body_bytes().unwrap_or_default();
        out["envelope"] = json!({
            "source": envelope.source,
            "received_at": rfc3339_ms::format(envelope.received_at),
            "remote_addr": envelope.remote_addr,
            "method": envelope.method,
            "path": envelope.path,
            "content_type": header("content-type"),
            "body_bytes": body.len(),
            "body_utf8": envelope.body.is_some(),
        });
        out["verification"] = verification(config, backends, &envelope, &body).await?;
    }
    // Masked in the JSON's text: what a notification carries may be anywhere.
    let text = serde_json::to_string(&out)?;
    Ok(Some(serde_json::from_str(&mask_card_numbers(&text))?))
}

/// The notification verified again, at the time it was received, with the
/// configuration now: the failing step and, when it fails, every step.
pub(crate) async fn verification(
    config: &Config,
    backends: &Backends,
    envelope: &Envelope,
    body: &[u8],
) -> anyhow::Result<Value> {
    Verifiers::new(config, backends)
        .verification(envelope, body)
        .await
}

/// The configured sources' verifiers, each loaded (its certificates and
/// keys read) once, when a notification of its source is first verified:
/// for verifying several notifications in one answer.
pub(crate) struct Verifiers<'a> {
    config: &'a Config,
    backends: &'a Backends,
    loaded: HashMap<String, SourceVerifier>,
}

impl<'a> Verifiers<'a> {
    pub(crate) fn new(config: &'a Config, backends: &'a Backends) -> Self {
        Self {
            config,
            backends,
            loaded: HashMap::new(),
        }
    }

    /// As [`verification`], with this set's verifiers.
    pub(crate) async fn verification(
        &mut self,
        envelope: &Envelope,
        body: &[u8],
    ) -> anyhow::Result<Value> {
        let Some(source) = self.config.sources.get(&envelope.source) else {
            return Ok(json!({ "valid": false, "error": "unknown_source",
                "message": format!("source {:?} is not configured", envelope.source) }));
        };
        if !self.loaded.contains_key(&envelope.source) {
            let verifier =
                SourceVerifier::load(&envelope.source, source, self.backends.secrets.as_deref())
                    .await?;
            self.loaded.insert(envelope.source.clone(), verifier);
        }
        let verifier = &self.loaded[&envelope.source];
        let inbound = Inbound {
            body,
            headers: &envelope.headers,
            received_at: envelope.received_at,
        };
        Ok(match verifier.verify(&envelope.source, &inbound) {
            Ok(Verified::Event(event)) => json!({ "valid": true, "event": event }),
            Ok(Verified::Ignored(what)) => json!({ "valid": true, "event": null, "ignored": what }),
            Ok(Verified::Items(n)) => {
                let items: Vec<Value> = (0..n)
                    .map(
                        |i| match verifier.verify_item(&envelope.source, &inbound, i) {
                            Ok(v) => {
                                json!({ "item": i, "valid": true, "verified": format!("{v:?}") })
                            }
                            Err(e) => json!({ "item": i, "valid": false, "error": e.name(),
                                          "step": e.step(), "message": e.to_string() }),
                        },
                    )
                    .collect();
                let valid = items.iter().all(|i| i["valid"] == true);
                json!({ "valid": valid, "event": null, "items": items,
                        "explain": verifier.explain(&inbound) })
            }
            Err(e) => json!({
                "valid": false, "error": e.name(), "step": e.step(), "message": e.to_string(),
                "explain": verifier.explain(&inbound),
            }),
        })
    }
}

/// Counts dead letters by reason, of those `reason` selects.
pub fn by_reason(dead: &[DeadLetter], reason: Option<&str>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for d in dead
        .iter()
        .filter(|d| reason.is_none_or(|r| same_reason(&d.reason, r)))
    {
        *out.entry(canonical_reason(&d.reason)).or_default() += 1;
    }
    out
}
