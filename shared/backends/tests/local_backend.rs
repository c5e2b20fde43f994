//! The local backend keeps the semantics the AWS services have: create-only
//! puts, visibility, receive counts, DLQ after max receives, redrive, and
//! conditional ledger writes.

use std::time::Duration;

use paynotify_backends::local::{LocalArchive, LocalLedger, LocalQueue};
use paynotify_model::event::{EventKey, EventKind, EventOutcome, PaymentEvent, PaymentKey};
use paynotify_model::money::{Currency, Money};
use paynotify_model::state::{transition, Transition};
use paynotify_ports::{
    ApplyOutcome, Archive, ArchiveError, DeadLetters, DeadLettersExt, Ledger, LedgerExt, Queue,
};

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
        order_id: None,
        legacy_key: None,
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
        assert_eq!(version, 4);
        // The outbox came with it, and when it began (transitions before
        // it have no events: reconcile does not count them).
        let since: i64 = conn
            .query_row(
                "SELECT value FROM outbox_meta WHERE name = 'since'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(since > 1_700_000_000_000, "{since}");
        let events: i64 = conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(events, 0);
    }
}

/// Receives until `n` messages have come or `secs` pass.
async fn receive_all(q: &LocalQueue, n: usize, secs: u64) -> Vec<paynotify_ports::QueueMessage> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut got = Vec::new();
    while got.len() < n && std::time::Instant::now() < deadline {
        got.extend(q.receive(10, Duration::from_millis(200)).await.unwrap());
    }
    got
}

