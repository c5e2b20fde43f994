//! Unit and property tests of the state machine.

use std::collections::{HashSet, VecDeque};

use proptest::prelude::*;

use super::*;
use crate::event::{EventKey, PaymentEvent};
use crate::money::Money;

fn cny() -> Currency {
    Currency::from_alpha("CNY").unwrap()
}

fn ev(id: &str, kind: EventKind, outcome: EventOutcome, minor: u64) -> PaymentEvent {
    PaymentEvent {
        source: "unionpay".into(),
        merchant: "m".into(),
        payment_ref: "p".into(),
        payment_key: PaymentKey::new("unionpay", "m", "p"),
        event_key: EventKey::new(id),
        kind,
        outcome,
        amount: Money {
            minor,
            currency: cny(),
        },
        currency_defaulted: false,
        psp_txn_id: None,
        psp_time: None,
        result_code: None,
        result_message: None,
        settle_date: None,
    }
}

fn applied(t: Transition) -> PaymentState {
    match t {
        Transition::Apply(s) => s,
        other => panic!("expected Apply, got {other:?}"),
    }
}

use EventKind::*;
use EventOutcome::*;

#[test]
fn purchase_then_partial_then_full_refund() {
    let paid = applied(transition(None, &ev("1", Payment, Succeeded, 100)));
    assert_eq!(
        (paid.status, paid.paid_minor, paid.version),
        (PaymentStatus::Paid, 100, 1)
    );
    let part = applied(transition(Some(&paid), &ev("2", Refund, Succeeded, 30)));
    assert_eq!(
        (part.status, part.refunded_minor),
        (PaymentStatus::PartiallyRefunded, 30)
    );
    let full = applied(transition(Some(&part), &ev("3", Refund, Succeeded, 70)));
    assert_eq!(
        (full.status, full.refunded_minor, full.version),
        (PaymentStatus::Refunded, 100, 3)
    );
    assert!(matches!(
        transition(Some(&full), &ev("4", Refund, Succeeded, 1)),
        Transition::Conflict(_)
    ));
}

#[test]
fn over_refund_and_zero_refund_conflict() {
    let paid = applied(transition(None, &ev("1", Payment, Succeeded, 100)));
    assert!(matches!(
        transition(Some(&paid), &ev("2", Refund, Succeeded, 101)),
        Transition::Conflict(_)
    ));
    assert!(matches!(
        transition(Some(&paid), &ev("2", Refund, Succeeded, 0)),
        Transition::Conflict(_)
    ));
    let mut usd = ev("2", Refund, Succeeded, 10);
    usd.amount.currency = Currency::from_alpha("USD").unwrap();
    assert!(matches!(
        transition(Some(&paid), &usd),
        Transition::Conflict(_)
    ));
}

#[test]
fn events_before_their_payment_retry() {
    for kind in [Refund, Void, Capture] {
        assert!(matches!(
            transition(None, &ev("1", kind, Succeeded, 1)),
            Transition::Retry(_)
        ));
        assert_eq!(
            transition(None, &ev("1", kind, Failed, 1)),
            Transition::Record
        );
    }
}

#[test]
fn pending_and_failed_refunds_are_recorded_only() {
    let paid = applied(transition(None, &ev("1", Payment, Succeeded, 100)));
    assert_eq!(
        transition(Some(&paid), &ev("2", Refund, Pending, 5)),
        Transition::Record
    );
    assert_eq!(
        transition(Some(&paid), &ev("2", Refund, Failed, 5)),
        Transition::Record
    );
    assert_eq!(
        transition(None, &ev("2", Payment, Pending, 5)),
        Transition::Record
    );
}

#[test]
fn authorization_capture_void() {
    let auth = applied(transition(None, &ev("1", Authorization, Succeeded, 100)));
    assert_eq!(auth.status, PaymentStatus::Authorized);
    assert!(matches!(
        transition(Some(&auth), &ev("2", Capture, Succeeded, 101)),
        Transition::Conflict(_)
    ));
    let cap = applied(transition(Some(&auth), &ev("2", Capture, Succeeded, 80)));
    assert_eq!((cap.status, cap.paid_minor), (PaymentStatus::Paid, 80));
    assert_eq!(
        applied(transition(Some(&auth), &ev("3", Void, Succeeded, 100))).status,
        PaymentStatus::Voided
    );
    assert_eq!(
        applied(transition(Some(&cap), &ev("3", Void, Succeeded, 80))).status,
        PaymentStatus::Voided
    );
    let failed = applied(transition(None, &ev("1", Payment, Failed, 100)));
    assert_eq!(failed.status, PaymentStatus::Failed);
    assert!(matches!(
        transition(Some(&failed), &ev("2", Refund, Succeeded, 1)),
        Transition::Conflict(_)
    ));
}

