//! From one verified event to one ledger write (DESIGN §5): the state
//! machine over the payment, the events parked for it, and the alias a
//! pre-authorization completion creates for its own id. [`plan`] is pure;
//! [`apply`] loads, plans, writes and starts again on a version conflict.

use std::collections::HashMap;

use paynotify_shared::event::{EventKind, EventOutcome, PaymentEvent, PaymentKey};
use paynotify_shared::ports::{
    AliasWrite, ApplyOutcome, Freshness, Incoming, Ledger, LedgerWrite, Loaded, ParkedEntry,
    ParkedEvent, PaymentEntry, RecordedEvent,
};
use paynotify_shared::{transition, Transition};
use time::OffsetDateTime;
use tracing::warn;

use crate::{dead, AckKind, Disposition};

/// How often a write is planned again after a version conflict before the
/// message is retried through the queue.
const MAX_VERSION_CONFLICTS: u32 = 8;
/// Alias hops followed from a payment key (a completion's id points at its
/// payment, which is never itself an alias).
const MAX_ALIAS_HOPS: u32 = 2;

/// What one event does to the ledger, decided from what it holds.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Write this, then acknowledge with this kind.
    Write(Box<LedgerWrite>, AckKind),
    /// The event contradicts the payment.
    Conflict(String),
    /// Planning needs what is stored under these keys (a completion's id).
    Load(Vec<PaymentKey>),
}

/// The key a completion's own id is an alias under, when `event` is one.
fn alias_key(event: &PaymentEvent) -> Option<PaymentKey> {
    let id = event.psp_txn_id.as_deref()?;
    (event.kind == EventKind::Capture
        && event.outcome == EventOutcome::Succeeded
        && id != event.payment_ref)
        .then(|| event.payment_key.sibling(id))
}

/// Decides the write for `event` on `entry` (what is stored under
/// `event.payment_key`). `aliases` holds what is stored under the alias keys
/// loaded so far.
///
/// When the event creates or changes the payment, events parked for it are
/// applied in the same write, in the order the PSP timed them, repeatedly
/// until none applies any more (a refund parked before the capture it needs
/// applies once the capture has); those left contradict the payment and stay
/// parked with the reason.
pub fn plan(
    entry: &PaymentEntry,
    aliases: &HashMap<PaymentKey, PaymentEntry>,
    event: &PaymentEvent,
    notification_id: &str,
    now: OffsetDateTime,
) -> Plan {
    let key = event.payment_key.clone();
    let mut write = LedgerWrite {
        key: key.clone(),
        expected_version: entry.version,
        incoming: Incoming::Record(RecordedEvent {
            event: event.clone(),
            notification_id: notification_id.to_owned(),
            status_after: None,
            unparked_from: None,
        }),
        state: None,
        unparked: Vec::new(),
        conflicts: Vec::new(),
        aliases: Vec::new(),
    };
    let mut state = match transition(entry.state.as_ref(), event) {
        Transition::Retry(_) => {
            write.incoming = Incoming::Park(ParkedEvent {
                event: event.clone(),
                notification_id: notification_id.to_owned(),
                parked_at: now,
                conflict: None,
            });
            return Plan::Write(Box::new(write), AckKind::Parked);
        }
        Transition::Conflict(why) => return Plan::Conflict(why),
        Transition::Record => return Plan::Write(Box::new(write), AckKind::Recorded),
        Transition::Apply(s) => s,
    };
    if let Incoming::Record(r) = &mut write.incoming {
        r.status_after = Some(state.status);
    }
    let mut pending: Vec<(PaymentKey, ParkedEvent)> = waiting(entry, &key);
    let by_psp_time = |pending: &mut Vec<(PaymentKey, ParkedEvent)>| {
        pending.sort_by(|(_, a), (_, b)| {
            (a.event.psp_time, a.parked_at).cmp(&(b.event.psp_time, b.parked_at))
        });
    };
    by_psp_time(&mut pending);
    let mut missing = Vec::new();
    let mut capture = alias_key(event);
    loop {
        if let Some(alias) = capture.take() {
            match aliases.get(&alias) {
                None => missing.push(alias),
                // Only a key that is not a payment and not yet an alias.
                Some(a) if a.state.is_none() && a.alias_of.is_none() => {
                    write.aliases.push(AliasWrite {
                        key: alias.clone(),
                        expected_version: a.version,
                    });
                    pending.extend(waiting(a, &alias));
                    by_psp_time(&mut pending);
                }
                Some(_) => {}
            }
        }
        // The first parked event (in PSP order) that applies now.
        let next = pending.iter().enumerate().find_map(|(i, (_, p))| {
            let e = rekeyed(&p.event, &key);
            match transition(Some(&state), &e) {
                Transition::Conflict(_) | Transition::Retry(_) => None,
                t => Some((i, e, t)),
            }
        });
        let Some((i, e, t)) = next else {
            break;
        };
        let (from, parked) = pending.remove(i);
        let status_after = match t {
            Transition::Apply(s) => {
                state = s;
                Some(state.status)
            }
            _ => None,
        };
        capture = alias_key(&e);
        write.unparked.push(RecordedEvent {
            event: e,
            notification_id: parked.notification_id,
            status_after,
            unparked_from: Some(from),
        });
    }
    if !missing.is_empty() {
        return Plan::Load(missing);
    }
    for (from, mut parked) in pending {
        if let Transition::Conflict(why) = transition(Some(&state), &rekeyed(&parked.event, &key)) {
            if parked.conflict.as_deref() != Some(why.as_str()) {
                parked.conflict = Some(why);
                write.conflicts.push(ParkedEntry {
                    payment_key: from,
                    parked,
                });
            }
        }
    }
    state.version = entry.version + 1;
    write.state = Some(state);
    Plan::Write(Box::new(write), AckKind::Applied)
}

