//! The outbox and the deliveries port: the outgoing events of ledger writes
//! (recorded with the write, never after it) and their delivery to each of
//! the merchant's endpoints (DESIGN §8).

use async_trait::async_trait;
use serde::Serialize;
use time::OffsetDateTime;

use paynotify_model::outgoing::{event_id, payment_view, Cause, EventType, OutgoingEvent, SCHEMA};
use paynotify_model::state::{transition, PaymentState, Transition};

use crate::{Incoming, LedgerError, LedgerWrite};

/// The outgoing events of `w`, written on a payment that was `previous`
/// before it (of the merchant's order `order_id`, as the ledger holds it;
/// when it holds none, the order an event of `w` names), recorded at
/// `recorded_at`: one per event that changed the
/// payment (the incoming one, then those unparked, in order) and one per
/// parked event found to contradict it. A write that changes no state has
/// none.
///
/// The states between the events of one write are the state machine's,
/// replayed from `previous`; the last is the write's own state.
pub fn outgoing_events(
    previous: Option<&PaymentState>,
    w: &LedgerWrite,
    order_id: Option<&str>,
    recorded_at: OffsetDateTime,
) -> Vec<OutgoingEvent> {
    let version = w.expected_version + 1;
    let key = w.key.as_str();
    let incoming = match &w.incoming {
        Incoming::Record(r) => Some(r),
        Incoming::Park(_) | Incoming::Nothing => None,
    };
    let order_id = order_id.or_else(|| {
        incoming
            .into_iter()
            .chain(&w.unparked)
            .find_map(|r| r.event.order_id.as_deref())
    });
    let changes: Vec<_> = incoming
        .into_iter()
        .chain(&w.unparked)
        .filter_map(|r| Some((r, r.status_after?)))
        .collect();
    let mut state = previous.cloned();
    let mut out = Vec::new();
    for (i, &(r, status)) in changes.iter().enumerate() {
        let before = state.as_ref().map(|s| s.status);
        let after = if i + 1 == changes.len() && w.state.is_some() {
            w.state.clone()
        } else {
            match transition(state.as_ref(), &r.event) {
                Transition::Apply(mut s) => {
                    s.version = version;
                    Some(s)
                }
                // The write was planned by this same function: a replay
                // that disagrees keeps the status the write recorded.
                _ => state.clone().map(|mut s| {
                    s.status = status;
                    s
                }),
            }
        };
        state = after;
        let sequence = out.len() as u32;
        out.push(OutgoingEvent {
            schema: SCHEMA.to_owned(),
            id: event_id(key, version, sequence),
            event_type: EventType::of_status(status),
            occurred_at: r.event.psp_time,
            recorded_at,
            payment: payment_view(
                &w.key,
                order_id,
                r.event.amount.currency,
                state.as_ref(),
                before,
                version,
                sequence,
            ),
            cause: Cause::of(&r.event, &r.notification_id),
            attention: None,
        });
    }
    let last = state.as_ref().map(|s| s.status);
    for c in &w.conflicts {
        let sequence = out.len() as u32;
        let event = &c.parked.event;
        out.push(OutgoingEvent {
            schema: SCHEMA.to_owned(),
            id: event_id(key, version, sequence),
            event_type: EventType::NeedsAttention,
            occurred_at: event.psp_time,
            recorded_at,
            payment: payment_view(
                &w.key,
                order_id,
                event.amount.currency,
                state.as_ref(),
                last,
                version,
                sequence,
            ),
            cause: Cause::of(event, &c.parked.notification_id),
            attention: c.parked.conflict.clone(),
        });
    }
    out
}

/// One outgoing event as the outbox holds it: `body` is the exact JSON
/// every delivery sends (and signs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxRecord {
    /// Its place in the outbox: later writes have larger numbers.
    pub seq: u64,
    pub event_id: String,
    pub payment_key: String,
    pub event_type: EventType,
    pub source: String,
    pub merchant: String,
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
    #[serde(skip)]
    pub body: String,
}

/// Where one delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not delivered yet: due at `next_at`, or waiting for an earlier event
    /// of its payment.
    Pending,
    Delivered,
    /// Every attempt failed: it waits for `deliveries resend`, and so do the
    /// later events of its payment to this endpoint.
    DeadLettered,
}

