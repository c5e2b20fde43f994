//! The payment state machine (DESIGN §5) as one pure function.
//!
//! [`transition`] decides, from the current state of a payment and one event,
//! whether the event changes the state, is only recorded, must wait for an
//! earlier event (`Park`), or conflicts with what the ledger already holds.
//! Deduplication by event key is the ledger's job, not this function's.

use serde::{Deserialize, Serialize};

use crate::event::{EventKind, EventOutcome, PaymentEvent, PaymentKey};
use crate::money::Currency;

/// The status of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    Authorized,
    Paid,
    Failed,
    PartiallyRefunded,
    Refunded,
    Voided,
}

impl PaymentStatus {
    /// The name used in the ledger and in output.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Authorized => "AUTHORIZED",
            Self::Paid => "PAID",
            Self::Failed => "FAILED",
            Self::PartiallyRefunded => "PARTIALLY_REFUNDED",
            Self::Refunded => "REFUNDED",
            Self::Voided => "VOIDED",
        }
    }

    /// Parses [`PaymentStatus::as_str`] output.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Authorized,
            Self::Paid,
            Self::Failed,
            Self::PartiallyRefunded,
            Self::Refunded,
            Self::Voided,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// The ledger's view of one payment. Amounts are minor units of `currency`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentState {
    pub payment_key: PaymentKey,
    pub status: PaymentStatus,
    pub currency: Currency,
    /// Held by a pre-authorization (0 for a direct sale).
    pub authorized_minor: u64,
    /// Captured or paid.
    pub paid_minor: u64,
    /// Sum of successful refunds; never exceeds `paid_minor`.
    pub refunded_minor: u64,
    /// Number of state changes so far; the ledger's optimistic-concurrency check.
    pub version: u64,
}

/// What applying one event to a payment does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Record the event and store this new state (its version is one higher).
    Apply(PaymentState),
    /// Record the event; the state (possibly none) is unchanged.
    Record,
    /// The event refers to something the ledger has not seen yet: park it
    /// under its payment until that arrives.
    Park(String),
    /// The event contradicts the ledger: dead-letter with reason `conflict`.
    Conflict(String),
}

