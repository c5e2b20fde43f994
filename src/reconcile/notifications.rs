//! Each archived notification checked against the ledger and the DLQ.

use super::*;

/// A notification whose event the scan found in neither the ledger nor the
/// DLQ.
pub(super) struct Unfound {
    /// Where it is archived.
    pub(super) subject: String,
    pub(super) id: String,
    /// Which item of a notification of several.
    pub(super) item: Option<u32>,
    pub(super) event: PaymentEvent,
}

/// Where the ledger has an event.
pub(super) enum InLedger {
    Parked,
    /// Recorded on this payment (its alias followed).
    Recorded(PaymentKey),
}

/// Whether the ledger has `event`, parked or recorded.
pub(super) async fn in_ledger(
    backends: &Backends,
    event: &PaymentEvent,
) -> anyhow::Result<Option<InLedger>> {
    let mut payment = event.payment_key.clone();
    let mut entry = backends.ledger.load(&payment).await?;
    if let Some(target) = entry.alias_of.clone() {
        payment = target;
        entry = backends.ledger.load(&payment).await?;
    }
    if entry
        .parked
        .iter()
        .any(|p| p.event.event_key == event.event_key)
    {
        return Ok(Some(InLedger::Parked));
    }
    let recorded = backends
        .ledger
        .contains_event(&payment, &event.event_key)
        .await?;
    Ok(recorded.then_some(InLedger::Recorded(payment)))
}

/// Counts `found` in the report.
pub(super) fn count_found(
    report: &mut Report,
    payments: &mut BTreeSet<PaymentKey>,
    found: InLedger,
) {
    match found {
        InLedger::Parked => report.parked += 1,
        InLedger::Recorded(payment) => {
            report.in_ledger += 1;
            payments.insert(payment);
        }
    }
}

/// Checks one verified notification (or one item of it) against the ledger
/// and the DLQ, counting or flagging it; a payment event found in neither is
/// returned, to be looked at again after the scan.
#[allow(clippy::too_many_arguments)]
pub(super) async fn check_notification(
    backends: &Backends,
    report: &mut Report,
    payments: &mut BTreeSet<PaymentKey>,
    key: &str,
    envelope: &Envelope,
    verified: Result<Verified, String>,
    in_dlq: Option<&str>,
    purged: &std::collections::HashSet<String>,
) -> anyhow::Result<Option<Unfound>> {
    let event = match verified {
        Ok(Verified::Event(event)) => *event,
        // Authentic, not a payment event: nothing to find in the ledger.
        Ok(Verified::Ignored(_) | Verified::Items(_)) => {
            report.ignored += 1;
            return Ok(None);
        }
        Err(_) if in_dlq.is_some() => {
            report.dead_lettered += 1;
            return Ok(None);
        }
        Err(_) if purged.contains(&envelope.id) => {
            report.purged += 1;
            return Ok(None);
        }
        Err(why) => {
            report.flag(
                "rejected_not_dead_lettered",
                envelope.id.clone(),
                format!("{key}: {why}"),
            );
            return Ok(None);
        }
    };
    match in_ledger(backends, &event).await? {
        Some(found) => count_found(report, payments, found),
        None => match in_dlq {
            Some(reason) => verified_dead_lettered(report, key, &envelope.id, &event, reason),
            None => {
                return Ok(Some(Unfound {
                    subject: key.to_owned(),
                    id: envelope.id.clone(),
                    item: None,
                    event,
                }))
            }
        },
    }
    Ok(None)
}

/// The first 8 bytes of an envelope's body digest: enough to tell bodies
/// apart in one reconcile, at 8 bytes of memory each.
pub(super) fn body_digest(envelope: &Envelope) -> u64 {
    u64::from_str_radix(envelope.body_sha256.get(..16).unwrap_or(""), 16).unwrap_or(0)
}