fn queue_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sqlite3"))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_queue_spreads_sends_and_delivers_every_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalQueue::open_sharded(&dir.path().join("q.sqlite3"), 4, 30, 5).unwrap();
    assert_eq!(
        queue_files(dir.path()),
        ["q-1.sqlite3", "q-2.sqlite3", "q-3.sqlite3", "q.sqlite3"]
    );
    let sends: Vec<_> = (0..40)
        .map(|i| {
            let q = q.clone();
            tokio::spawn(async move { q.send(format!("{i}").as_bytes()).await.unwrap() })
        })
        .collect();
    for s in sends {
        s.await.unwrap();
    }
    assert_eq!(q.depth().await.unwrap(), 40);
    let got = receive_all(&q, 40, 10).await;
    let mut bodies: Vec<usize> = got
        .iter()
        .map(|m| std::str::from_utf8(&m.body).unwrap().parse().unwrap())
        .collect();
    bodies.sort_unstable();
    assert_eq!(bodies, (0..40).collect::<Vec<_>>(), "each message once");
    let shards: std::collections::BTreeSet<&str> = got
        .iter()
        .map(|m| m.receipt.0.split_once(':').unwrap().0)
        .collect();
    assert_eq!(shards.len(), 4, "sends went to every shard: {shards:?}");
    assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (0, 40));
    // One batch naming every shard deletes them all.
    let receipts: Vec<_> = got.iter().map(|m| m.receipt.clone()).collect();
    for chunk in receipts.chunks(10) {
        q.delete_batch(chunk).await.unwrap();
    }
    assert_eq!(q.depth().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_dead_letters_list_in_order_redrive_and_purge_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalQueue::open_sharded(&dir.path().join("q.sqlite3"), 3, 30, 5).unwrap();
    for i in 0..6 {
        q.send(format!("{i}").as_bytes()).await.unwrap();
    }
    let got = receive_all(&q, 6, 10).await;
    assert_eq!(got.len(), 6);
    for (i, m) in got.iter().enumerate() {
        let reason = if i % 2 == 0 {
            "bad_signature"
        } else {
            "conflict"
        };
        q.dead_letter(m, reason, &format!("e{i}")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert_eq!(
        (q.depth().await.unwrap(), q.dlq_depth().await.unwrap()),
        (0, 6)
    );
    let listed = q.dlq_list(4).await.unwrap();
    assert_eq!(
        listed.iter().map(|d| d.error.as_str()).collect::<Vec<_>>(),
        ["e0", "e1", "e2", "e3"],
        "the oldest first over all shards"
    );
    assert_eq!(q.redrive(Some("conflict")).await.unwrap(), 3);
    let back = receive_all(&q, 3, 10).await;
    assert_eq!(back.len(), 3);
    assert!(back.iter().all(|m| m.receive_count == 1));
    let purged = q.purge_dead_letters(None, &|_| {}).await.unwrap();
    assert_eq!(purged.len(), 3);
    assert_eq!(q.stats().await.unwrap().dead_letters, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_shards_later_strand_nothing_and_more_from_another_process_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.sqlite3");
    {
        let wide = LocalQueue::open_sharded(&path, 4, 30, 5).unwrap();
        for i in 0..12 {
            wide.send(format!("{i}").as_bytes()).await.unwrap();
        }
    }
    // Reopened with one shard: the other three are still drained.
    let narrow = LocalQueue::open(&path, 30, 5).unwrap();
    assert_eq!(narrow.shard_count(), 4);
    assert_eq!(receive_all(&narrow, 12, 10).await.len(), 12);

    // A worker opened on one shard finds those an ingest adds afterwards.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.sqlite3");
    let worker = LocalQueue::open(&path, 30, 5).unwrap();
    let ingest = LocalQueue::open_sharded(&path, 3, 30, 5).unwrap();
    for i in 0..9 {
        ingest.send(format!("{i}").as_bytes()).await.unwrap();
    }
    let got = receive_all(&worker, 9, 10).await;
    assert_eq!(got.len(), 9, "within a rescan of the directory");
    assert_eq!(worker.shard_count(), 3);
    let receipts: Vec<_> = got.iter().map(|m| m.receipt.clone()).collect();
    worker.delete_batch(&receipts).await.unwrap();
    assert_eq!(ingest.depth().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_shard_fails_over_its_sends_and_is_passed_over_by_receives() {
    let dir = tempfile::tempdir().unwrap();
    let q = LocalQueue::open_sharded(&dir.path().join("q.sqlite3"), 2, 30, 5).unwrap();
    q.send(b"before").await.unwrap();
    q.send(b"before").await.unwrap();
    q.stop_shard_writer(1);
    for _ in 0..100 {
        if q.fatal().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        q.fatal().unwrap().contains("q-1.sqlite3"),
        "readiness fails"
    );
    // Every send lands on the shard that still writes.
    for _ in 0..4 {
        q.send(b"after").await.unwrap();
    }
    // Receives give what shard 0 holds and never fail while it gives some.
    let mut got = Vec::new();
    while got.len() < 5 {
        got.extend(q.receive(10, Duration::from_millis(100)).await.unwrap());
    }
    assert_eq!(
        got.len(),
        5,
        "shard 0's one message from before and the four after"
    );
    assert!(got.iter().all(|m| m.receipt.0.starts_with("0:")));
    // With shard 0 empty, the stopped shard's message makes the receive fail
    // (not an empty answer that would hide it).
    assert!(q.receive(10, Duration::from_millis(100)).await.is_err());
}

#[tokio::test]
async fn foreign_receipts_match_nothing_and_bad_shard_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.sqlite3");
    let q = LocalQueue::open_sharded(&path, 2, 30, 5).unwrap();
    q.send(b"m").await.unwrap();
    let m = receive_all(&q, 1, 5).await.pop().unwrap();
    let (_, local) = m.receipt.0.split_once(':').unwrap();
    for foreign in [
        String::new(),
        "garbage".into(),
        format!("9:{local}"),
        format!("x:{local}"),
        local.to_owned(),
        "0:".into(),
    ] {
        let r = paynotify_ports::Receipt(foreign.clone());
        q.delete(&r).await.unwrap();
        q.delay(&r, 60).await.unwrap();
        let mut stale = m.clone();
        stale.receipt = r;
        q.dead_letter(&stale, "bad_signature", "x").await.unwrap();
        assert_eq!(
            (q.depth().await.unwrap(), q.dlq_depth().await.unwrap()),
            (1, 0),
            "{foreign:?}"
        );
    }
    q.delete(&m.receipt).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 0);

    for bad in [0, 65] {
        let e = LocalQueue::open_sharded(&path, bad, 30, 5)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(e, format!("queue shards must be 1 to 64, not {bad}"));
    }
    // Names that only look like shards are not opened…
    for name in [
        "q-01.sqlite3",
        "q-5.sqlite3-wal",
        "q-x.sqlite3",
        "r-5.sqlite3",
    ] {
        std::fs::write(dir.path().join(name), b"").unwrap();
    }
    assert_eq!(LocalQueue::open(&path, 30, 5).unwrap().shard_count(), 2);
    // …and a shard past the limit is named, not silently left unread.
    std::fs::write(dir.path().join("q-64.sqlite3"), b"").unwrap();
    let e = LocalQueue::open(&path, 30, 5).err().unwrap().to_string();
    assert!(e.contains("q-64.sqlite3"), "{e}");
}