/// Decides the effect of `event` on `current` (DESIGN §5).
pub fn transition(current: Option<&PaymentState>, event: &PaymentEvent) -> Transition {
    use EventKind::{
        Authorization, AuthorizationVoid, Capture, Dispute, Payment, Refund, RefundTotal, Void,
    };
    use EventOutcome::{Failed, Pending, Succeeded};
    use PaymentStatus as S;

    if event.outcome == Pending {
        return Transition::Record;
    }
    let amount = event.amount.minor;
    let Some(state) = current else {
        let new = |status, authorized, paid| {
            Transition::Apply(PaymentState {
                payment_key: event.payment_key.clone(),
                status,
                currency: event.amount.currency,
                authorized_minor: authorized,
                paid_minor: paid,
                refunded_minor: 0,
                version: 1,
            })
        };
        return match (event.kind, event.outcome) {
            (Payment, Succeeded) => new(S::Paid, 0, amount),
            (Payment | Authorization, Failed) => new(S::Failed, 0, 0),
            (Authorization, Succeeded) => new(S::Authorized, amount, 0),
            (Capture | Refund | RefundTotal | Void | AuthorizationVoid | Dispute, Succeeded) => {
                Transition::Park(format!(
                    "{:?} for payment {} that is not in the ledger yet",
                    event.kind, event.payment_key
                ))
            }
            (_, Failed | Pending) => Transition::Record,
        };
    };

    if event.outcome == Failed
        && matches!(
            event.kind,
            Capture | Refund | RefundTotal | Void | AuthorizationVoid | Dispute
        )
    {
        return Transition::Record;
    }
    if event.kind == Dispute {
        return Transition::Record;
    }
    if event.amount.currency != state.currency {
        let why = if event.currency_defaulted {
            format!(
                "the message names no currency ({} assumed) and the payment is in {}",
                event.amount.currency, state.currency
            )
        } else {
            "currency differs from the payment's".to_owned()
        };
        return conflict(state, event, &why);
    }
    let next = |status, f: &dyn Fn(&mut PaymentState)| {
        let mut s = state.clone();
        s.status = status;
        s.version += 1;
        f(&mut s);
        Transition::Apply(s)
    };
    match (state.status, event.kind, event.outcome) {
        // A failed attempt, then the customer tries again on the same
        // payment (Stripe's intent, a second card): the success is the
        // payment.
        // (A FAILED payment holds nothing: only a first event makes one.)
        (S::Failed, Payment, Succeeded) => next(S::Paid, &|s| s.paid_minor = amount),
        (S::Failed, Authorization, Succeeded) => {
            next(S::Authorized, &|s| s.authorized_minor = amount)
        }
        // A failure reported after the success (or again): an earlier
        // attempt's, recorded; it changes nothing.
        (_, Payment | Authorization, Failed) => Transition::Record,
        // A refund of an authorization not captured yet (Adyen does not
        // order REFUND and CAPTURE): it waits for the capture.
        (S::Authorized, Refund | RefundTotal, Succeeded) => Transition::Park(format!(
            "{:?} of payment {} that is authorized and not captured yet",
            event.kind, event.payment_key
        )),
        (S::Authorized, Capture, Succeeded) if amount <= state.authorized_minor => {
            next(S::Paid, &|s| s.paid_minor = amount)
        }
        (S::Authorized, Capture, Succeeded) => {
            conflict(state, event, "capture exceeds authorization")
        }
        // A void cancels the whole amount: held for an authorization, paid
        // for a sale or a captured authorization.
        (S::Authorized, Void | AuthorizationVoid, Succeeded)
            if amount == state.authorized_minor =>
        {
            next(S::Voided, &|_| {})
        }
        (S::Paid, Void, Succeeded) if amount == state.paid_minor => next(S::Voided, &|_| {}),
        (S::Authorized | S::Paid, Void | AuthorizationVoid, Succeeded)
            if event.kind == Void || state.status == S::Authorized =>
        {
            conflict(state, event, "void amount differs from the payment's")
        }
        (_, AuthorizationVoid, Succeeded) => conflict(
            state,
            event,
            "a pre-authorization void applies only to an uncaptured authorization",
        ),
        (S::Paid | S::PartiallyRefunded, Refund, Succeeded) => {
            let cumulative = state.refunded_minor.checked_add(amount);
            match cumulative {
                Some(c) if amount > 0 && c < state.paid_minor => {
                    next(S::PartiallyRefunded, &|s| s.refunded_minor = c)
                }
                Some(c) if amount > 0 && c == state.paid_minor => {
                    next(S::Refunded, &|s| s.refunded_minor = c)
                }
                _ => conflict(state, event, "refunds would exceed the amount paid"),
            }
        }
        (S::Paid | S::PartiallyRefunded | S::Refunded, RefundTotal, Succeeded)
            if amount <= state.refunded_minor =>
        {
            Transition::Record
        }
        (S::Paid | S::PartiallyRefunded, RefundTotal, Succeeded) if amount < state.paid_minor => {
            next(S::PartiallyRefunded, &|s| s.refunded_minor = amount)
        }
        (S::Paid | S::PartiallyRefunded, RefundTotal, Succeeded) if amount == state.paid_minor => {
            next(S::Refunded, &|s| s.refunded_minor = amount)
        }
        (S::Paid | S::PartiallyRefunded, RefundTotal, Succeeded) => {
            conflict(state, event, "refunds would exceed the amount paid")
        }
        _ => conflict(state, event, "not allowed in this state"),
    }
}

fn conflict(state: &PaymentState, event: &PaymentEvent, why: &str) -> Transition {
    Transition::Conflict(format!(
        "{:?} {:?} of {} on {} payment {}: {why}",
        event.kind,
        event.outcome,
        event.amount,
        state.status.as_str(),
        state.payment_key
    ))
}

#[cfg(test)]
mod tests;