/// The events parked under `entry` that have not conflicted yet.
fn waiting(entry: &PaymentEntry, key: &PaymentKey) -> Vec<(PaymentKey, ParkedEvent)> {
    entry
        .parked
        .iter()
        .filter(|p| p.conflict.is_none())
        .map(|p| (key.clone(), p.clone()))
        .collect()
}

fn rekeyed(event: &PaymentEvent, key: &PaymentKey) -> PaymentEvent {
    let mut e = event.clone();
    e.payment_key = key.clone();
    e
}

/// Applies `event` to the ledger: follows an alias, plans, writes, and plans
/// again after a version conflict. Every ledger error is a `Retry`.
///
/// The first read may lag behind the latest write ([`Freshness::MayLag`]):
/// a write planned on it is conditioned on the version it read, so a stale
/// read ends in a version conflict, and the plan is made again on a read of
/// the latest entry. An event the read shows recorded or parked is a
/// duplicate without a write (a key once seen stays), and so is one whose
/// legacy key ([`PaymentEvent::legacy_key`]) is held. Only a conflict, the
/// one decision made without a write, is confirmed on the latest entry
/// before it dead-letters.
pub async fn apply(ledger: &dyn Ledger, notification_id: &str, event: PaymentEvent) -> Disposition {
    let mut event = event;
    let (mut hops, mut conflicts) = (0, 0);
    let mut freshness = Freshness::MayLag;
    let retry = |e: paynotify_shared::ports::LedgerError| Disposition::Retry(e.to_string());
    loop {
        let Loaded { entry, seen } = match ledger
            .load_to_apply(&event.payment_key, &event.event_key, freshness)
            .await
        {
            Ok(l) => l,
            Err(e) => return retry(e),
        };
        if let Some(target) = entry.alias_of {
            hops += 1;
            if hops > MAX_ALIAS_HOPS {
                return dead("conflict", format!("alias loop at {}", event.payment_key));
            }
            event.payment_key = target;
            continue;
        }
        if seen {
            return Disposition::Ack(AckKind::Duplicate);
        }
        if let Some(old) = &event.legacy_key {
            match ledger.contains_event(&event.payment_key, old).await {
                Ok(true) => return Disposition::Ack(AckKind::Duplicate),
                Ok(false) => {}
                Err(e) => return retry(e),
            }
        }
        let mut aliases = HashMap::new();
        let planned = loop {
            match plan(
                &entry,
                &aliases,
                &event,
                notification_id,
                OffsetDateTime::now_utc(),
            ) {
                Plan::Load(keys) => {
                    for k in keys {
                        match ledger.load(&k).await {
                            Ok(a) => aliases.insert(k, a),
                            Err(e) => return retry(e),
                        };
                    }
                }
                Plan::Conflict(why) => break Err(why),
                Plan::Write(write, kind) => break Ok((write, kind)),
            }
        };
        match planned {
            // A redelivery of an applied event looks like a conflict to the
            // state machine; the latest read tells it (`seen`). A failed
            // read is a retry, never a conflict.
            Err(why) if freshness == Freshness::Latest => return dead("conflict", why),
            Err(_) => freshness = Freshness::Latest,
            Ok((write, kind)) => match ledger.write(&write).await {
                Ok(ApplyOutcome::Applied) => {
                    for c in &write.conflicts {
                        warn!(notification_id = %c.parked.notification_id, payment_key = %c.payment_key,
                              stage = "apply", conflict = c.parked.conflict.as_deref().unwrap_or(""),
                              "parked event contradicts its payment; kept parked for reconcile");
                    }
                    return Disposition::Ack(kind);
                }
                Ok(ApplyOutcome::Duplicate) => return Disposition::Ack(AckKind::Duplicate),
                Ok(ApplyOutcome::VersionConflict) => {
                    conflicts += 1;
                    if conflicts >= MAX_VERSION_CONFLICTS {
                        return Disposition::Retry("payment changed concurrently too often".into());
                    }
                    freshness = Freshness::Latest;
                }
                Err(e) => return retry(e),
            },
        }
    }
}

#[cfg(test)]
mod tests;