#[test]
fn voids_cancel_the_whole_amount_and_preauth_voids_only_authorizations() {
    let auth = applied(transition(None, &ev("1", Authorization, Succeeded, 100)));
    for amount in [99, 101, 0] {
        assert!(matches!(
            transition(Some(&auth), &ev("2", Void, Succeeded, amount)),
            Transition::Conflict(_)
        ));
        assert!(matches!(
            transition(Some(&auth), &ev("2", AuthorizationVoid, Succeeded, amount)),
            Transition::Conflict(_)
        ));
    }
    assert_eq!(
        applied(transition(
            Some(&auth),
            &ev("2", AuthorizationVoid, Succeeded, 100)
        ))
        .status,
        PaymentStatus::Voided
    );
    let cap = applied(transition(Some(&auth), &ev("2", Capture, Succeeded, 80)));
    let Transition::Conflict(why) =
        transition(Some(&cap), &ev("3", AuthorizationVoid, Succeeded, 80))
    else {
        panic!("a pre-auth void of a captured payment must conflict")
    };
    assert!(why.contains("uncaptured"), "{why}");
    assert!(matches!(
        transition(Some(&cap), &ev("3", Void, Succeeded, 100)),
        Transition::Conflict(_)
    ));
    let paid = applied(transition(None, &ev("1", Payment, Succeeded, 100)));
    assert!(matches!(
        transition(Some(&paid), &ev("2", AuthorizationVoid, Succeeded, 100)),
        Transition::Conflict(_)
    ));
    assert!(matches!(
        transition(None, &ev("2", AuthorizationVoid, Succeeded, 100)),
        Transition::Retry(_)
    ));
}

#[test]
fn an_assumed_currency_that_differs_says_so() {
    let mut paid = applied(transition(None, &ev("1", Payment, Succeeded, 100)));
    paid.currency = Currency::from_alpha("USD").unwrap();
    let mut refund = ev("2", Refund, Succeeded, 10);
    refund.currency_defaulted = true;
    let Transition::Conflict(why) = transition(Some(&paid), &refund) else {
        panic!("expected a conflict")
    };
    assert!(
        why.contains("names no currency (CNY assumed)") && why.contains("USD"),
        "{why}"
    );
}

#[test]
fn void_after_refund_and_second_payment_conflict() {
    let paid = applied(transition(None, &ev("1", Payment, Succeeded, 100)));
    let part = applied(transition(Some(&paid), &ev("2", Refund, Succeeded, 30)));
    assert!(matches!(
        transition(Some(&part), &ev("3", Void, Succeeded, 100)),
        Transition::Conflict(_)
    ));
    assert!(matches!(
        transition(Some(&paid), &ev("4", Payment, Succeeded, 100)),
        Transition::Conflict(_)
    ));
}

/// Applies events as a ledger and queue would: duplicates by event key are
/// skipped, `Retry` goes to the back of the queue, conflicts are dropped.
fn run(events: &[PaymentEvent]) -> Option<PaymentState> {
    let mut queue: VecDeque<(PaymentEvent, u32)> = events.iter().cloned().map(|e| (e, 0)).collect();
    let mut seen = HashSet::new();
    let mut state: Option<PaymentState> = None;
    while let Some((e, tries)) = queue.pop_front() {
        if seen.contains(&e.event_key) {
            continue;
        }
        match transition(state.as_ref(), &e) {
            Transition::Apply(s) => {
                assert!(
                    s.refunded_minor <= s.paid_minor,
                    "refunded exceeds paid: {s:?}"
                );
                assert_eq!(s.version, state.as_ref().map_or(0, |p| p.version) + 1);
                seen.insert(e.event_key.clone());
                state = Some(s);
            }
            Transition::Record | Transition::Conflict(_) => {
                seen.insert(e.event_key.clone());
            }
            Transition::Retry(_) if tries < 100 => queue.push_back((e, tries + 1)),
            Transition::Retry(_) => {}
        }
    }
    state
}

