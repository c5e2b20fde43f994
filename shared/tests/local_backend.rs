//! The local backend keeps the semantics the AWS services have: create-only
//! puts, visibility, receive counts, DLQ after max receives, redrive, and
//! conditional ledger writes.

use std::time::Duration;

use paynotify_shared::backend::local::{LocalArchive, LocalLedger, LocalQueue};
use paynotify_shared::event::{EventKey, EventKind, EventOutcome, PaymentEvent, PaymentKey};
use paynotify_shared::money::{Currency, Money};
use paynotify_shared::ports::{ApplyOutcome, Archive, ArchiveError, Ledger, Queue};
use paynotify_shared::{transition, Transition};

#[tokio::test]
async fn archive_put_is_create_only_and_listable() {
    let dir = tempfile::tempdir().unwrap();
    let a = LocalArchive::open(dir.path().to_path_buf()).unwrap();
    let key = "raw/source=u/date=2026-11-25/hour=23/a.json";
    a.put(key, b"first").await.unwrap();
    assert!(matches!(
        a.put(key, b"second").await,
        Err(ArchiveError::AlreadyExists(_))
    ));
    assert_eq!(a.get(key).await.unwrap(), b"first");
    assert!(matches!(
        a.get("raw/none.json").await,
        Err(ArchiveError::NotFound(_))
    ));
    assert!(matches!(
        a.put("../escape", b"x").await,
        Err(ArchiveError::InvalidKey(_))
    ));
    a.put("raw/source=u/date=2026-11-24/hour=01/b.json", b"x")
        .await
        .unwrap();
    assert_eq!(a.list("raw/source=u/", None, None).await.unwrap().len(), 2);
    let from = time::macros::datetime!(2026-11-25 00:00 UTC);
    assert_eq!(
        a.list("raw/", Some(from), None).await.unwrap(),
        vec![key.to_owned()]
    );
}

#[tokio::test]
async fn queue_visibility_delay_and_dead_letter_after_max_receives() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalQueue::open(&dir.path().join("q.sqlite3"), 1, 2).unwrap();
    q.send(b"m").await.unwrap();
    let first = q.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!((first.len(), first[0].receive_count), (1, 1));
    // Invisible while in flight.
    assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
    // Visible again after the 1 s visibility timeout, with a new receipt.
    let second = q.receive(10, Duration::from_secs(3)).await.unwrap();
    assert_eq!(second[0].receive_count, 2);
    // The stale receipt no longer deletes it.
    q.delete(&first[0].receipt).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 1);
    // A third receive exceeds max_receives = 2: the message goes to the DLQ instead.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
    let dlq = q.dlq_list(10).await.unwrap();
    assert_eq!(
        (dlq.len(), dlq[0].reason.as_str(), dlq[0].receive_count),
        (1, "max_receives_exceeded", 2)
    );
    assert_eq!(q.redrive(Some("other")).await.unwrap(), 0);
    assert_eq!(q.redrive(None).await.unwrap(), 1);
    let again = q.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(again[0].receive_count, 1);
    q.delay(&again[0].receipt, 60).await.unwrap();
    assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
    assert!(q.send_batch(&vec![b"x".to_vec(); 11]).await.is_err());
}

#[tokio::test]
async fn long_poll_wakes_when_a_message_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalQueue::open(&dir.path().join("q.sqlite3"), 30, 5).unwrap();
    let sender = q.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sender.send(b"late").await.unwrap();
    });
    let started = std::time::Instant::now();
    let got = q.receive(1, Duration::from_secs(10)).await.unwrap();
    assert_eq!(got[0].body, b"late");
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn event(id: &str) -> PaymentEvent {
    PaymentEvent {
        source: "u".into(),
        merchant: "m".into(),
        payment_ref: "p".into(),
        payment_key: PaymentKey::new("u", "m", "p"),
        event_key: EventKey::new(id),
        kind: EventKind::Payment,
        outcome: EventOutcome::Succeeded,
        amount: Money {
            minor: 100,
            currency: Currency::from_alpha("CNY").unwrap(),
        },
        currency_defaulted: false,
        psp_txn_id: None,
        psp_time: None,
        result_code: None,
        result_message: None,
        settle_date: None,
    }
}

#[tokio::test]
async fn ledger_apply_is_conditional_and_concurrent_appliers_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let l = LocalLedger::open(&dir.path().join("l.sqlite3")).unwrap();
    let e = event("e1");
    let Transition::Apply(state) = transition(None, &e) else {
        panic!("purchase applies")
    };
    // Eight appliers of eight different events all expecting version 0: one wins.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (l, s) = (l.clone(), state.clone());
        tasks.push(tokio::spawn(async move {
            l.apply(&event(&format!("c{i}")), "n", Some(&s), 0)
                .await
                .unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == ApplyOutcome::Applied)
            .count(),
        1
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == ApplyOutcome::VersionConflict)
            .count(),
        7
    );
    // The winner's key repeated is a duplicate, checked before the version.
    let winner = (0..8)
        .find(|i| outcomes[*i] == ApplyOutcome::Applied)
        .unwrap();
    let dup = l
        .apply(&event(&format!("c{winner}")), "n", Some(&state), 0)
        .await
        .unwrap();
    assert_eq!(dup, ApplyOutcome::Duplicate);
    assert!(l
        .contains_event(&e.payment_key, &EventKey::new(format!("c{winner}")))
        .await
        .unwrap());
    assert_eq!(
        l.get_payment(&e.payment_key)
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
    assert_eq!(l.history(&e.payment_key).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_version_2_ledger_is_brought_to_the_current_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.sqlite3");
    {
        let old = rusqlite::Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE payments (payment_key TEXT PRIMARY KEY, status TEXT, currency TEXT,
                 authorized_minor INTEGER NOT NULL DEFAULT 0, paid_minor INTEGER NOT NULL DEFAULT 0,
                 refunded_minor INTEGER NOT NULL DEFAULT 0, version INTEGER NOT NULL,
                 alias_of TEXT, updated_at INTEGER NOT NULL);
             CREATE TABLE events (payment_key TEXT NOT NULL, event_key TEXT NOT NULL,
                 seq INTEGER NOT NULL, notification_id TEXT NOT NULL, kind TEXT NOT NULL,
                 outcome TEXT NOT NULL, amount_minor INTEGER NOT NULL, currency TEXT NOT NULL,
                 status_after TEXT, recorded_at INTEGER NOT NULL, event_json TEXT NOT NULL,
                 PRIMARY KEY (payment_key, event_key));
             CREATE TABLE parked (payment_key TEXT NOT NULL, event_key TEXT NOT NULL,
                 notification_id TEXT NOT NULL, parked_at INTEGER NOT NULL,
                 event_json TEXT NOT NULL, conflict TEXT, PRIMARY KEY (payment_key, event_key));
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let l = LocalLedger::open(&path).unwrap();
    let mut e = event("e1");
    let t = time::macros::datetime!(2026-11-25 10:00 UTC);
    e.psp_time = Some(t);
    l.apply(&e, "n1", None, 0).await.unwrap();
    let found = l
        .events_between("u", t, t + time::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(l.history(&e.payment_key).await.unwrap().len(), 1);
}

#[test]
fn processes_opening_one_fresh_ledger_at_once_all_succeed() {
    for _ in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.sqlite3");
        let openers: Vec<_> = (0..6)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || LocalLedger::open(&path).map(|_| ()))
            })
            .collect();
        for o in openers {
            o.join().unwrap().unwrap();
        }
        let conn = rusqlite::Connection::open(&path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 3);
    }
}
