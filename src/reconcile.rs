//! `reconcile`: proves, for a time range, that every archived notification
//! is accounted for and that the ledger agrees with itself.
//!
//! An archived notification is accounted for when its event is recorded in
//! the ledger (applied, recorded, or a duplicate of one that was), parked
//! there, or, when it did not verify, its message is in the dead-letter
//! queue. A verified event found only in the DLQ (`retries_exhausted`,
//! `panic`, a conflict) is money the PSP reported and the ledger does not
//! hold: a discrepancy, `verified_dead_lettered`. Dead letters count per
//! item of a notification of several. Every payment it
//! touches is checked: its recorded events, replayed through the state
//! machine from nothing, give exactly the stored state, and each event's
//! recorded status is the one the replay gives. Parked events older than the
//! configured bound, and parked events that contradicted their payment, are
//! reported too. An archive object that ends mid-JSON was cut short by a
//! crash while being written, before ingest could acknowledge it: it is
//! counted apart, unless a notification it completed was applied and no
//! whole copy of its bytes is archived (`archive_torn`). Notifications not found are looked at again after the
//! scan (the queue's depth, the DLQ and the ledger read anew); while the
//! queue still holds messages, those still not found may be among them:
//! they are reported as unsettled, not lost.

mod deliveries;
mod notifications;
pub mod record;

use notifications::*;

pub use deliveries::DeliveryTotals;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use paynotify_shared::backend::Backends;
use paynotify_shared::config::Config;
use paynotify_shared::envelope::{Envelope, EnvelopeError};
use paynotify_shared::event::{PaymentEvent, PaymentKey};
use paynotify_shared::ports::{DeadLetter, EventRecord, LedgerExt, ParkedEntry, PARKED_SCAN_LIMIT};
use paynotify_shared::scheme::{Inbound, SourceVerifier, Verified};
use paynotify_shared::segment;
use paynotify_shared::{transition, PaymentState, Transition};
use serde::Serialize;
use time::OffsetDateTime;
use tracing::warn;

/// Dead letters read at most (the SQS DLQ is scanned, not listed).
const MAX_DEAD_LETTERS: usize = 100_000;

/// One thing that does not add up.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Discrepancy {
    /// `missing`, `unsettled`, `unreadable`, `rejected_not_dead_lettered`,
    /// `verified_dead_lettered`, `state_mismatch`, `status_mismatch`,
    /// `parked_overdue`, `parked_conflict`, `archive_torn`, `event_missing`,
    /// `delivery_missing`.
    pub kind: &'static str,
    /// The notification, payment key or archive key concerned.
    pub subject: String,
    pub detail: String,
}

/// What reconcile found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    #[serde(with = "time::serde::rfc3339::option")]
    pub from: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub to: Option<OffsetDateTime>,
    pub archived: u64,
    /// Whose event is recorded in the ledger.
    pub in_ledger: u64,
    pub parked: u64,
    pub dead_lettered: u64,
    /// Rejected, dead-lettered, then purged by an operator (recorded under
    /// `audit/dlq-purged/`).
    pub purged: u64,
    /// Verified, parked, then resolved by an operator (recorded under
    /// `audit/parked-resolved/`): in neither the ledger nor the DLQ, by
    /// decision.
    pub resolved: u64,
    /// Authentic notifications of a type the source does not map to a
    /// payment event (acknowledged as ignored, never in the ledger).
    pub ignored: u64,
    pub payments_checked: u64,
    pub queue_depth: u64,
    /// Archive objects cut short by a crash while being written: ingest
    /// answers 200 only after an object is whole and durable, so these were
    /// never acknowledged (the PSP retried them); counted, not a discrepancy,
    /// unless one completed a notification that was applied and whose
    /// bytes no whole object holds (`archive_torn`).
    pub partial_writes: u64,
    /// The checked payments as stored: how many in each status, and what
    /// they hold paid and refunded per currency (minor units).
    pub ledger: LedgerTotals,
    /// The checked payments' outgoing events and their deliveries.
    pub deliveries: DeliveryTotals,
    pub discrepancies: Vec<Discrepancy>,
}

/// Totals of the payments a reconcile checked.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerTotals {
    pub by_status: BTreeMap<String, u64>,
    pub paid_minor: BTreeMap<String, u64>,
    pub refunded_minor: BTreeMap<String, u64>,
}

impl Report {
    /// Whether everything adds up.
    pub fn is_clean(&self) -> bool {
        self.discrepancies.is_empty()
    }

    fn flag(&mut self, kind: &'static str, subject: impl Into<String>, detail: impl Into<String>) {
        self.discrepancies.push(Discrepancy {
            kind,
            subject: subject.into(),
            detail: detail.into(),
        });
    }
}

