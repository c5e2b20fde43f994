//! From one verified event to one ledger write (DESIGN §5): the state
//! machine over the payment, the events parked for it, and the alias a
//! pre-authorization completion creates for its own id. [`plan`] is pure;
//! [`apply`] loads, plans, writes and starts again on a version conflict.

use std::collections::HashMap;

use paynotify_model::event::{EventKind, EventOutcome, PaymentEvent, PaymentKey};
use paynotify_model::state::{transition, PaymentState, Transition};
use paynotify_ports::{
    AliasWrite, ApplyOutcome, DeadLetterReason, Freshness, Incoming, Ledger, LedgerWrite, Loaded,
    ParkedEntry, ParkedEvent, PaymentEntry, RecordedEvent, MAX_MOVES_PER_WRITE,
};
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
/// parked with the reason. One write moves at most [`MAX_MOVES_PER_WRITE`];
/// [`plan_rest`] plans the writes that take the rest.
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
    let state = match transition(entry.state.as_ref(), event) {
        Transition::Park(_) => {
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
    unpark(entry, aliases, write, state, alias_key(event))
}

/// The write that applies what is still parked under `entry` (a payment
/// whose last write moved [`MAX_MOVES_PER_WRITE`] events and left the rest),
/// or `None` when nothing parked applies or contradicts it now.
pub fn plan_rest(
    entry: &PaymentEntry,
    aliases: &HashMap<PaymentKey, PaymentEntry>,
    key: &PaymentKey,
) -> Option<Plan> {
    let state = entry.state.clone()?;
    let write = LedgerWrite {
        key: key.clone(),
        expected_version: entry.version,
        incoming: Incoming::Nothing,
        state: None,
        unparked: Vec::new(),
        conflicts: Vec::new(),
        aliases: Vec::new(),
    };
    match unpark(entry, aliases, write, state, None) {
        Plan::Write(w, _) if moves(&w) == 0 => None,
        plan => Some(plan),
    }
}

/// Parked events and aliases a write moves, against [`MAX_MOVES_PER_WRITE`].
pub fn moves(w: &LedgerWrite) -> usize {
    w.unparked.len() + w.conflicts.len() + w.aliases.len()
}

/// Adds to `write` the events parked under `entry` (and under the aliases
/// it creates) that apply to `state`, in PSP order, and marks those that
/// contradict the result; at most [`MAX_MOVES_PER_WRITE`] in all, the rest
/// left for [`plan_rest`].
fn unpark(
    entry: &PaymentEntry,
    aliases: &HashMap<PaymentKey, PaymentEntry>,
    mut write: LedgerWrite,
    mut state: PaymentState,
    mut capture: Option<PaymentKey>,
) -> Plan {
    let key = write.key.clone();
    let mut pending: Vec<(PaymentKey, ParkedEvent)> = waiting(entry, &key);
    let by_psp_time = |pending: &mut Vec<(PaymentKey, ParkedEvent)>| {
        pending.sort_by(|(_, a), (_, b)| {
            (a.event.psp_time, a.parked_at).cmp(&(b.event.psp_time, b.parked_at))
        });
    };
    by_psp_time(&mut pending);
    let mut missing = Vec::new();
    let mut full = false;
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
        // One for the event, one for the alias it may create.
        if moves(&write) + 2 > MAX_MOVES_PER_WRITE {
            full = !pending.is_empty();
            break;
        }
        // The first parked event (in PSP order) that applies now.
        let next = pending.iter().enumerate().find_map(|(i, (_, p))| {
            let e = rekeyed(&p.event, &key);
            match transition(Some(&state), &e) {
                Transition::Conflict(_) | Transition::Park(_) => None,
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
    // What is left contradicts the payment, unless the write is full: then
    // an event left may still apply after those the next write takes.
    if !full {
        for (from, mut parked) in pending {
            if moves(&write) >= MAX_MOVES_PER_WRITE {
                break;
            }
            if let Transition::Conflict(why) =
                transition(Some(&state), &rekeyed(&parked.event, &key))
            {
                if parked.conflict.as_deref() != Some(why.as_str()) {
                    parked.conflict = Some(why);
                    write.conflicts.push(ParkedEntry {
                        payment_key: from,
                        parked,
                    });
                }
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
    let retry = |e: paynotify_ports::LedgerError| Disposition::Retry(e.to_string());
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
                return dead(
                    DeadLetterReason::Conflict,
                    format!("alias loop at {}", event.payment_key),
                );
            }
            event.payment_key = target;
            continue;
        }
        if seen {
            // A redelivery after a write that left parked events for the
            // next (the process died, a write failed): take them now.
            return match apply_rest(ledger, &event.payment_key, Some(entry)).await {
                Ok(()) => Disposition::Ack(AckKind::Duplicate),
                Err(e) => Disposition::Retry(e),
            };
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
            Err(why) if freshness == Freshness::Latest => {
                return dead(DeadLetterReason::Conflict, why)
            }
            Err(_) => freshness = Freshness::Latest,
            Ok((write, kind)) => match ledger.write(&write).await {
                Ok(ApplyOutcome::Applied) => {
                    warn_conflicts(&write);
                    if moves(&write) + 2 > MAX_MOVES_PER_WRITE {
                        if let Err(e) = apply_rest(ledger, &write.key, None).await {
                            return Disposition::Retry(e);
                        }
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

fn warn_conflicts(write: &LedgerWrite) {
    for c in &write.conflicts {
        warn!(notification_id = %c.parked.notification_id, payment_key = %c.payment_key,
              stage = "apply", conflict = c.parked.conflict.as_deref().unwrap_or(""),
              "parked event contradicts its payment; kept parked for reconcile");
    }
}

/// Applies what is still parked under `key` (a payment whose write moved as
/// many events as one takes), one write at a time, starting from `entry`
/// when the caller has read it. An error leaves the rest parked: the
/// message is retried, and its redelivery, a duplicate, takes them then.
///
/// # Errors
/// The ledger's, or too many version conflicts in a row.
async fn apply_rest(
    ledger: &dyn Ledger,
    key: &PaymentKey,
    entry: Option<PaymentEntry>,
) -> Result<(), String> {
    let mut entry = entry;
    let mut conflicts = 0;
    loop {
        let current = match entry.take() {
            Some(e) => e,
            None => ledger.load(key).await.map_err(|e| e.to_string())?,
        };
        let mut aliases = HashMap::new();
        let write = loop {
            match plan_rest(&current, &aliases, key) {
                None | Some(Plan::Conflict(_)) => return Ok(()),
                Some(Plan::Load(keys)) => {
                    for k in keys {
                        let a = ledger.load(&k).await.map_err(|e| e.to_string())?;
                        aliases.insert(k, a);
                    }
                }
                Some(Plan::Write(write, _)) => break write,
            }
        };
        match ledger.write(&write).await.map_err(|e| e.to_string())? {
            ApplyOutcome::Applied => warn_conflicts(&write),
            ApplyOutcome::Duplicate | ApplyOutcome::VersionConflict => {
                conflicts += 1;
                if conflicts >= MAX_VERSION_CONFLICTS {
                    return Err("payment changed concurrently too often".into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