/// The notifications a torn segment completed before it was cut short.
/// Ingest answers 200 only once a segment is whole and durable, but sends
/// the queue message while writing it, so such a notification may have been
/// applied (from its message) and answered 503; the PSP's retry is then
/// archived whole elsewhere. One whose event is in the ledger (or which
/// verified and is in the DLQ) and whose body no whole object holds has no
/// archive copy at all: the segment was lost after it was acknowledged, or
/// the retry never came. That is `archive_torn`; the others are the
/// partial writes counted already.
pub(super) async fn settle_torn(
    backends: &Backends,
    verifiers: &BTreeMap<String, SourceVerifier>,
    dead: &Dead,
    report: &mut Report,
    whole_bodies: &HashSet<u64>,
    torn_lines: Vec<(segment::Location, Envelope)>,
) -> anyhow::Result<()> {
    for (at, envelope) in torn_lines {
        if whole_bodies.contains(&body_digest(&envelope)) {
            continue;
        }
        let (Ok(body), Some(v)) = (envelope.body_bytes(), verifiers.get(&envelope.source)) else {
            continue;
        };
        let inbound = Inbound {
            body: &body,
            headers: &envelope.headers,
            received_at: envelope.received_at,
        };
        let Ok(Verified::Event(event)) = v.verify(&envelope.source, &inbound) else {
            continue;
        };
        let applied = in_ledger(backends, &event).await?.is_some();
        if applied || dead.reason(&envelope.id, None).is_some() {
            report.flag(
                "archive_torn",
                envelope.id.clone(),
                format!(
                    "{at}: {} {} of {} was {}, and no whole archived copy of its bytes remains",
                    event.kind.as_str(),
                    event.amount,
                    event.payment_key,
                    if applied { "applied" } else { "dead-lettered" }
                ),
            );
        }
    }
    Ok(())
}

/// A notification that verified, whose event is not in the ledger, is in
/// the DLQ: money the PSP reported that the ledger does not hold
/// (`retries_exhausted`, `panic`, a conflicting transition). Not accounted
/// for: a discrepancy an operator must resolve (redrive, or record why).
pub(super) fn verified_dead_lettered(
    report: &mut Report,
    subject: &str,
    id: &str,
    event: &PaymentEvent,
    reason: &str,
) {
    report.flag(
        "verified_dead_lettered",
        id.to_owned(),
        format!(
            "{subject}: {} {} of {} on {} verified, dead-lettered as {reason}, not in the ledger",
            event.kind.as_str(),
            event.amount,
            event.payment_key,
            event.event_key
        ),
    );
}

/// Settles the notifications the scan did not find, with reads taken after
/// it (one whose parked event an operator resolved is counted as such): the
/// queue's depth first, then the DLQ, then the ledger (a message
/// leaves the queue only after its event is in the ledger or the DLQ). The
/// reads before the scan may be older than a notification archived and
/// processed during it, and one depth read may miss messages that are
/// there (SQS counts are approximate; a sharded local queue is counted
/// shard by shard): a notification is called missing only when the queue
/// read empty both times and neither the DLQ nor the ledger has it now.
pub(super) async fn look_again(
    backends: &Backends,
    report: &mut Report,
    payments: &mut BTreeSet<PaymentKey>,
    unfound: Vec<Unfound>,
    resolved: &std::collections::HashSet<String>,
) -> anyhow::Result<()> {
    if unfound.is_empty() {
        return Ok(());
    }
    report.queue_depth = report.queue_depth.max(backends.queue.depth().await?);
    let dead = dead_letters(backends).await?;
    for Unfound {
        subject,
        id,
        item,
        event,
    } in unfound
    {
        if let Some(found) = in_ledger(backends, &event).await? {
            count_found(report, payments, found);
        } else if let Some(reason) = dead.reason(&id, item) {
            verified_dead_lettered(report, &subject, &id, &event, reason);
        } else if resolved.contains(&id) {
            // Parked, then taken out by an operator, with a record.
            report.resolved += 1;
        } else if report.queue_depth > 0 {
            report.flag(
                "unsettled",
                id,
                format!(
                    "{subject}: not in the ledger or the DLQ; the queue still holds {} messages",
                    report.queue_depth
                ),
            );
        } else {
            report.flag(
                "missing",
                id,
                format!(
                    "{subject}: {} of {} is in neither the ledger nor the DLQ",
                    event.event_key, event.payment_key
                ),
            );
        }
    }
    Ok(())
}