/// Reconciles the notifications archived in `[from, to]` (hours, as the
/// archive partitions them) against the ledger and the dead-letter queue.
///
/// # Errors
/// Configuration (certificates) or backend errors; a discrepancy is not an
/// error but part of the report.
pub async fn reconcile(
    config: &Config,
    backends: &Backends,
    from: Option<OffsetDateTime>,
    to: Option<OffsetDateTime>,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<Report> {
    let mut report = Report {
        from,
        to,
        ..Report::default()
    };
    let verifiers = SourceVerifier::all(config, backends.secrets.as_deref()).await?;
    let dead = dead_letters(backends).await?;
    let purged = crate::purge::purged_ids(backends).await?;
    let resolved = crate::parked::resolved_ids(backends).await?;
    report.queue_depth = backends.queue.depth().await?;
    let keys = backends.archive.list("raw/", from, to).await?;
    let total = keys.len() as u64;
    let mut payments = BTreeSet::new();
    let mut unfound = Vec::new();
    // What torn segments' complete lines hold, and a digest of every body
    // archived whole: see `settle_torn`.
    let mut torn_lines = Vec::new();
    let mut whole_bodies = HashSet::new();
    for (i, key) in keys.iter().enumerate() {
        progress(i as u64 + 1, total);
        let records = match segment::read_object(backends.archive.as_ref(), key).await? {
            Ok(r) => r,
            Err(torn) => {
                warn!(error = %torn, "a torn segment: cut short while being written");
                report.partial_writes += 1;
                let bytes = backends.archive.get(key).await?;
                torn_lines.extend(
                    segment::complete_lines(key, &bytes)
                        .into_iter()
                        .filter_map(|(at, json)| Some((at, Envelope::from_json(json).ok()?))),
                );
                continue;
            }
        };
        for (at, json) in records {
            report.archived += 1;
            let envelope = match Envelope::from_json(&json) {
                Ok(e) => e,
                // An object of one notification whose JSON ends early: a
                // write cut short, never acknowledged.
                Err(EnvelopeError::Json(e)) if e.is_eof() && at.span.is_none() => {
                    report.partial_writes += 1;
                    continue;
                }
                Err(e) => {
                    report.flag("unreadable", at.to_string(), e.to_string());
                    continue;
                }
            };
            whole_bodies.insert(body_digest(&envelope));
            let subject = at.to_string();
            let body = envelope.body_bytes().map_err(|e| e.to_string());
            let verifier = verifiers
                .get(&envelope.source)
                .ok_or_else(|| format!("source {:?} is not configured", envelope.source));
            let empty = Vec::new();
            let inbound = Inbound {
                body: body.as_ref().unwrap_or(&empty),
                headers: &envelope.headers,
                received_at: envelope.received_at,
            };
            // One result per item: a notification of several is checked item by item.
            let verified = match (&body, &verifier) {
                (Err(e), _) | (_, Err(e)) => vec![Err(e.clone())],
                (Ok(_), Ok(v)) => match v.verify(&envelope.source, &inbound) {
                    Ok(Verified::Items(n)) => (0..n)
                        .map(|i| {
                            v.verify_item(&envelope.source, &inbound, i)
                                .map_err(|e| e.to_string())
                        })
                        .collect(),
                    other => vec![other.map_err(|e| e.to_string())],
                },
            };
            let items = verified.len() > 1;
            for (i, verified) in verified.into_iter().enumerate() {
                let item = items.then_some(i as u32);
                let in_dlq = dead.reason(&envelope.id, item);
                let found = check_notification(
                    backends,
                    &mut report,
                    &mut payments,
                    &subject,
                    &envelope,
                    verified,
                    in_dlq,
                    &purged,
                )
                .await?;
                unfound.extend(found.map(|u| Unfound { item, ..u }));
            }
        }
    }
    settle_torn(
        backends,
        &verifiers,
        &dead,
        &mut report,
        &whole_bodies,
        torn_lines,
    )
    .await?;
    look_again(backends, &mut report, &mut payments, unfound, &resolved).await?;
    // When each checked payment changed, for the outgoing events' check.
    let mut transitions = BTreeMap::new();
    for payment in &payments {
        report.payments_checked += 1;
        let changed_at = check_payment(backends, payment, &mut report).await?;
        transitions.insert(payment.clone(), changed_at);
    }
    deliveries::check(config, backends, &transitions, &mut report).await?;
    // One read of the parked events, oldest first: the overdue ones lead.
    let now = OffsetDateTime::now_utc();
    let alert_secs = config.worker.parked_alert_secs;
    let parked = backends
        .ledger
        .parked_before(now, PARKED_SCAN_LIMIT)
        .await?;
    for ParkedEntry {
        payment_key,
        parked,
    } in parked
        .iter()
        .filter(|p| p.parked.is_overdue(now, alert_secs))
    {
        report.flag(
            "parked_overdue",
            parked.notification_id.clone(),
            format!(
                "{} of {payment_key} parked since {} waits for a payment that has not arrived",
                parked.event.event_key, parked.parked_at
            ),
        );
    }
    for ParkedEntry {
        payment_key,
        parked,
    } in &parked
    {
        if let Some(why) = &parked.conflict {
            report.flag(
                "parked_conflict",
                parked.notification_id.clone(),
                format!("{} of {payment_key}: {why}", parked.event.event_key),
            );
        }
    }
    Ok(report)
}

/// Replays a payment's recorded events and compares with what is stored;
/// when each event that changed its state was recorded.
async fn check_payment(
    backends: &Backends,
    key: &PaymentKey,
    report: &mut Report,
) -> anyhow::Result<Vec<OffsetDateTime>> {
    let history: Vec<EventRecord> = backends.ledger.history(key).await?;
    let stored = backends.ledger.get_payment(key).await?;
    if let Some(s) = &stored {
        let totals = &mut report.ledger;
        *totals
            .by_status
            .entry(s.status.as_str().to_owned())
            .or_default() += 1;
        let currency = s.currency.as_str().to_owned();
        *totals.paid_minor.entry(currency.clone()).or_default() += s.paid_minor;
        *totals.refunded_minor.entry(currency).or_default() += s.refunded_minor;
    }
    let mut state: Option<PaymentState> = None;
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for record in &history {
        *counts.entry(record.event_key.as_str()).or_default() += 1;
        let Some(event) = &record.event else {
            report.flag(
                "unreadable",
                key.to_string(),
                format!("event {} has no stored event", record.event_key),
            );
            continue;
        };
        let status = match transition(state.as_ref(), event) {
            Transition::Apply(s) => {
                let status = s.status;
                state = Some(s);
                Some(status.as_str().to_owned())
            }
            Transition::Record => None,
            Transition::Park(why) | Transition::Conflict(why) => {
                report.flag(
                    "state_mismatch",
                    key.to_string(),
                    format!("event {} does not replay: {why}", record.event_key),
                );
                None
            }
        };
        if status != record.status_after {
            report.flag(
                "status_mismatch",
                key.to_string(),
                format!(
                    "event {} recorded status {:?}, replay gives {status:?}",
                    record.event_key, record.status_after
                ),
            );
        }
    }
    for (event_key, n) in counts {
        if n > 1 {
            report.flag(
                "applied_twice",
                key.to_string(),
                format!("event {event_key} is recorded {n} times"),
            );
        }
    }
    let same = |a: &PaymentState, b: &PaymentState| {
        (
            a.status,
            a.currency,
            a.authorized_minor,
            a.paid_minor,
            a.refunded_minor,
        ) == (
            b.status,
            b.currency,
            b.authorized_minor,
            b.paid_minor,
            b.refunded_minor,
        )
    };
    match (&stored, &state) {
        (Some(s), Some(r)) if same(s, r) => {}
        (None, None) => {}
        _ => report.flag(
            "state_mismatch",
            key.to_string(),
            format!(
                "stored {:?}, replay of its events gives {:?}",
                brief(stored.as_ref()),
                brief(state.as_ref())
            ),
        ),
    }
    Ok(history
        .iter()
        .filter(|h| h.status_after.is_some())
        .map(|h| h.recorded_at)
        .collect())
}

fn brief(s: Option<&PaymentState>) -> Option<String> {
    s.map(|s| {
        format!(
            "{} paid {} refunded {} held {} {}",
            s.status.as_str(),
            s.paid_minor,
            s.refunded_minor,
            s.authorized_minor,
            s.currency
        )
    })
}

/// The dead letters by notification and item (`None`: the whole
/// notification), with their reasons: one dead item of a batch does not
/// account for its siblings.
struct Dead(std::collections::HashMap<(String, Option<u32>), String>);

impl Dead {
    /// Why item `item` of notification `id` (or the whole of it) was
    /// dead-lettered, if it was.
    fn reason(&self, id: &str, item: Option<u32>) -> Option<&str> {
        self.0
            .get(&(id.to_owned(), item))
            .or_else(|| self.0.get(&(id.to_owned(), None)))
            .map(String::as_str)
    }
}

async fn dead_letters(backends: &Backends) -> anyhow::Result<Dead> {
    Ok(Dead(
        backends
            .dead_letters
            .dlq_list(MAX_DEAD_LETTERS)
            .await?
            .iter()
            .filter_map(|d: &DeadLetter| {
                let body = paynotify_shared::envelope::QueuedBody::parse(&d.body).ok()?;
                Some(((body.notification_id(), body.item()), d.reason.clone()))
            })
            .collect(),
    ))
}
