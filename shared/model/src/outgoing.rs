//! The public events paynotify sends to the merchant's systems, schema
//! `paynotify.payment.v1` (docs/events.md, docs/events.schema.json): one
//! per ledger transition, and one for a parked event that needs a person.
//! Amounts are decimal strings in the currency's unit; no card number or
//! secret is ever part of one.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::event::{PaymentEvent, PaymentKey};
use crate::money::Currency;
use crate::state::{PaymentState, PaymentStatus};

/// The schema every event names.
pub const SCHEMA: &str = "paynotify.payment.v1";

/// What happened to the payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "payment.authorized")]
    Authorized,
    #[serde(rename = "payment.paid")]
    Paid,
    #[serde(rename = "payment.partially_refunded")]
    PartiallyRefunded,
    #[serde(rename = "payment.refunded")]
    Refunded,
    #[serde(rename = "payment.voided")]
    Voided,
    #[serde(rename = "payment.failed")]
    Failed,
    /// An event parked for the payment contradicts it: it stays unapplied
    /// until a person decides.
    #[serde(rename = "payment.needs_attention")]
    NeedsAttention,
}

impl EventType {
    /// Every type, in the order docs/events.md lists them.
    pub const ALL: [Self; 7] = [
        Self::Authorized,
        Self::Paid,
        Self::PartiallyRefunded,
        Self::Refunded,
        Self::Voided,
        Self::Failed,
        Self::NeedsAttention,
    ];

    /// The type's name, as in `type`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Authorized => "payment.authorized",
            Self::Paid => "payment.paid",
            Self::PartiallyRefunded => "payment.partially_refunded",
            Self::Refunded => "payment.refunded",
            Self::Voided => "payment.voided",
            Self::Failed => "payment.failed",
            Self::NeedsAttention => "payment.needs_attention",
        }
    }

    /// Parses [`EventType::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The type of a transition that leaves the payment in `status`.
    pub fn of_status(status: PaymentStatus) -> Self {
        match status {
            PaymentStatus::Authorized => Self::Authorized,
            PaymentStatus::Paid => Self::Paid,
            PaymentStatus::PartiallyRefunded => Self::PartiallyRefunded,
            PaymentStatus::Refunded => Self::Refunded,
            PaymentStatus::Voided => Self::Voided,
            PaymentStatus::Failed => Self::Failed,
        }
    }
}

/// One outgoing event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingEvent {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Stable: the same transition always has the same id, however often it
    /// is delivered (derived from the payment key, its version and the
    /// event's place in that version).
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When the PSP says it happened, when the notification says.
    #[serde(with = "time::serde::rfc3339::option")]
    pub occurred_at: Option<OffsetDateTime>,
    /// When paynotify recorded it in the ledger.
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
    pub payment: PaymentView,
    /// The notification whose event caused this one.
    pub cause: Cause,
    /// Why a person is needed (`payment.needs_attention` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<String>,
}

/// The payment as this event leaves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentView {
    /// `{source}#{merchant}#{reference}`: the ledger's key.
    pub key: String,
    pub source: String,
    pub merchant: String,
    /// The PSP's id of the payment (UnionPay `queryId`, a Stripe
    /// PaymentIntent, Adyen `pspReference`).
    pub reference: String,
    /// The merchant's own order id, as the notification that created the
    /// payment named it ([`crate::event::order_id_of`]); `None` when it
    /// named none, or the payment was applied before paynotify kept it.
    #[serde(default)]
    pub order_id: Option<String>,
    /// `None` only for an event about a payment that has not arrived.
    pub status: Option<PaymentStatus>,
    pub previous_status: Option<PaymentStatus>,
    /// The ledger's version of the payment after the write; events of one
    /// write share it and are told apart by `sequence`.
    pub version: u64,
    /// The event's place among those of `version`, from 0. Events of one
    /// payment are ordered by (`version`, `sequence`).
    pub sequence: u32,
    pub currency: String,
    pub authorized: String,
    pub paid: String,
    pub refunded: String,
}

/// The PSP event (one notification) that caused an outgoing event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    pub notification_id: String,
    /// The ledger's idempotency key of the PSP event.
    pub event_key: String,
    pub kind: String,
    pub outcome: String,
    pub amount: String,
    pub currency: String,
    /// The PSP's id of this transaction, when it has one.
    pub psp_txn_id: Option<String>,
    /// The PSP's result code, when it gives one.
    pub result_code: Option<String>,
}

impl Cause {
    /// The cause of an event about `event`, from `notification_id`.
    pub fn of(event: &PaymentEvent, notification_id: &str) -> Self {
        Self {
            notification_id: notification_id.to_owned(),
            event_key: event.event_key.as_str().to_owned(),
            kind: event.kind.as_str().to_owned(),
            outcome: event.outcome.as_str().to_owned(),
            amount: event.amount.currency.decimal(event.amount.minor),
            currency: event.amount.currency.as_str().to_owned(),
            psp_txn_id: event.psp_txn_id.clone(),
            result_code: event.result_code.clone(),
        }
    }
}

/// The id of the `sequence`th event of `version` of the payment `key`:
/// `evt_` and 32 hex digits of a SHA-256, so it holds no `.` (Standard
/// Webhooks' `webhook-id`) and reveals nothing of the key.
pub fn event_id(key: &str, version: u64, sequence: u32) -> String {
    let digest = Sha256::digest(format!("{key}\n{version}\n{sequence}").as_bytes());
    format!("evt_{}", hex::encode(&digest[..16]))
}

/// The payment `key` (of the merchant's `order_id`) after an event
/// (`state`; `None` when it has not arrived) and its status before
/// (`previous`). `currency` is the event's, for a payment that has not
/// arrived.
pub fn payment_view(
    key: &PaymentKey,
    order_id: Option<&str>,
    currency: Currency,
    state: Option<&PaymentState>,
    previous: Option<PaymentStatus>,
    version: u64,
    sequence: u32,
) -> PaymentView {
    let currency = state.map_or(currency, |s| s.currency);
    let amount = |f: fn(&PaymentState) -> u64| currency.decimal(state.map_or(0, f));
    let (source, merchant, reference) = key.parts();
    PaymentView {
        key: key.as_str().to_owned(),
        source: source.to_owned(),
        merchant: merchant.to_owned(),
        reference: reference.to_owned(),
        order_id: order_id.map(str::to_owned),
        status: state.map(|s| s.status),
        previous_status: previous,
        version,
        sequence,
        currency: currency.as_str().to_owned(),
        authorized: amount(|s| s.authorized_minor),
        paid: amount(|s| s.paid_minor),
        refunded: amount(|s| s.refunded_minor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_match_the_serialised_form() {
        for t in EventType::ALL {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
    }

    #[test]
    fn ids_are_stable_distinct_and_dot_free() {
        let a = event_id("unionpay#m#o1", 3, 0);
        assert_eq!(a, event_id("unionpay#m#o1", 3, 0));
        assert_ne!(a, event_id("unionpay#m#o1", 3, 1));
        assert_ne!(a, event_id("unionpay#m#o1", 4, 0));
        assert_ne!(a, event_id("unionpay#m#o2", 3, 0));
        assert!(a.starts_with("evt_") && a.len() == 36 && !a.contains('.'));
    }
}
