//! The PSP-neutral payment event a verified notification turns into.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::money::Money;

/// `{source}#{merchant}#{payment_ref}`: identifies one payment in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PaymentKey(String);

impl PaymentKey {
    /// Builds the key from its three parts.
    pub fn new(source: &str, merchant: &str, payment_ref: &str) -> Self {
        Self(format!("{source}#{merchant}#{payment_ref}"))
    }

    /// A key read back from the ledger.
    pub fn from_stored(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The source, merchant and payment reference the key was built from.
    pub fn parts(&self) -> (&str, &str, &str) {
        let mut parts = self.0.splitn(3, '#');
        let mut next = || parts.next().unwrap_or("");
        (next(), next(), next())
    }

    /// The key of another payment reference of the same source and merchant
    /// (a completion's own id, for its alias).
    pub fn sibling(&self, payment_ref: &str) -> Self {
        let mut parts = self.0.splitn(3, '#');
        let (source, merchant) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        Self::new(source, merchant, payment_ref)
    }
}

impl fmt::Display for PaymentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The idempotency key of one notification: a PSP retry has the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventKey(String);

impl EventKey {
    /// Wraps a key built by a scheme's mapping.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the PSP says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A sale: authorization and capture in one step.
    Payment,
    /// A pre-authorization (funds held, not captured).
    Authorization,
    /// Completion of a pre-authorization.
    Capture,
    /// A (partial or full) refund of a paid payment.
    Refund,
    /// Cancellation of a payment or of a completed capture, for the whole
    /// amount (UnionPay 31, 33).
    Void,
    /// Cancellation of a pre-authorization that was not captured, for the
    /// whole amount held (UnionPay 32).
    AuthorizationVoid,
    /// The payment's refunds now total this amount (Stripe's cumulative
    /// `amount_refunded`): an older or equal total changes nothing, so
    /// totals arriving out of order still end at the largest.
    RefundTotal,
    /// A chargeback was opened: recorded in the payment's history, no state
    /// change (Stripe `charge.dispute.created`).
    Dispute,
}

impl EventKind {
    /// The name used in the ledger and in output.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Payment => "payment",
            Self::Authorization => "authorization",
            Self::Capture => "capture",
            Self::Refund => "refund",
            Self::Void => "void",
            Self::AuthorizationVoid => "authorization_void",
            Self::RefundTotal => "refund_total",
            Self::Dispute => "dispute",
        }
    }
}

/// Whether the PSP reports the operation as done, failed, or still in process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventOutcome {
    Succeeded,
    Failed,
    /// The PSP has not finished (UnionPay `respCode` 03/04/05): recorded, no state change.
    Pending,
}

impl EventOutcome {
    /// The name used in the ledger and in output.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Pending => "pending",
        }
    }
}

/// The longest merchant order id an event carries, in bytes (UnionPay's
/// `orderId` is at most 40; Adyen's `merchantReference` at most 80).
pub const MAX_ORDER_ID_BYTES: usize = 128;

/// The order id an event of `kind` carries, given what its message names:
/// only an event that creates a payment (a payment or an authorization)
/// carries one, since a refund's or a capture's own order is not the
/// payment's; and only a non-empty one of at most [`MAX_ORDER_ID_BYTES`]
/// without control characters. Anything else carries none: the order id is
/// how an operator finds a payment, never what applies it, so a message
/// whose order id cannot be indexed is still applied.
pub fn order_id_of(kind: EventKind, named: Option<&str>) -> Option<String> {
    let named = named?;
    let creates = matches!(kind, EventKind::Payment | EventKind::Authorization);
    let indexable = !named.is_empty()
        && named.len() <= MAX_ORDER_ID_BYTES
        && !named.chars().any(char::is_control);
    (creates && indexable).then(|| named.to_owned())
}

/// One verified notification, in PSP-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentEvent {
    pub source: String,
    pub merchant: String,
    /// The PSP's id of the original payment this event belongs to.
    pub payment_ref: String,
    pub payment_key: PaymentKey,
    pub event_key: EventKey,
    pub kind: EventKind,
    pub outcome: EventOutcome,
    pub amount: Money,
    /// The message named no currency and `amount.currency` is the scheme's
    /// default (UnionPay: CNY); a payment in another currency then conflicts
    /// with a reason that says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub currency_defaulted: bool,
    /// The PSP's own id of this transaction (UnionPay `queryId`).
    pub psp_txn_id: Option<String>,
    /// When the PSP says the transaction happened.
    #[serde(with = "time::serde::rfc3339::option")]
    pub psp_time: Option<OffsetDateTime>,
    /// The PSP's result code and message, for the audit trail.
    pub result_code: Option<String>,
    pub result_message: Option<String>,
    /// The PSP's settlement (clearing) day of this transaction, ISO 8601
    /// `YYYY-MM-DD`, when the message names it (UnionPay `settleDate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle_date: Option<String>,
    /// The merchant's own id of the order the payment was made for, on an
    /// event that creates the payment, when its message names one
    /// (UnionPay `orderId`, Adyen `merchantReference`, Stripe
    /// `metadata.order_id`, a Standard Webhooks source's `order_id`
    /// pointer): the ledger finds payments by it ([`order_id_of`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// The key this event had before the scheme's keys changed, when it
    /// differs from `event_key`: a ledger that holds that key holds this
    /// event (UnionPay: a success once keyed by its raw code `A6`). Derived
    /// when the message is read; never stored.
    #[serde(skip)]
    pub legacy_key: Option<EventKey>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_event_that_creates_a_payment_carries_an_indexable_order_id() {
        use EventKind::*;
        assert_eq!(order_id_of(Payment, Some("O-1")), Some("O-1".into()));
        assert_eq!(order_id_of(Authorization, Some("O-1")), Some("O-1".into()));
        for k in [
            Capture,
            Refund,
            Void,
            AuthorizationVoid,
            RefundTotal,
            Dispute,
        ] {
            assert_eq!(order_id_of(k, Some("O-1")), None, "{k:?}");
        }
        assert_eq!(order_id_of(Payment, None), None);
        assert_eq!(order_id_of(Payment, Some("")), None);
        assert_eq!(order_id_of(Payment, Some("a\nb")), None);
        let longest = "x".repeat(MAX_ORDER_ID_BYTES);
        assert_eq!(order_id_of(Payment, Some(&longest)), Some(longest.clone()));
        assert_eq!(order_id_of(Payment, Some(&format!("{longest}x"))), None);
        // Bytes, not characters: 43 three-byte characters are 129 bytes.
        assert_eq!(order_id_of(Payment, Some(&"订".repeat(43))), None);
    }

    #[test]
    fn names_match_the_serialised_form() {
        use EventKind::*;
        for k in [
            Payment,
            Authorization,
            Capture,
            Refund,
            Void,
            AuthorizationVoid,
            RefundTotal,
            Dispute,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        for o in [
            EventOutcome::Succeeded,
            EventOutcome::Failed,
            EventOutcome::Pending,
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
    }
}