impl DeliveryStatus {
    /// The name used in storage and output.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::DeadLettered => "dead_lettered",
        }
    }

    /// Parses [`DeliveryStatus::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Delivered, Self::DeadLettered]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// One outgoing event to one endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub endpoint: String,
    #[serde(flatten)]
    pub record: OutboxRecord,
    pub status: DeliveryStatus,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub next_at: OffsetDateTime,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_attempt_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    /// Failed; tried again at `retry_at`, or dead-lettered when `None`.
    Failed {
        error: String,
        retry_at: Option<OffsetDateTime>,
    },
}

/// How an endpoint is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EndpointStatus {
    pub endpoint: String,
    /// The last outbox record considered for it.
    pub cursor: u64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_success: Option<OffsetDateTime>,
    /// Every attempt since this time failed.
    #[serde(with = "time::serde::rfc3339::option")]
    pub failing_since: Option<OffsetDateTime>,
    /// Why nothing is sent to it, when it is disabled.
    pub disabled: Option<String>,
    /// Deliveries not delivered: pending and dead-lettered.
    pub pending: u64,
    pub dead_lettered: u64,
    /// When the oldest pending delivery's event was recorded.
    #[serde(with = "time::serde::rfc3339::option")]
    pub oldest_pending: Option<OffsetDateTime>,
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub endpoint: Option<String>,
    pub payment_key: Option<String>,
    pub event_id: Option<String>,
    pub status: Option<DeliveryStatus>,
    /// Only events recorded at or after this time.
    pub since: Option<OffsetDateTime>,
    pub limit: usize,
}

