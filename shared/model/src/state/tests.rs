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
        order_id: None,
        legacy_key: None,
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
            Transition::Park(_)
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
        Transition::Park(_)
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
/// skipped, `Park` goes to the back of the queue, conflicts are dropped.
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
            Transition::Park(_) if tries < 100 => queue.push_back((e, tries + 1)),
            Transition::Park(_) => {}
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
    assert!(matches!(transition(None, &t30), Transition::Park(_)));
}

#[test]
fn a_dispute_is_recorded_without_a_state_change() {
    let paid = applied(transition(None, &ev("p", Payment, Succeeded, 100)));
    let dispute = ev("d", Dispute, Succeeded, 100);
    assert_eq!(transition(Some(&paid), &dispute), Transition::Record);
    assert!(matches!(transition(None, &dispute), Transition::Park(_)));
}

/// Stripe: `payment_intent.payment_failed`, the customer tries again,
/// `payment_intent.succeeded` on the same intent: the money arrived, the
/// payment is PAID (it was a conflict, dead-lettered, and the ledger said
/// FAILED). The same for an authorization that failed, then succeeded.
#[test]
fn a_success_after_a_failure_is_the_payment() {
    use EventKind::{Authorization, Payment};
    use EventOutcome::{Failed, Succeeded};
    let failed = applied(transition(None, &ev("f", Payment, Failed, 500)));
    assert_eq!(failed.status, PaymentStatus::Failed);
    let paid = applied(transition(Some(&failed), &ev("s", Payment, Succeeded, 500)));
    assert_eq!(
        (paid.status, paid.paid_minor, paid.version),
        (PaymentStatus::Paid, 500, 2)
    );
    let held = applied(transition(
        Some(&failed),
        &ev("a", Authorization, Succeeded, 500),
    ));
    assert_eq!(
        (held.status, held.authorized_minor),
        (PaymentStatus::Authorized, 500)
    );
}

/// A failure that arrives after the success (a PSP's late or repeated
/// report of an earlier attempt) is recorded; it changes nothing and is
/// not dead-lettered.
#[test]
fn a_failure_after_the_success_is_recorded() {
    use EventKind::{Authorization, Payment};
    use EventOutcome::{Failed, Succeeded};
    let paid = applied(transition(None, &ev("s", Payment, Succeeded, 500)));
    assert_eq!(
        transition(Some(&paid), &ev("f", Payment, Failed, 500)),
        Transition::Record
    );
    let held = applied(transition(None, &ev("a", Authorization, Succeeded, 500)));
    assert_eq!(
        transition(Some(&held), &ev("f", Authorization, Failed, 500)),
        Transition::Record
    );
    let failed = applied(transition(None, &ev("f1", Payment, Failed, 500)));
    assert_eq!(
        transition(Some(&failed), &ev("f2", Payment, Failed, 500)),
        Transition::Record
    );
}

/// Adyen with manual capture sends REFUND and CAPTURE in no set order: a
/// refund of an authorization not captured yet waits (parked) for the
/// capture, instead of being dead-lettered.
#[test]
fn a_refund_before_the_capture_waits_for_it() {
    use EventKind::{Authorization, Refund, RefundTotal};
    use EventOutcome::Succeeded;
    let held = applied(transition(None, &ev("a", Authorization, Succeeded, 500)));
    for kind in [Refund, RefundTotal] {
        assert!(
            matches!(
                transition(Some(&held), &ev("r", kind, Succeeded, 100)),
                Transition::Park(_)
            ),
            "{kind:?}"
        );
    }
}

/// The table of docs/transitions.md, rendered from `transition` for every
/// status and every kind and outcome of event: the page is checked cell by
/// cell against the code (a change to either fails here until both agree).
/// Amounts: the payment holds or paid 500; a refund or capture is 100, a
/// void the whole 500; a refunded one has 100 refunded (partly) or 500.
fn table() -> String {
    use PaymentStatus as S;
    let state = |status: S| {
        let (authorized, paid, refunded) = match status {
            S::Authorized => (500, 0, 0),
            S::Paid | S::Voided => (0, 500, 0),
            S::PartiallyRefunded => (0, 500, 100),
            S::Refunded => (0, 500, 500),
            S::Failed => (0, 0, 0),
        };
        PaymentState {
            payment_key: PaymentKey::new("unionpay", "m", "p"),
            status,
            currency: cny(),
            authorized_minor: authorized,
            paid_minor: paid,
            refunded_minor: refunded,
            version: 1,
        }
    };
    let columns: [(&str, EventKind, EventOutcome, u64); 12] = [
        ("payment ✓", Payment, Succeeded, 500),
        ("payment ✗", Payment, Failed, 500),
        ("authorization ✓", Authorization, Succeeded, 500),
        ("authorization ✗", Authorization, Failed, 500),
        ("capture ✓ 100", Capture, Succeeded, 100),
        ("refund ✓ 100", Refund, Succeeded, 100),
        ("refund total ✓ 100", RefundTotal, Succeeded, 100),
        ("void ✓ 500", Void, Succeeded, 500),
        ("pre-auth void ✓ 500", AuthorizationVoid, Succeeded, 500),
        ("capture, refund or void ✗", Refund, Failed, 100),
        ("any, in process", Payment, Pending, 500),
        ("dispute", Dispute, Succeeded, 100),
    ];
    let cell = |t: Transition| match t {
        Transition::Apply(s) => s.status.as_str().to_owned(),
        Transition::Record => "record".to_owned(),
        Transition::Park(_) => "park".to_owned(),
        Transition::Conflict(_) => "conflict".to_owned(),
    };
    let mut out = format!(
        "| status \\ event | {} |\n|{}\n",
        columns.map(|c| c.0).join(" | "),
        "---|".repeat(columns.len() + 1)
    );
    let rows: [(&str, Option<S>); 7] = [
        ("(none)", None),
        ("AUTHORIZED", Some(S::Authorized)),
        ("PAID", Some(S::Paid)),
        ("PARTIALLY_REFUNDED", Some(S::PartiallyRefunded)),
        ("REFUNDED", Some(S::Refunded)),
        ("VOIDED", Some(S::Voided)),
        ("FAILED", Some(S::Failed)),
    ];
    for (name, status) in rows {
        let current = status.map(state);
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, kind, outcome, minor)| {
                cell(transition(
                    current.as_ref(),
                    &ev("e", *kind, *outcome, *minor),
                ))
            })
            .collect();
        out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    }
    out
}

#[test]
fn the_documented_transition_table_is_the_code_s() {
    let page = include_str!("../../../../docs/transitions.md");
    let rendered = table();
    assert!(
        page.contains(&rendered),
        "docs/transitions.md's table is not what `transition` does; the code's:\n{rendered}"
    );
}