/// A consistent history of one payment, in the order the PSP produced it.
fn history() -> impl Strategy<Value = Vec<PaymentEvent>> {
    let refunds = (1u64..10_000)
        .prop_flat_map(|paid| (Just(paid), proptest::collection::vec(1u64..=paid, 0..6)));
    prop_oneof![
        refunds.prop_map(|(paid, parts)| {
            let mut out = vec![ev("pay", Payment, Succeeded, paid)];
            let mut left = paid;
            for (i, p) in parts.into_iter().enumerate() {
                let amount = p.min(left);
                if amount == 0 {
                    break;
                }
                left -= amount;
                out.push(ev(&format!("refund{i}"), Refund, Succeeded, amount));
                out.push(ev(&format!("refund{i}-pending"), Refund, Pending, amount));
            }
            out
        }),
        (1u64..10_000).prop_map(|paid| vec![
            ev("pay", Payment, Succeeded, paid),
            ev("void", Void, Succeeded, paid)
        ]),
        (1u64..10_000, any::<bool>()).prop_map(|(held, void)| {
            let last = if void {
                ev("void", Void, Succeeded, held)
            } else {
                ev("cap", Capture, Succeeded, held / 2 + 1)
            };
            vec![ev("auth", Authorization, Succeeded, held), last]
        }),
        (1u64..10_000).prop_map(|paid| vec![
            ev("pay", Payment, Failed, paid),
            ev("r", Refund, Failed, paid)
        ]),
    ]
}

proptest! {
    #[test]
    fn duplicates_and_order_do_not_change_the_outcome(
        (original, delivered) in history().prop_flat_map(|h| {
            let n = h.len();
            let deliveries = proptest::collection::vec(0..n, n..n * 4)
                .prop_map(move |mut picks| { picks.extend(0..n); picks });
            (Just(h), deliveries).prop_flat_map(|(h, picks)| {
                let d: Vec<_> = picks.iter().map(|&i| h[i].clone()).collect();
                (Just(h), Just(d).prop_shuffle())
            })
        })
    ) {
        let expected = run(&original);
        prop_assert_eq!(run(&delivered), expected);
    }

    #[test]
    fn arbitrary_sequences_never_refund_more_than_paid(
        events in proptest::collection::vec(
            (0usize..6, 0usize..3, 0u64..500, 0u8..12)
                .prop_map(|(k, o, amount, id)| {
                    let kind = [Payment, Authorization, Capture, Refund, Void, AuthorizationVoid][k];
                    let outcome = [Succeeded, Failed, Pending][o];
                    ev(&id.to_string(), kind, outcome, amount)
                }),
            0..30)
    ) {
        if let Some(s) = run(&events) {
            prop_assert!(s.refunded_minor <= s.paid_minor);
        }
    }
}

#[test]
fn refund_totals_end_at_the_largest_in_any_order() {
    let paid = applied(transition(None, &ev("p", Payment, Succeeded, 100)));
    let t30 = ev("t30", RefundTotal, Succeeded, 30);
    let t100 = ev("t100", RefundTotal, Succeeded, 100);
    // In order: 30, then 100.
    let part = applied(transition(Some(&paid), &t30));
    assert_eq!(
        (part.status, part.refunded_minor),
        (PaymentStatus::PartiallyRefunded, 30)
    );
    let full = applied(transition(Some(&part), &t100));
    assert_eq!(
        (full.status, full.refunded_minor),
        (PaymentStatus::Refunded, 100)
    );
    // Out of order: the older, smaller total changes nothing.
    assert_eq!(transition(Some(&full), &t30), Transition::Record);
    assert_eq!(transition(Some(&part), &t30), Transition::Record);
    // More than was paid contradicts the payment; a failed one is recorded.
    assert!(matches!(
        transition(Some(&paid), &ev("t", RefundTotal, Succeeded, 101)),
        Transition::Conflict(_)
    ));
    assert_eq!(
        transition(Some(&paid), &ev("f", RefundTotal, Failed, 50)),
        Transition::Record
    );
    // Before its payment: wait for it.
    assert!(matches!(transition(None, &t30), Transition::Retry(_)));
}

#[test]
fn a_dispute_is_recorded_without_a_state_change() {
    let paid = applied(transition(None, &ev("p", Payment, Succeeded, 100)));
    let dispute = ev("d", Dispute, Succeeded, 100);
    assert_eq!(transition(Some(&paid), &dispute), Transition::Record);
    assert!(matches!(transition(None, &dispute), Transition::Retry(_)));
}