/// The outbox and the deliveries of its events.
///
/// # Contract
/// - The outbox holds the [`outgoing_events`] of every ledger write, written
///   atomically with it: no event without its write, no write without its
///   events. `outbox_after` lists records with `seq > after`, ascending, at
///   most `limit`; a record once listed keeps its `seq`, and no record with
///   a smaller `seq` than one listed appears later.
/// - `enqueue` adds a pending delivery (due at `now`) of each record in
///   `seqs` to `endpoint`, keeping any it already has, and moves the
///   endpoint's cursor to `cursor` unless it is already further: all of it
///   or nothing.
/// - A payment's deliveries to one endpoint form a line in `seq` order.
///   `claim` returns at most `limit` pending deliveries of `endpoint` due at
///   `now` that head their line (every earlier one of the payment is
///   delivered), not claimed by a lease still running, and leases them until
///   `lease_until`.
/// - `settle` records an attempt and ends the lease: `Delivered` marks it
///   delivered and the endpoint's last success; `Failed` keeps it pending
///   until `retry_at` or dead-letters it, and starts the endpoint's failing
///   time unless it is running.
/// - `resend` makes a delivery pending and due at `now` with no attempts
///   (whatever its status); false when there is none.
/// - `set_disabled` disables (with the reason) or enables an endpoint;
///   `endpoint_status` reads its figures.
#[async_trait]
pub trait Deliveries: Send + Sync {
    async fn outbox_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, LedgerError>;
    /// The outbox records of one payment, in order.
    async fn outbox_for(&self, payment_key: &str) -> Result<Vec<OutboxRecord>, LedgerError>;
    /// Since when every ledger write has its events in the outbox (a ledger
    /// written before it had an outbox has transitions without events).
    async fn outbox_since(&self) -> Result<Option<OffsetDateTime>, LedgerError>;
    async fn enqueue(
        &self,
        endpoint: &str,
        seqs: &[u64],
        cursor: u64,
        now: OffsetDateTime,
    ) -> Result<(), LedgerError>;
    async fn claim(
        &self,
        endpoint: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Delivery>, LedgerError>;
    async fn settle(
        &self,
        endpoint: &str,
        seq: u64,
        attempt: &Attempt,
        now: OffsetDateTime,
    ) -> Result<(), LedgerError>;
    async fn resend(
        &self,
        endpoint: &str,
        event_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, LedgerError>;
    async fn list(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>, LedgerError>;
    async fn endpoint_status(&self, endpoint: &str) -> Result<EndpointStatus, LedgerError>;
    async fn set_disabled(&self, endpoint: &str, reason: Option<&str>) -> Result<(), LedgerError>;

    /// Whether `endpoint` has every event of the outbox moved into its
    /// deliveries and none of them open (pending or dead-lettered).
    async fn caught_up(&self, endpoint: &str) -> Result<bool, LedgerError> {
        let s = self.endpoint_status(endpoint).await?;
        Ok(s.pending == 0
            && s.dead_lettered == 0
            && self.outbox_after(s.cursor, 1).await?.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use paynotify_model::event::{EventKey, EventKind, EventOutcome, PaymentEvent, PaymentKey};
    use paynotify_model::money::{Currency, Money};
    use paynotify_model::state::PaymentStatus;

    use super::*;
    use crate::{ParkedEntry, ParkedEvent, RecordedEvent};

    fn event(id: &str, kind: EventKind, minor: u64) -> PaymentEvent {
        PaymentEvent {
            source: "unionpay".into(),
            merchant: "m1".into(),
            payment_ref: "order-1".into(),
            payment_key: PaymentKey::new("unionpay", "m1", "order-1"),
            event_key: EventKey::new(id),
            kind,
            outcome: EventOutcome::Succeeded,
            amount: Money {
                minor,
                currency: Currency::from_alpha("CNY").unwrap(),
            },
            currency_defaulted: false,
            psp_txn_id: Some(id.into()),
            psp_time: None,
            result_code: Some("00".into()),
            result_message: None,
            settle_date: None,
            order_id: None,
            legacy_key: None,
        }
    }

    fn recorded(e: &PaymentEvent, status: Option<PaymentStatus>, parked: bool) -> RecordedEvent {
        RecordedEvent {
            event: e.clone(),
            notification_id: format!("n-{}", e.event_key),
            status_after: status,
            unparked_from: parked.then(|| e.payment_key.clone()),
        }
    }

    #[test]
    fn a_write_that_unparks_has_one_event_per_change_and_one_per_conflict() {
        let pay = event("pay", EventKind::Payment, 1000);
        let refund = event("r1", EventKind::Refund, 300);
        let over = event("r2", EventKind::Refund, 5000);
        let Transition::Apply(paid) = transition(None, &pay) else {
            panic!()
        };
        let Transition::Apply(mut final_state) = transition(Some(&paid), &refund) else {
            panic!()
        };
        final_state.version = 3;
        let w = LedgerWrite {
            key: pay.payment_key.clone(),
            expected_version: 2,
            incoming: Incoming::Record(recorded(&pay, Some(PaymentStatus::Paid), false)),
            state: Some(final_state),
            unparked: vec![recorded(
                &refund,
                Some(PaymentStatus::PartiallyRefunded),
                true,
            )],
            conflicts: vec![ParkedEntry {
                payment_key: over.payment_key.clone(),
                parked: ParkedEvent {
                    event: over.clone(),
                    notification_id: "n-r2".into(),
                    parked_at: OffsetDateTime::UNIX_EPOCH,
                    conflict: Some("refunds would exceed the amount paid".into()),
                },
            }],
            aliases: Vec::new(),
        };
        let at = OffsetDateTime::UNIX_EPOCH;
        let events = outgoing_events(None, &w, None, at);
        let summary: Vec<_> = events
            .iter()
            .map(|e| {
                (
                    e.event_type,
                    e.payment.previous_status,
                    e.payment.status,
                    e.payment.paid.as_str(),
                    e.payment.refunded.as_str(),
                    e.payment.sequence,
                )
            })
            .collect();
        use PaymentStatus::{Paid, PartiallyRefunded};
        assert_eq!(
            summary,
            vec![
                (EventType::Paid, None, Some(Paid), "10.00", "0.00", 0),
                (
                    EventType::PartiallyRefunded,
                    Some(Paid),
                    Some(PartiallyRefunded),
                    "10.00",
                    "3.00",
                    1
                ),
                (
                    EventType::NeedsAttention,
                    Some(PartiallyRefunded),
                    Some(PartiallyRefunded),
                    "10.00",
                    "3.00",
                    2
                ),
            ]
        );
        assert!(events.iter().all(|e| e.payment.version == 3
            && e.payment.reference == "order-1"
            && e.schema == SCHEMA));
        assert_eq!(events[1].cause.notification_id, "n-r1");
        assert_eq!(events[1].cause.amount, "3.00");
        assert!(events[2].attention.as_deref().unwrap().contains("exceed"));
        // Stable: the same write gives the same ids; they differ from each other.
        let again = outgoing_events(None, &w, None, at);
        assert_eq!(events, again);
        assert_ne!(events[0].id, events[1].id);
    }

    #[test]
    fn a_write_that_changes_no_state_has_none() {
        let mut pending = event("p", EventKind::Payment, 1000);
        pending.outcome = EventOutcome::Pending;
        let w = LedgerWrite {
            key: pending.payment_key.clone(),
            expected_version: 0,
            incoming: Incoming::Record(recorded(&pending, None, false)),
            state: None,
            unparked: Vec::new(),
            conflicts: Vec::new(),
            aliases: Vec::new(),
        };
        assert!(outgoing_events(None, &w, None, OffsetDateTime::UNIX_EPOCH).is_empty());
    }
}
