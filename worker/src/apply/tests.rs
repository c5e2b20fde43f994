//! Unit tests of planning: parking, aliases, parked order, conflicts.
use paynotify_model::event::EventKey;
use paynotify_model::money::{Currency, Money};
use paynotify_model::state::PaymentStatus;

use super::*;

fn ev(payment_ref: &str, id: &str, kind: EventKind, minor: u64) -> PaymentEvent {
    PaymentEvent {
        source: "u".into(),
        merchant: "m".into(),
        payment_ref: payment_ref.into(),
        payment_key: PaymentKey::new("u", "m", payment_ref),
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
        result_code: None,
        result_message: None,
        settle_date: None,
        order_id: None,
        legacy_key: None,
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn parked(e: &PaymentEvent, minutes_ago: i64) -> ParkedEvent {
    ParkedEvent {
        event: e.clone(),
        notification_id: format!("n-{}", e.event_key),
        parked_at: now() - time::Duration::minutes(minutes_ago),
        conflict: None,
    }
}

fn write(p: Plan) -> (LedgerWrite, AckKind) {
    match p {
        Plan::Write(w, k) => (*w, k),
        other => panic!("expected a write, got {other:?}"),
    }
}

/// Applies a plan to an in-memory ledger of entries, as the backends do.
fn commit(ledger: &mut HashMap<PaymentKey, PaymentEntry>, w: &LedgerWrite) {
    let entry = ledger.entry(w.key.clone()).or_default();
    assert_eq!(entry.version, w.expected_version);
    if let Incoming::Park(p) = &w.incoming {
        entry.parked.push(p.clone());
    }
    if w.bumps_version() {
        entry.version += 1;
    }
    if w.state.is_some() {
        entry.state = w.state.clone();
    }
    for r in &w.unparked {
        let from = r.unparked_from.clone().unwrap();
        let e = ledger.entry(from).or_default();
        e.parked.retain(|p| p.event.event_key != r.event.event_key);
    }
    for c in &w.conflicts {
        let e = ledger.entry(c.payment_key.clone()).or_default();
        e.parked
            .retain(|p| p.event.event_key != c.parked.event.event_key);
        e.parked.push(c.parked.clone());
    }
    for a in &w.aliases {
        let e = ledger.entry(a.key.clone()).or_default();
        assert_eq!(e.version, a.expected_version);
        e.version += 1;
        e.alias_of = Some(w.key.clone());
    }
}

/// Plans and commits `event` as `apply` does (alias hops, loads).
fn deliver(ledger: &mut HashMap<PaymentKey, PaymentEntry>, event: &PaymentEvent) -> AckKind {
    let mut event = event.clone();
    let mut entry = ledger.get(&event.payment_key).cloned().unwrap_or_default();
    if let Some(target) = entry.alias_of.clone() {
        event.payment_key = target;
        entry = ledger.get(&event.payment_key).cloned().unwrap_or_default();
    }
    let mut aliases = HashMap::new();
    loop {
        match plan(&entry, &aliases, &event, "n", now()) {
            Plan::Load(keys) => {
                for k in keys {
                    aliases.insert(k.clone(), ledger.get(&k).cloned().unwrap_or_default());
                }
            }
            p => {
                let (w, kind) = write(p);
                commit(ledger, &w);
                return kind;
            }
        }
    }
}

fn status(
    ledger: &HashMap<PaymentKey, PaymentEntry>,
    r: &str,
) -> Option<(PaymentStatus, u64, u64)> {
    ledger
        .get(&PaymentKey::new("u", "m", r))
        .and_then(|e| e.state.as_ref())
        .map(|s| (s.status, s.paid_minor, s.refunded_minor))
}

#[test]
fn an_early_refund_parks_and_applies_in_the_payments_write() {
    let mut l = HashMap::new();
    assert_eq!(
        deliver(&mut l, &ev("p", "r1", EventKind::Refund, 30)),
        AckKind::Parked
    );
    assert_eq!(
        deliver(&mut l, &ev("p", "r2", EventKind::Refund, 70)),
        AckKind::Parked
    );
    assert_eq!(status(&l, "p"), None);
    assert_eq!(
        deliver(&mut l, &ev("p", "p", EventKind::Payment, 100)),
        AckKind::Applied
    );
    assert_eq!(status(&l, "p"), Some((PaymentStatus::Refunded, 100, 100)));
    assert!(l[&PaymentKey::new("u", "m", "p")].parked.is_empty());
}

#[test]
fn a_refund_of_a_completion_applies_through_its_alias_in_any_order() {
    let (auth, cap, refund, void) = (
        ev("a", "a", EventKind::Authorization, 100),
        ev("a", "c", EventKind::Capture, 80),
        ev("c", "r", EventKind::Refund, 30),
        ev("c", "v", EventKind::Void, 80),
    );
    // In order.
    let mut l = HashMap::new();
    for e in [&auth, &cap, &refund] {
        assert_eq!(deliver(&mut l, e), AckKind::Applied);
    }
    assert_eq!(
        status(&l, "a"),
        Some((PaymentStatus::PartiallyRefunded, 80, 30))
    );
    // Refund before the completion, completion before the pre-auth.
    let mut l = HashMap::new();
    assert_eq!(deliver(&mut l, &refund), AckKind::Parked);
    assert_eq!(deliver(&mut l, &cap), AckKind::Parked);
    assert_eq!(deliver(&mut l, &auth), AckKind::Applied);
    assert_eq!(
        status(&l, "a"),
        Some((PaymentStatus::PartiallyRefunded, 80, 30))
    );
    assert_eq!(
        l[&PaymentKey::new("u", "m", "c")].alias_of,
        Some(PaymentKey::new("u", "m", "a"))
    );
    assert!(l.values().all(|e| e.parked.is_empty()));
    // A completion void (33) names the completion too.
    let mut l = HashMap::new();
    for e in [&auth, &cap, &void] {
        assert_eq!(deliver(&mut l, e), AckKind::Applied);
    }
    assert_eq!(status(&l, "a").unwrap().0, PaymentStatus::Voided);
}

#[test]
fn parked_events_apply_in_psp_order_and_contradictions_stay_parked() {
    let mut l = HashMap::new();
    let key = PaymentKey::new("u", "m", "p");
    let mut r_late = ev("p", "r-late", EventKind::Refund, 60);
    r_late.psp_time = Some(now());
    let mut r_early = ev("p", "r-early", EventKind::Refund, 50);
    r_early.psp_time = Some(now() - time::Duration::hours(1));
    l.insert(
        key.clone(),
        PaymentEntry {
            version: 2,
            parked: vec![parked(&r_late, 10), parked(&r_early, 5)],
            ..PaymentEntry::default()
        },
    );
    assert_eq!(
        deliver(&mut l, &ev("p", "p", EventKind::Payment, 100)),
        AckKind::Applied
    );
    // 50 applies first (earlier PSP time); 60 more would exceed 100.
    assert_eq!(
        status(&l, "p"),
        Some((PaymentStatus::PartiallyRefunded, 100, 50))
    );
    let left = &l[&key].parked;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].event.event_key.as_str(), "r-late");
    assert!(
        left[0].conflict.as_deref().unwrap().contains("exceed"),
        "{left:?}"
    );
    assert_eq!(l[&key].version, 3);
}

#[test]
fn conflicts_pending_and_failed_results_are_planned_as_such() {
    let entry = PaymentEntry::default();
    let mut failed = ev("p", "f", EventKind::Refund, 10);
    failed.outcome = EventOutcome::Failed;
    let (w, kind) = write(plan(&entry, &HashMap::new(), &failed, "n", now()));
    assert_eq!(kind, AckKind::Recorded);
    assert!(!w.bumps_version());
    let mut l = HashMap::new();
    deliver(&mut l, &ev("p", "p", EventKind::Payment, 100));
    let paid = l[&PaymentKey::new("u", "m", "p")].clone();
    assert!(matches!(
        plan(
            &paid,
            &HashMap::new(),
            &ev("p", "x", EventKind::AuthorizationVoid, 100),
            "n",
            now()
        ),
        Plan::Conflict(_)
    ));
}
