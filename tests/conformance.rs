//! One conformance suite for the three ports, written once and run against
//! the local backend and the AWS backend (on the emulator).

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::Duration;

use paynotify_ingest::segmenter::{SegmentSettings, Segmenter};
use paynotify_shared::envelope::{Envelope, QueuedBody};
use paynotify_shared::event::{EventKind, EventOutcome, PaymentEvent, PaymentKey};
use paynotify_shared::faults::{Faults, FaultyArchive};
use paynotify_shared::ports::{
    AliasWrite, ApplyOutcome, ArchiveError, DeadLettersExt, EventRecord, Freshness, Incoming,
    LedgerError, LedgerExt, LedgerWrite, Loaded, ParkedEntry, ParkedEvent, PaymentEntry,
    RecordedEvent, Watch,
};
use paynotify_shared::scheme::unionpay::QueryTarget;
use paynotify_shared::segment::Location;
use paynotify_shared::{transition, PaymentStatus, Transition};
use support::{backends, event, Kind};
use time::macros::datetime;

on_both_backends!(
    archive_put_is_create_only,
    archive_list_paginates_and_filters_by_hour,
    queue_is_at_least_once_with_visibility,
    queue_delay_hides_a_message,
    queue_dead_letters_after_max_receives_and_redrives,
    queue_dead_letter_keeps_reason_and_receive_count,
    queue_purges_dead_letters_by_reason_and_counts_by_state,
    queue_batches_and_long_polls,
    ledger_apply_is_atomic_and_idempotent,
    ledger_concurrent_appliers_have_one_winner,
    ledger_parks_early_events_and_applies_them_with_the_payment,
    ledger_watches_are_versioned_and_listed_when_due,
    ledger_lists_events_by_psp_time,
    archive_reads_ranges,
    segments_group_notifications_and_locate_each,
    a_segment_put_whose_reply_was_lost_is_acknowledged_once,
    a_failed_segment_put_answers_every_member_with_an_error,
    replay_of_a_range_of_segments_skips_torn_ones,
    ledger_concurrent_events_of_one_payment_all_apply_once_and_keep_their_history,
    ledger_load_to_apply_tells_seen_events_and_a_lagging_read_changes_nothing,
    ledger_records_on_a_new_payment_and_applies_it_later,
    a_redriven_retry_starts_a_fresh_budget,
    queues_keep_sqs_limits,
    a_unionpay_movement_applies_once_whatever_its_success_code,
    a_payment_with_150_parked_refunds_applies_every_one,
    a_parked_event_is_removed_once_however_many_ask,
    payments_are_found_by_the_merchants_order_id,
    a_payment_search_pages_through_every_match_once,
    a_dead_letter_is_redriven_by_its_id_alone,
    a_dead_letter_put_by_an_operator_is_listed_and_redriven,
    the_ledger_counts_what_it_recorded_lately_where_it_can,
);

async fn archive_put_is_create_only(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let key = "raw/source=u/date=2026-11-25/hour=23/a.json";
    b.archive.put(key, b"{\"first\":1}").await.unwrap();
    assert!(matches!(
        b.archive.put(key, b"{\"second\":2}").await,
        Err(ArchiveError::AlreadyExists(_))
    ));
    assert_eq!(b.archive.get(key).await.unwrap(), b"{\"first\":1}");
    assert!(matches!(
        b.archive.get("raw/missing.json").await,
        Err(ArchiveError::NotFound(_))
    ));
    // Sixteen racers for one new key: exactly one wins.
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let a = b.archive.clone();
            tokio::spawn(async move {
                a.put("raw/race.json", format!("{i}").as_bytes())
                    .await
                    .is_ok()
            })
        })
        .collect();
    let mut winners = 0;
    for r in racers {
        winners += usize::from(r.await.unwrap());
    }
    assert_eq!(winners, 1);
}

async fn archive_list_paginates_and_filters_by_hour(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = Arc::new(backends(kind, dir.path(), 30, 5).await);
    // More than one S3 page (1,000 keys).
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..16 {
        let b = b.clone();
        tasks.spawn(async move {
            for i in (chunk..1010).step_by(16) {
                let key = format!("raw/source=u/date=2026-11-25/hour=10/{i:05}.json");
                b.archive.put(&key, b"{}").await.unwrap();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    b.archive
        .put("raw/source=u/date=2026-11-25/hour=12/x.json", b"{}")
        .await
        .unwrap();
    b.archive
        .put("raw/source=v/date=2026-11-25/hour=12/y.json", b"{}")
        .await
        .unwrap();
    let all = b.archive.list("raw/source=u/", None, None).await.unwrap();
    assert_eq!(all.len(), 1011);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "sorted");
    let from = time::macros::datetime!(2026-11-25 11:00 UTC);
    let late = b.archive.list("raw/", Some(from), None).await.unwrap();
    assert_eq!(late.len(), 2);
    let to = time::macros::datetime!(2026-11-25 10:30 UTC);
    assert_eq!(
        b.archive
            .list("raw/source=u/", None, Some(to))
            .await
            .unwrap()
            .len(),
        1010
    );
}

async fn queue_is_at_least_once_with_visibility(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 1, 5).await;
    let q = &b.queue;
    q.send(b"{\"m\":1}").await.unwrap();
    let first = q.receive(10, Duration::from_secs(2)).await.unwrap();
    assert_eq!((first.len(), first[0].receive_count), (1, 1));
    assert_eq!(first[0].body, b"{\"m\":1}");
    assert!(
        q.receive(10, Duration::ZERO).await.unwrap().is_empty(),
        "invisible while in flight"
    );
    // Not deleted: delivered again after the visibility timeout, counted.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = q.receive(10, Duration::from_secs(2)).await.unwrap();
    assert_eq!((second.len(), second[0].receive_count), (1, 2));
    assert_eq!(second[0].id, first[0].id);
    q.delete(&second[0].receipt).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        q.receive(10, Duration::ZERO).await.unwrap().is_empty(),
        "deleted for good"
    );
    assert_eq!(q.depth().await.unwrap(), 0);
}

async fn queue_delay_hides_a_message(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 1, 5).await;
    let q = &b.queue;
    q.send(b"{}").await.unwrap();
    let m = q.receive(1, Duration::from_secs(2)).await.unwrap();
    q.delay(&m[0].receipt, 3).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        q.receive(1, Duration::ZERO).await.unwrap().is_empty(),
        "still delayed after the visibility timeout"
    );
    let again = q.receive(1, Duration::from_secs(4)).await.unwrap();
    assert_eq!(again[0].receive_count, 2);
    assert_eq!(q.depth().await.unwrap(), 1);
}

async fn queue_dead_letters_after_max_receives_and_redrives(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 1, 2).await;
    let q = &b.queue;
    q.send(b"{\"poison\":true}").await.unwrap();
    for n in 1..=2 {
        let m = q.receive(1, Duration::from_secs(3)).await.unwrap();
        assert_eq!(m[0].receive_count, n);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    // The third receive finds it gone to the DLQ.
    assert!(q
        .receive(1, Duration::from_secs(1))
        .await
        .unwrap()
        .is_empty());
    let dlq = b.dead_letters.dlq_list(10).await.unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].body, b"{\"poison\":true}");
    // Moved by the queue itself (SQS's redrive policy): it still says why,
    // and an operator can select it by that word.
    assert_eq!(dlq[0].reason, "max_receives_exceeded");
    assert!(!dlq[0].id.is_empty(), "a dead letter without an id");
    assert_eq!(b.dead_letters.redrive(Some("conflict")).await.unwrap(), 0);
    assert_eq!(
        b.dead_letters
            .redrive(Some("max_receives_exceeded"))
            .await
            .unwrap(),
        1
    );
    let back = q.receive(1, Duration::from_secs(3)).await.unwrap();
    assert_eq!(back[0].body, b"{\"poison\":true}");
    assert_eq!(back[0].receive_count, 1, "a redriven message starts over");
}

async fn a_dead_letter_is_redriven_by_its_id_alone(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let q = &b.queue;
    for body in [&b"{\"a\":1}"[..], b"{\"b\":2}", b"{\"c\":3}"] {
        q.send(body).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(q.receive(10, Duration::from_secs(2)).await.unwrap());
    }
    for m in &got {
        q.dead_letter(m, "retries_exhausted", "the ledger was down")
            .await
            .unwrap();
    }
    let dlq = b.dead_letters.dlq_list(10).await.unwrap();
    assert_eq!(dlq.len(), 3);
    let chosen = dlq[1].clone();
    assert!(b.dead_letters.redrive_one(&chosen.id).await.unwrap());
    // Once: it is no longer there, nor is what was never there.
    assert!(!b.dead_letters.redrive_one(&chosen.id).await.unwrap());
    assert!(!b.dead_letters.redrive_one("no-such-id").await.unwrap());
    let mut left: Vec<_> = b
        .dead_letters
        .dlq_list(10)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    left.sort();
    let mut expected = vec![dlq[0].id.clone(), dlq[2].id.clone()];
    expected.sort();
    assert_eq!(left, expected, "the others stay");
    let back = q.receive(10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].body, chosen.body, "its own body back on the queue");
}

async fn a_dead_letter_put_by_an_operator_is_listed_and_redriven(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let d = &b.dead_letters;
    let body = b"{\"v\":1,\"archive_key\":\"raw/x-1.ndjson\"}";
    d.put_dead_letter(
        "01JSETASIDE0000000000000000",
        body,
        "set_aside",
        "set aside by ops: a test",
    )
    .await
    .unwrap();
    let dlq = d.dlq_list(10).await.unwrap();
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(
        (
            dlq[0].id.as_str(),
            dlq[0].reason.as_str(),
            dlq[0].error.as_str(),
            dlq[0].receive_count
        ),
        (
            "01JSETASIDE0000000000000000",
            "set_aside",
            "set aside by ops: a test",
            0
        )
    );
    assert_eq!(dlq[0].body, body);
    assert_eq!(d.dlq_depth().await.unwrap(), 1);
    // Redriven by its reason or its id, it is on the queue with its body.
    assert_eq!(d.redrive(Some("set_aside")).await.unwrap(), 1);
    let back = b.queue.receive(1, Duration::from_secs(3)).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].body, body);
    assert!(d.dlq_list(10).await.unwrap().is_empty());
}

async fn the_ledger_counts_what_it_recorded_lately_where_it_can(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let l = &b.ledger;
    let before = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    for key in ["c1", "c2", "c3"] {
        let e = event(key, &format!("{key}-e"), EventKind::Payment, 1000);
        let Transition::Apply(state) = transition(None, &e) else {
            panic!()
        };
        l.apply(&e, "n", Some(&state), 0).await.unwrap();
    }
    // A parked event is not recorded.
    l.write(&parking(&event("c9", "c9-r", EventKind::Refund, 1), "n", 0))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let middle = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for key in ["c4", "c5"] {
        let e = event(key, &format!("{key}-e"), EventKind::Payment, 1000);
        let Transition::Apply(state) = transition(None, &e) else {
            panic!()
        };
        l.apply(&e, "n", Some(&state), 0).await.unwrap();
    }
    let later = time::OffsetDateTime::now_utc() + time::Duration::seconds(5);
    let counts = (
        l.recorded_since(before).await.unwrap(),
        l.recorded_since(middle).await.unwrap(),
        l.recorded_since(later).await.unwrap(),
    );
    match kind {
        Kind::Local => assert_eq!(counts, (Some(5), Some(2), Some(0))),
        // No index by time: it says so rather than scan.
        Kind::Aws => assert_eq!(counts, (None, None, None)),
    }
}

async fn queue_dead_letter_keeps_reason_and_receive_count(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let q = &b.queue;
    q.send(b"{\"a\":1}").await.unwrap();
    q.send(b"{\"b\":2}").await.unwrap();
    let got = q.receive(10, Duration::from_secs(2)).await.unwrap();
    let got = if got.len() < 2 {
        let mut all = got;
        all.extend(q.receive(10, Duration::from_secs(2)).await.unwrap());
        all
    } else {
        got
    };
    assert_eq!(got.len(), 2);
    q.dead_letter(&got[0], "bad_signature", "signature does not verify")
        .await
        .unwrap();
    q.dead_letter(&got[1], "conflict", "Refund on VOIDED")
        .await
        .unwrap();
    assert_eq!(
        q.depth().await.unwrap(),
        0,
        "dead-lettered messages leave the queue"
    );
    let mut dlq = b.dead_letters.dlq_list(10).await.unwrap();
    dlq.sort_by(|a, b| a.reason.cmp(&b.reason));
    assert_eq!(
        dlq.iter().map(|d| d.reason.as_str()).collect::<Vec<_>>(),
        vec!["bad_signature", "conflict"]
    );
    assert_eq!(dlq[0].error, "signature does not verify");
    assert_eq!(dlq[0].receive_count, 1);
    assert_eq!(b.dead_letters.dlq_depth().await.unwrap(), 2);
    assert_eq!(b.dead_letters.redrive(Some("conflict")).await.unwrap(), 1);
    let left = b.dead_letters.dlq_list(10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(b.dead_letters.dlq_depth().await.unwrap(), 1);
    assert_eq!(left[0].reason, "bad_signature");
    let back = q.receive(10, Duration::from_secs(2)).await.unwrap();
    assert_eq!(back.len(), 1);
}

async fn queue_purges_dead_letters_by_reason_and_counts_by_state(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let q = &b.queue;
    for body in ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}", "{\"d\":4}"] {
        q.send(body.as_bytes()).await.unwrap();
    }
    q.send_delayed(b"{\"later\":1}", 600).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        got.extend(q.receive(10, Duration::from_secs(2)).await.unwrap());
    }
    let stats = q.stats().await.unwrap();
    assert_eq!(
        (
            stats.visible,
            stats.in_flight,
            stats.delayed,
            stats.dead_letters
        ),
        (0, 4, 1, 0)
    );
    q.dead_letter(&got[0], "bad_signature", "x").await.unwrap();
    // Written before the one vocabulary: its old word is the same reason.
    q.dead_letter(&got[1], "BadSignature", "y").await.unwrap();
    q.dead_letter(&got[2], "conflict", "z").await.unwrap();
    q.delay(&got[3].receipt, 0).await.unwrap();
    let stats = q.stats().await.unwrap();
    assert_eq!(
        (
            stats.visible,
            stats.in_flight,
            stats.delayed,
            stats.dead_letters
        ),
        (1, 0, 1, 3)
    );
    match kind {
        Kind::Local => assert!(stats.oldest_age.is_some()),
        Kind::Aws => assert_eq!(stats.oldest_age, None, "CloudWatch's, not the queue's"),
    }
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let progress = |n: usize| seen.store(n, std::sync::atomic::Ordering::SeqCst);
    let mut purged = b
        .dead_letters
        .purge_dead_letters(Some("bad_signature"), &progress)
        .await
        .unwrap();
    purged.sort_by(|a, b| a.error.cmp(&b.error));
    assert_eq!(
        purged.iter().map(|d| d.error.as_str()).collect::<Vec<_>>(),
        vec!["x", "y"]
    );
    assert_eq!(
        purged[0].body, got[0].body,
        "the purged message is returned whole"
    );
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
    let left = b.dead_letters.dlq_list(10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].reason, "conflict");
    assert_eq!(
        b.dead_letters
            .purge_dead_letters(None, &|_| {})
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(b.dead_letters.dlq_depth().await.unwrap(), 0);
}

async fn queue_batches_and_long_polls(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let q = b.queue.clone();
    assert!(q.send_batch(&vec![b"{}".to_vec(); 11]).await.is_err());
    assert_eq!(
        q.send_batch(&vec![b"{}".to_vec(); 10]).await.unwrap().len(),
        10
    );
    // Concurrent single sends each get their own id.
    let sends: Vec<_> = (0..25)
        .map(|i| {
            let q = q.clone();
            tokio::spawn(async move { q.send(format!("{{\"i\":{i}}}").as_bytes()).await.unwrap() })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for s in sends {
        ids.insert(s.await.unwrap());
    }
    assert_eq!(ids.len(), 25);
    assert_eq!(q.depth().await.unwrap(), 35);
    let mut received = 0;
    while received < 35 {
        let got = q.receive(10, Duration::from_secs(1)).await.unwrap();
        assert!(!got.is_empty() && got.len() <= 10);
        let receipts: Vec<_> = got.iter().map(|m| m.receipt.clone()).collect();
        q.delete_batch(&receipts).await.unwrap();
        received += got.len();
    }
    // A long poll returns as soon as a message arrives.
    let sender = q.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sender.send(b"{\"late\":1}").await.unwrap();
    });
    let started = std::time::Instant::now();
    let got = q.receive(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got[0].body, b"{\"late\":1}");
    assert!(started.elapsed() < Duration::from_secs(4));
    q.delete_batch(&[got[0].receipt.clone()]).await.unwrap();
    assert_eq!(
        q.depth().await.unwrap(),
        0,
        "batched deletes removed every message"
    );
}

async fn ledger_apply_is_atomic_and_idempotent(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let l = &b.ledger;
    let pay = event("p1", "e1", EventKind::Payment, 1000);
    assert!(l.get_payment(&pay.payment_key).await.unwrap().is_none());
    let Transition::Apply(paid) = transition(None, &pay) else {
        panic!()
    };
    assert_eq!(
        l.apply(&pay, "n1", Some(&paid), 0).await.unwrap(),
        ApplyOutcome::Applied
    );
    assert_eq!(
        l.apply(&pay, "n1", Some(&paid), 0).await.unwrap(),
        ApplyOutcome::Duplicate
    );
    assert!(l
        .contains_event(&pay.payment_key, &pay.event_key)
        .await
        .unwrap());
    // A stale version is refused and writes nothing: not even the event.
    let refund = event("p1", "e2", EventKind::Refund, 400);
    let Transition::Apply(part) = transition(Some(&paid), &refund) else {
        panic!()
    };
    assert_eq!(
        l.apply(&refund, "n2", Some(&part), 0).await.unwrap(),
        ApplyOutcome::VersionConflict
    );
    assert!(!l
        .contains_event(&refund.payment_key, &refund.event_key)
        .await
        .unwrap());
    assert_eq!(
        l.apply(&refund, "n2", Some(&part), 1).await.unwrap(),
        ApplyOutcome::Applied
    );
    // A record without a state change still checks the version.
    let mut pending = event("p1", "e3", EventKind::Refund, 10);
    pending.outcome = EventOutcome::Pending;
    assert_eq!(
        l.apply(&pending, "n3", None, 1).await.unwrap(),
        ApplyOutcome::VersionConflict
    );
    assert_eq!(
        l.apply(&pending, "n3", None, 2).await.unwrap(),
        ApplyOutcome::Applied
    );
    let state = l.get_payment(&pay.payment_key).await.unwrap().unwrap();
    assert_eq!(
        (
            state.status,
            state.paid_minor,
            state.refunded_minor,
            state.version
        ),
        (PaymentStatus::PartiallyRefunded, 1000, 400, 2)
    );
    let history = l.history(&pay.payment_key).await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|h| h.event_key.as_str())
            .collect::<Vec<_>>(),
        vec!["e1", "e2", "e3"]
    );
    assert_eq!(
        history[1].status_after.as_deref(),
        Some("PARTIALLY_REFUNDED")
    );
    assert_eq!(history[2].status_after, None);
}

async fn ledger_concurrent_appliers_have_one_winner(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let first = event("p2", "c-0", EventKind::Payment, 100);
    let Transition::Apply(state) = transition(None, &first) else {
        panic!()
    };
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (l, s) = (b.ledger.clone(), state.clone());
            tokio::spawn(async move {
                let e = event("p2", &format!("c-{i}"), EventKind::Payment, 100);
                l.apply(&e, "n", Some(&s), 0).await.unwrap()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == ApplyOutcome::Applied)
            .count(),
        1,
        "{outcomes:?}"
    );
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, ApplyOutcome::Applied | ApplyOutcome::VersionConflict)));
    assert_eq!(b.ledger.history(&first.payment_key).await.unwrap().len(), 1);
}

fn parked(e: &PaymentEvent, id: &str) -> ParkedEvent {
    ParkedEvent {
        event: e.clone(),
        notification_id: id.into(),
        parked_at: time::OffsetDateTime::now_utc() - time::Duration::hours(30),
        conflict: None,
    }
}

fn parking(e: &PaymentEvent, id: &str, expected_version: u64) -> LedgerWrite {
    LedgerWrite {
        key: e.payment_key.clone(),
        expected_version,
        incoming: Incoming::Park(parked(e, id)),
        state: None,
        unparked: vec![],
        conflicts: vec![],
        aliases: vec![],
    }
}

async fn a_parked_event_is_removed_once_however_many_ask(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let l = &b.ledger;
    let r1 = event("p9", "r1", EventKind::Refund, 300);
    let r2 = event("p9", "r2", EventKind::Refund, 200);
    assert_eq!(
        l.write(&parking(&r1, "n1", 0)).await.unwrap(),
        ApplyOutcome::Applied
    );
    assert_eq!(
        l.write(&parking(&r2, "n2", 1)).await.unwrap(),
        ApplyOutcome::Applied
    );
    // Eight operators resolve the same one at once: one takes it.
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let (l, key, ek) = (l.clone(), r1.payment_key.clone(), r1.event_key.clone());
            tokio::spawn(async move { l.remove_parked(&key, &ek).await.unwrap() })
        })
        .collect();
    let mut taken = Vec::new();
    for r in racers {
        taken.extend(r.await.unwrap());
    }
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert_eq!(taken[0].event.event_key, r1.event_key);
    assert_eq!(taken[0].notification_id, "n1");
    // The other stays, and the payment reads whole.
    let entry = l.load(&r1.payment_key).await.unwrap();
    assert_eq!(entry.parked.len(), 1);
    assert_eq!(entry.parked[0].event.event_key, r2.event_key);
    assert!(l
        .remove_parked(&r1.payment_key, &r1.event_key)
        .await
        .unwrap()
        .is_none());
    assert!(l
        .remove_parked(&r2.payment_key, &r2.event_key)
        .await
        .unwrap()
        .is_some());
    assert!(l.load(&r1.payment_key).await.unwrap().parked.is_empty());
}

async fn payments_are_found_by_the_merchants_order_id(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let l = &b.ledger;
    let ordered = |key: &str, id: &str, order: &str| {
        let mut e = event(key, id, EventKind::Payment, 1000);
        e.order_id = Some(order.into());
        e
    };
    let pay = |e: PaymentEvent, n: &'static str| async move {
        let Transition::Apply(state) = transition(None, &e) else {
            panic!("{e:?}")
        };
        l.apply(&e, n, Some(&state), 0).await.unwrap()
    };
    // A payment in one write; then its refund, which names no order.
    let p1 = ordered("o1", "e1", "ORDER-1");
    assert_eq!(pay(p1.clone(), "n1").await, ApplyOutcome::Applied);
    let refund = event("o1", "e1-r", EventKind::Refund, 100);
    let paid = l.get_payment(&p1.payment_key).await.unwrap().unwrap();
    let Transition::Apply(refunded) = transition(Some(&paid), &refund) else {
        panic!()
    };
    l.apply(&refund, "n2", Some(&refunded), paid.version)
        .await
        .unwrap();
    // A purchase still in process (recorded, no state), and a second
    // payment of the same order (a retry after a failure): both found.
    let mut asking = ordered("o2", "e2", "ORDER-2");
    asking.outcome = EventOutcome::Pending;
    l.apply(&asking, "n3", None, 0).await.unwrap();
    assert_eq!(
        pay(ordered("o3", "e3", "ORDER-2"), "n4").await,
        ApplyOutcome::Applied
    );
    // A payment whose refund was parked first: applied in the write that
    // moves the park (a transaction on DynamoDB).
    let early = event("o4", "e4-r", EventKind::Refund, 100);
    l.write(&parking(&early, "n5", 0)).await.unwrap();
    let p4 = ordered("o4", "e4", "ORDER-4");
    let entry = l.load(&p4.payment_key).await.unwrap();
    let Transition::Apply(s4) = transition(None, &p4) else {
        panic!()
    };
    let Transition::Apply(s4r) = transition(Some(&s4), &early) else {
        panic!()
    };
    let mut moved = s4r.clone();
    moved.version = s4.version + 1;
    l.write(&LedgerWrite {
        key: p4.payment_key.clone(),
        expected_version: entry.version,
        incoming: Incoming::Record(RecordedEvent {
            event: p4.clone(),
            notification_id: "n6".into(),
            status_after: Some(s4.status),
            unparked_from: None,
        }),
        state: Some(moved),
        unparked: vec![RecordedEvent {
            event: early.clone(),
            notification_id: "n5".into(),
            status_after: Some(s4r.status),
            unparked_from: Some(p4.payment_key.clone()),
        }],
        conflicts: vec![],
        aliases: vec![],
    })
    .await
    .unwrap();
    // A payment that names no order is in no lookup.
    pay(event("o5", "e5", EventKind::Payment, 1000), "n7").await;

    let keys = |order: &'static str, limit: usize| async move {
        l.payments_by_order(order, limit)
            .await
            .unwrap()
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(keys("ORDER-1", 10).await, ["u#m#o1"]);
    assert_eq!(keys("ORDER-2", 10).await, ["u#m#o2", "u#m#o3"]);
    assert_eq!(keys("ORDER-2", 1).await.len(), 1);
    assert_eq!(keys("ORDER-4", 10).await, ["u#m#o4"]);
    assert!(keys("ORDER-3", 10).await.is_empty());
    assert!(keys("", 10).await.is_empty());
    // The history keeps the order on the event that named it.
    let history = l.history(&p1.payment_key).await.unwrap();
    let orders: Vec<_> = history
        .iter()
        .map(|h| h.event.as_ref().unwrap().order_id.clone())
        .collect();
    assert_eq!(orders, [Some("ORDER-1".to_owned()), None]);
}

async fn a_payment_search_pages_through_every_match_once(kind: Kind) {
    use paynotify_shared::ports::{PaymentSearch, SearchCursor};
    let dir = tempfile::tempdir().unwrap();
    // On DynamoDB, scan pages of two items: a search then reads many pages,
    // several of them with no match, and continues from each one's
    // LastEvaluatedKey (an emulator's small table is otherwise one page).
    let b = support::backends_tweaked(kind, dir.path(), 30, 5, |c| {
        c.aws.search_page_items = Some(2);
    })
    .await;
    let l = &b.ledger;
    let at = |source: &str, merchant: &str, key: &str| {
        let mut e = event(key, &format!("{key}-e"), EventKind::Payment, 1000);
        e.source = source.into();
        e.merchant = merchant.into();
        e.payment_key = PaymentKey::new(source, merchant, key);
        e.order_id = Some(format!("order-{key}"));
        e
    };
    let before = time::OffsetDateTime::now_utc() - time::Duration::seconds(5);
    let mut all = Vec::new();
    for (source, merchant, key) in [
        ("u", "m", "s1"),
        ("u", "m", "s2"),
        ("u", "m", "s3"),
        ("u", "m2", "s4"),
        ("u", "m2", "s5"),
        ("v", "m", "s6"),
        ("v", "m", "s7"),
    ] {
        let e = at(source, merchant, key);
        let Transition::Apply(state) = transition(None, &e) else {
            panic!()
        };
        l.apply(&e, "n", Some(&state), 0).await.unwrap();
        all.push(e.payment_key.as_str().to_owned());
    }
    // One refunded in full; a key with only a parked refund is not a
    // payment.
    let refund = {
        let mut r = at("u", "m", "s2");
        r.event_key = paynotify_shared::EventKey::new("s2-r");
        r.kind = EventKind::Refund;
        r.order_id = None;
        r
    };
    let paid = l.get_payment(&refund.payment_key).await.unwrap().unwrap();
    let Transition::Apply(refunded) = transition(Some(&paid), &refund) else {
        panic!()
    };
    l.apply(&refund, "n", Some(&refunded), paid.version)
        .await
        .unwrap();
    let early = event("nothing-yet", "x-r", EventKind::Refund, 100);
    l.write(&parking(&early, "n", 0)).await.unwrap();
    let after = time::OffsetDateTime::now_utc() + time::Duration::seconds(5);

    let short_pages = std::sync::atomic::AtomicUsize::new(0);
    let short_pages = &short_pages;
    let search = |q: PaymentSearch| async move {
        let mut keys = Vec::new();
        let mut cursor: Option<SearchCursor> = None;
        for _ in 0..100 {
            let page = l
                .search_payments(&PaymentSearch {
                    after: cursor.clone(),
                    ..q.clone()
                })
                .await
                .unwrap();
            assert!(page.payments.len() <= q.limit, "{page:?}");
            if page.payments.len() < q.limit && page.next.is_some() {
                short_pages.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            for p in &page.payments {
                assert_eq!(
                    p.order_id.as_deref(),
                    Some(format!("order-{}", p.state.payment_key.parts().2).as_str())
                );
                assert!(p.updated_at > before && p.updated_at < after, "{p:?}");
                keys.push(p.state.payment_key.as_str().to_owned());
            }
            // The cursor goes through its text, as the API carries it.
            cursor = page
                .next
                .map(|c| SearchCursor::decode(&c.encode()).unwrap());
            if cursor.is_none() {
                let mut sorted = keys.clone();
                sorted.sort();
                sorted.dedup();
                assert_eq!(sorted.len(), keys.len(), "each once: {keys:?}");
                return sorted;
            }
        }
        panic!("the search never ended")
    };
    let q = |f: fn(&mut PaymentSearch)| {
        let mut q = PaymentSearch {
            limit: 2,
            ..Default::default()
        };
        f(&mut q);
        q
    };
    all.sort();
    assert_eq!(search(q(|_| {})).await, all);
    assert_eq!(
        search(q(|q| q.source = Some("u".into()))).await,
        ["u#m#s1", "u#m#s2", "u#m#s3", "u#m2#s4", "u#m2#s5"]
    );
    assert_eq!(
        search(q(|q| {
            q.source = Some("u".into());
            q.merchant = Some("m2".into());
        }))
        .await,
        ["u#m2#s4", "u#m2#s5"]
    );
    let before_refunded = short_pages.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        search(q(|q| q.status = Some(PaymentStatus::Refunded))).await,
        ["u#m#s2"]
    );
    if kind == Kind::Aws {
        assert!(
            short_pages.load(std::sync::atomic::Ordering::SeqCst) > before_refunded,
            "the search never continued past a page without its match"
        );
    }
    assert_eq!(
        search(q(|q| q.updated_from = Some(
            time::OffsetDateTime::now_utc() + time::Duration::hours(1)
        )))
        .await,
        Vec::<String>::new()
    );
    assert_eq!(
        search(q(|q| q.updated_to = Some(
            time::OffsetDateTime::now_utc() - time::Duration::hours(1)
        )))
        .await,
        Vec::<String>::new()
    );
    // A source whose name is a pattern matches nothing but itself.
    assert!(search(q(|q| q.source = Some("%".into()))).await.is_empty());
    for bad in ["", "not base64!", "bm9uZXdsaW5l"] {
        assert_eq!(SearchCursor::decode(bad), None, "{bad}");
    }
}

async fn ledger_parks_early_events_and_applies_them_with_the_payment(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let l = &b.ledger;
    let refund = event("p3", "r1", EventKind::Refund, 300);
    let over = event("p3", "r2", EventKind::Refund, 5000);
    assert_eq!(
        l.write(&parking(&refund, "n1", 0)).await.unwrap(),
        ApplyOutcome::Applied
    );
    // A second delivery of a parked event is a duplicate; a park on a stale
    // version is a conflict.
    assert_eq!(
        l.write(&parking(&refund, "n1", 1)).await.unwrap(),
        ApplyOutcome::Duplicate
    );
    assert_eq!(
        l.write(&parking(&over, "n2", 0)).await.unwrap(),
        ApplyOutcome::VersionConflict
    );
    assert_eq!(
        l.write(&parking(&over, "n2", 1)).await.unwrap(),
        ApplyOutcome::Applied
    );
    let entry = l.load(&refund.payment_key).await.unwrap();
    assert_eq!(
        (entry.state.clone(), entry.version, entry.parked.len()),
        (None, 2, 2)
    );
    assert!(l
        .contains_event(&refund.payment_key, &refund.event_key)
        .await
        .unwrap());
    let old = l
        .parked_before(
            time::OffsetDateTime::now_utc() - time::Duration::hours(24),
            10,
        )
        .await
        .unwrap();
    assert_eq!(old.len(), 2, "{old:?}");
    assert!(l
        .parked_before(
            time::OffsetDateTime::now_utc() - time::Duration::hours(31),
            10
        )
        .await
        .unwrap()
        .is_empty());

    // A payment written on the version the parks left behind takes the first
    // refund with it and keeps the second, which exceeds it, parked.
    let pay = event("p3", "pay", EventKind::Payment, 1000);
    let Transition::Apply(paid) = transition(None, &pay) else {
        panic!()
    };
    let Transition::Apply(mut part) = transition(Some(&paid), &refund) else {
        panic!()
    };
    part.version = 3;
    let mut over_conflict = entry.parked[1].clone();
    assert_eq!(over_conflict.event.event_key, over.event_key);
    over_conflict.conflict = Some("refunds would exceed the amount paid".into());
    let write = LedgerWrite {
        key: pay.payment_key.clone(),
        expected_version: 1,
        incoming: Incoming::Record(RecordedEvent {
            event: pay.clone(),
            notification_id: "n3".into(),
            status_after: Some(PaymentStatus::Paid),
            unparked_from: None,
        }),
        state: Some(part.clone()),
        unparked: vec![RecordedEvent {
            event: refund.clone(),
            notification_id: "n1".into(),
            status_after: Some(PaymentStatus::PartiallyRefunded),
            unparked_from: Some(refund.payment_key.clone()),
        }],
        conflicts: vec![ParkedEntry {
            payment_key: over.payment_key.clone(),
            parked: over_conflict,
        }],
        aliases: vec![AliasWrite {
            key: PaymentKey::new("u", "m", "completion"),
            expected_version: 0,
        }],
    };
    assert_eq!(
        l.write(&write).await.unwrap(),
        ApplyOutcome::VersionConflict
    );
    let write = LedgerWrite {
        expected_version: 2,
        ..write
    };
    assert_eq!(l.write(&write).await.unwrap(), ApplyOutcome::Applied);
    let entry = l.load(&pay.payment_key).await.unwrap();
    assert_eq!(entry.version, 3);
    assert_eq!(entry.state.as_ref().unwrap().refunded_minor, 300);
    assert_eq!(entry.parked.len(), 1);
    assert_eq!(entry.parked[0].event.event_key, over.event_key);
    assert!(entry.parked[0]
        .conflict
        .as_deref()
        .unwrap()
        .contains("exceed"));
    let history: Vec<_> = l.history(&pay.payment_key).await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|h| h.event_key.as_str())
            .collect::<Vec<_>>(),
        vec!["pay", "r1"]
    );
    assert_eq!(history[1].notification_id, "n1");
    let alias = l
        .load(&PaymentKey::new("u", "m", "completion"))
        .await
        .unwrap();
    assert_eq!(
        (alias.alias_of, alias.version, alias.state),
        (Some(pay.payment_key.clone()), 1, None)
    );

    // A write planned on a view that still showed r1 parked (a query that
    // read the parked items before, and the payment's item after, the write
    // above): unparking r1 again, or marking it conflicting, is refused on
    // the current version; the event stays recorded once.
    let r3 = event("p3", "r3", EventKind::Refund, 100);
    let mut more = part.clone();
    more.refunded_minor = 400;
    more.version = 4;
    let later = |unparked: Vec<RecordedEvent>, conflicts: Vec<ParkedEntry>| LedgerWrite {
        key: pay.payment_key.clone(),
        expected_version: 3,
        incoming: Incoming::Record(RecordedEvent {
            event: r3.clone(),
            notification_id: "n4".into(),
            status_after: None,
            unparked_from: None,
        }),
        state: Some(more.clone()),
        unparked,
        conflicts,
        aliases: vec![],
    };
    let r1_again = RecordedEvent {
        event: refund.clone(),
        notification_id: "n1".into(),
        status_after: None,
        unparked_from: Some(refund.payment_key.clone()),
    };
    let r1_conflict = ParkedEntry {
        payment_key: refund.payment_key.clone(),
        parked: ParkedEvent {
            conflict: Some("stale".into()),
            ..parked(&refund, "n1")
        },
    };
    for stale in [
        later(vec![r1_again], vec![]),
        later(vec![], vec![r1_conflict]),
    ] {
        assert_eq!(
            l.write(&stale).await.unwrap(),
            ApplyOutcome::VersionConflict
        );
    }
    let entry = l.load(&pay.payment_key).await.unwrap();
    assert_eq!(
        (
            entry.version,
            entry.state.unwrap().refunded_minor,
            entry.parked.len()
        ),
        (3, 300, 1)
    );
    assert_eq!(l.history(&pay.payment_key).await.unwrap().len(), 2);
    // The same write naming what is still parked (r2, its conflict again)
    // goes through.
    let r2_conflict = ParkedEntry {
        payment_key: over.payment_key.clone(),
        parked: entry.parked[0].clone(),
    };
    assert_eq!(
        l.write(&later(vec![], vec![r2_conflict])).await.unwrap(),
        ApplyOutcome::Applied
    );
    let history = l.history(&pay.payment_key).await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|h| h.event_key.as_str())
            .collect::<Vec<_>>(),
        ["pay", "r1", "r3"]
    );
}

fn watch(order: &str, due: time::OffsetDateTime) -> Watch {
    let target = QueryTarget::Order {
        order_id: order.into(),
        txn_time: "20261126100000".into(),
    };
    Watch {
        id: Watch::id_for("u", "m", &target),
        source: "u".into(),
        merchant: "m".into(),
        target,
        query_id: Some("Q1".into()),
        reason: "expected".into(),
        since: datetime!(2026-11-26 02:00:00 UTC),
        attempts: 0,
        failures: 0,
        due_at: Some(due),
        last_answer: None,
        finished: None,
        version: 1,
    }
}

async fn ledger_watches_are_versioned_and_listed_when_due(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let l = &b.watches;
    let t0 = datetime!(2026-11-26 02:05:00 UTC);
    let early = watch("order0001", t0);
    let late = watch("order0002", t0 + time::Duration::minutes(10));
    for w in [&late, &early] {
        assert_eq!(l.put_watch(w).await.unwrap(), ApplyOutcome::Applied);
    }
    // A second creation of the same watch is refused.
    assert_eq!(
        l.put_watch(&early).await.unwrap(),
        ApplyOutcome::VersionConflict
    );
    assert_eq!(l.get_watch(&early.id).await.unwrap(), Some(early.clone()));
    assert_eq!(l.get_watch("u#m#order:none").await.unwrap(), None);

    let ids = |ws: Vec<Watch>| ws.into_iter().map(|w| w.id).collect::<Vec<_>>();
    assert_eq!(
        ids(l.due_watches(t0, 10).await.unwrap()),
        vec![early.id.clone()]
    );
    assert_eq!(
        ids(l
            .due_watches(t0 + time::Duration::hours(1), 10)
            .await
            .unwrap()),
        vec![early.id.clone(), late.id.clone()],
        "soonest first"
    );
    assert_eq!(
        l.due_watches(t0 + time::Duration::hours(1), 1)
            .await
            .unwrap()
            .len(),
        1
    );

    // Two workers claim the same version: one wins.
    let claim = |w: &Watch| {
        let mut c = w.clone();
        c.version += 1;
        c.due_at = Some(t0 + time::Duration::minutes(2));
        c
    };
    let (c1, c2) = (claim(&early), claim(&early));
    let (a, b2) = tokio::join!(l.put_watch(&c1), l.put_watch(&c2));
    let mut outcomes = vec![a.unwrap(), b2.unwrap()];
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(
        outcomes,
        vec![ApplyOutcome::Applied, ApplyOutcome::VersionConflict]
    );
    // Finished: no longer due, still readable.
    let mut done = claim(&early);
    done.version = 3;
    done.due_at = None;
    done.finished = Some("succeeded".into());
    assert_eq!(l.put_watch(&done).await.unwrap(), ApplyOutcome::Applied);
    assert_eq!(
        ids(l
            .due_watches(t0 + time::Duration::hours(1), 10)
            .await
            .unwrap()),
        vec![late.id.clone()]
    );
    assert_eq!(l.get_watch(&early.id).await.unwrap(), Some(done));
}

async fn ledger_lists_events_by_psp_time(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let l = &b.ledger;
    let at = |key: &str, id: &str, t: time::OffsetDateTime| {
        let mut e = event(key, id, EventKind::Payment, 100);
        e.psp_time = Some(t);
        e
    };
    let events = [
        at("p1", "before", datetime!(2026-11-24 14:59:59.999 UTC)),
        at("p2", "first", datetime!(2026-11-24 15:00:00 UTC)),
        at("p3", "last", datetime!(2026-11-25 14:59:59 UTC)),
        at("p4", "after", datetime!(2026-11-25 15:00:00 UTC)),
    ];
    for e in &events {
        let Transition::Apply(state) = transition(None, e) else {
            panic!()
        };
        assert_eq!(
            l.apply(e, "n", Some(&state), 0).await.unwrap(),
            ApplyOutcome::Applied
        );
    }
    let mut other = at("p5", "other source", datetime!(2026-11-25 00:00:00 UTC));
    other.source = "v".into();
    other.payment_key = PaymentKey::new("v", "m", "p5");
    l.apply(&other, "n", None, 0).await.unwrap();
    let mut untimed = event("p6", "no time", EventKind::Payment, 1);
    untimed.psp_time = None;
    l.apply(&untimed, "n", None, 0).await.unwrap();

    // A UnionPay clearing day: 23:00 to 23:00 Beijing time.
    let got = l
        .events_between(
            "u",
            datetime!(2026-11-24 23:00:00 +08:00),
            datetime!(2026-11-25 23:00:00 +08:00),
        )
        .await
        .unwrap();
    let keys: Vec<_> = got.iter().map(|r| r.event_key.as_str()).collect();
    assert_eq!(keys, vec!["first", "last"]);
    assert_eq!(got[0].event.as_ref().unwrap().psp_time, events[1].psp_time);
}

async fn archive_reads_ranges(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let key = "raw/source=u/date=2026-11-25/hour=23/01A-2.ndjson";
    b.archive.put(key, b"0123456789\nabcdef\n").await.unwrap();
    assert_eq!(
        b.archive.get_range(key, 0, 10).await.unwrap(),
        b"0123456789"
    );
    assert_eq!(b.archive.get_range(key, 11, 6).await.unwrap(), b"abcdef");
    assert_eq!(b.archive.get_range(key, 17, 1).await.unwrap(), b"\n");
    for (offset, length) in [(11, 8), (18, 1), (100, 5), (u64::MAX - 1, 5)] {
        assert!(
            matches!(
                b.archive.get_range(key, offset, length).await,
                Err(ArchiveError::NotFound(_))
            ),
            "{offset}+{length}"
        );
    }
    assert!(matches!(
        b.archive.get_range("raw/missing.ndjson", 0, 1).await,
        Err(ArchiveError::NotFound(_))
    ));
}

fn segmenter(
    archive: Arc<dyn paynotify_shared::ports::Archive>,
    window_ms: u64,
    max_records: usize,
) -> Arc<Segmenter> {
    Segmenter::new(
        archive,
        SegmentSettings {
            window: Duration::from_millis(window_ms),
            seal_when_idle: false,
            max_records,
            max_bytes: 1 << 20,
            writers: 4,
        },
    )
}

/// Appends `n` envelopes of source `u` at once; returns them with their locations.
async fn append_many(
    s: &Arc<Segmenter>,
    n: usize,
) -> Vec<(Envelope, Result<Location, ArchiveError>)> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let e = support::envelope(format!("n={i}&{}", "x".repeat(i)).as_bytes());
                let r = s.append(e.partition(), e.id.clone(), e.to_json()).await;
                (
                    e,
                    r.map(|(at, json)| {
                        assert_eq!(json.len() as u64, at.span.unwrap()[1]);
                        at
                    }),
                )
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn segments_group_notifications_and_locate_each(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let s = segmenter(b.archive.clone(), 50, 40);
    let appended = append_many(&s, 100).await;
    let keys = b.archive.list("raw/", None, None).await.unwrap();
    // 100 notifications at once, at most 40 a segment: a few objects.
    assert!((3..=10).contains(&keys.len()), "{keys:?}");
    let mut total = 0;
    for key in &keys {
        let n = paynotify_shared::segment::segment_len(key).unwrap();
        let records = paynotify_shared::segment::read_object(b.archive.as_ref(), key)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(records.len(), n);
        assert!(n <= 40);
        // Named by its first envelope.
        let first = Envelope::from_json(&records[0].1).unwrap();
        assert!(key.ends_with(&format!("/{}-{n}.ndjson", first.id)), "{key}");
        total += n;
    }
    assert_eq!(total, 100);
    for (e, at) in appended {
        let at = at.unwrap();
        assert!(keys.contains(&at.key));
        // A ranged read gives back exactly this envelope.
        let read = paynotify_shared::segment::read_envelope(b.archive.as_ref(), &at, Some(&e.id))
            .await
            .unwrap();
        assert_eq!(read, e);
        // Another notification's id at this place is refused.
        assert!(
            paynotify_shared::segment::read_envelope(b.archive.as_ref(), &at, Some("other"))
                .await
                .is_err()
        );
    }
    // Alone, a notification is a segment of one.
    let s = segmenter(b.archive.clone(), 0, 40);
    let (e, at) = append_many(&s, 1).await.remove(0);
    let at = at.unwrap();
    assert!(at.key.ends_with(&format!("/{}-1.ndjson", e.id)), "{at}");
}

async fn a_segment_put_whose_reply_was_lost_is_acknowledged_once(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let faults = Faults::new();
    faults.only(Some(&["put"]));
    // The first attempt stores the segment and its reply is lost; the
    // retry finds the key taken by these very bytes.
    faults.set_repeat(true);
    let archive: Arc<dyn paynotify_shared::ports::Archive> = Arc::new(FaultyArchive {
        inner: b.archive.clone(),
        faults,
    });
    let appended = append_many(&segmenter(archive, 20, 100), 5).await;
    for (e, at) in &appended {
        let at = at.as_ref().unwrap();
        let read = paynotify_shared::segment::read_envelope(b.archive.as_ref(), at, Some(&e.id))
            .await
            .unwrap();
        assert_eq!(&read, e);
    }
    let keys = b.archive.list("raw/", None, None).await.unwrap();
    let stored: usize = keys
        .iter()
        .map(|k| paynotify_shared::segment::segment_len(k).unwrap())
        .sum();
    assert_eq!(stored, 5, "each notification stored once: {keys:?}");
}

async fn a_failed_segment_put_answers_every_member_with_an_error(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let faults = Faults::new();
    faults.set_down(true);
    let archive: Arc<dyn paynotify_shared::ports::Archive> = Arc::new(FaultyArchive {
        inner: b.archive.clone(),
        faults: faults.clone(),
    });
    let s = segmenter(archive, 20, 100);
    for (_, at) in append_many(&s, 10).await {
        assert!(matches!(at, Err(ArchiveError::Unavailable(_))), "{at:?}");
    }
    assert!(b.archive.list("raw/", None, None).await.unwrap().is_empty());
    // The store back: the next ones are stored.
    faults.set_down(false);
    assert!(append_many(&s, 10).await.iter().all(|(_, at)| at.is_ok()));
}

async fn replay_of_a_range_of_segments_skips_torn_ones(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let appended = append_many(&segmenter(b.archive.clone(), 50, 100), 7).await;
    // A segment cut short by a crash (no 200 went out for any of it).
    let e = support::envelope(b"torn=1");
    let (key, bytes, _) = e.to_segment();
    let torn_key = key.replace("-1.ndjson", "-2.ndjson");
    b.archive
        .put(&torn_key, &bytes[..bytes.len() - 3])
        .await
        .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let keys = b
        .archive
        .list("raw/", Some(now - time::Duration::HOUR), Some(now))
        .await
        .unwrap();
    assert!(keys.contains(&torn_key));
    let replayed = paynotify::replay::replay(&b, &keys, |_| {}).await.unwrap();
    assert_eq!((replayed.sent, replayed.torn), (7, 1));
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 7 {
        for m in b.queue.receive(10, Duration::from_secs(1)).await.unwrap() {
            let q = QueuedBody::parse(&m.body).unwrap();
            seen.insert(q.notification_id(), q.location());
        }
    }
    for (e, at) in appended {
        assert_eq!(seen.get(&e.id), Some(&at.unwrap()));
    }
}

/// Many refunds of one payment at once, each delivered twice, through the
/// worker's own apply (which re-reads on a version conflict, and is run
/// again when it gives up, as a redelivery would): each applies
/// exactly once, the duplicates are told apart, and the history holds every
/// event in the order applied, past what one DynamoDB item keeps inline
/// (overflow items).
async fn ledger_concurrent_events_of_one_payment_all_apply_once_and_keep_their_history(kind: Kind) {
    use paynotify_worker::{apply::apply, AckKind, Disposition};
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let payment = event("p9", "pay", EventKind::Payment, 10_000);
    assert_eq!(
        apply(b.ledger.as_ref(), "n0", payment.clone()).await,
        Disposition::Ack(AckKind::Applied)
    );
    let refunds = 3 * paynotify_shared::backend::aws::INLINE_EVENTS as usize;
    let tasks: Vec<_> = (0..refunds)
        .flat_map(|i| [i, i])
        .map(|i| {
            let l = b.ledger.clone();
            tokio::spawn(async move {
                let e = event("p9", &format!("r{i:02}"), EventKind::Refund, 100);
                // As the queue does: a message whose apply gave up on
                // conflicts comes back and is applied again.
                loop {
                    match apply(l.as_ref(), &format!("n{i}"), e.clone()).await {
                        Disposition::Retry(_) => tokio::task::yield_now().await,
                        done => return (i, done),
                    }
                }
            })
        })
        .collect();
    let mut applied = std::collections::BTreeMap::<usize, usize>::new();
    for t in tasks {
        let (i, outcome) = t.await.unwrap();
        match outcome {
            Disposition::Ack(AckKind::Applied) => *applied.entry(i).or_default() += 1,
            Disposition::Ack(AckKind::Duplicate) => {}
            other => panic!("refund {i}: {other:?}"),
        }
    }
    assert_eq!(applied.len(), refunds, "{applied:?}");
    assert!(applied.values().all(|n| *n == 1), "{applied:?}");
    let state = b
        .ledger
        .get_payment(&payment.payment_key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.refunded_minor, 100 * refunds as u64);
    let history = b.ledger.history(&payment.payment_key).await.unwrap();
    assert_eq!(history.len(), refunds + 1);
    assert_eq!(history[0].event_key, "pay");
    let mut keys: Vec<&str> = history[1..].iter().map(|h| h.event_key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), refunds);
    assert!(history.iter().all(|h| h.event.is_some()));
    // A late redelivery of an early event and of the last one: duplicates.
    for id in ["pay", "r00", &format!("r{:02}", refunds - 1)] {
        let kind = if id == "pay" {
            EventKind::Payment
        } else {
            EventKind::Refund
        };
        let amount = if id == "pay" { 10_000 } else { 100 };
        let e = event("p9", id, kind, amount);
        assert!(b
            .ledger
            .contains_event(&e.payment_key, &e.event_key)
            .await
            .unwrap());
        assert_eq!(
            apply(b.ledger.as_ref(), "late", e).await,
            Disposition::Ack(AckKind::Duplicate),
            "{id}"
        );
    }
    assert_eq!(
        b.ledger.history(&payment.payment_key).await.unwrap().len(),
        refunds + 1
    );
}

/// A ledger whose reads that may lag serve the entry of the payment's
/// previous read, and never say an event was seen: the worst an eventually
/// consistent replica may do under the `load_to_apply` contract.
struct Lagging {
    inner: Arc<dyn paynotify_shared::ports::Ledger>,
    last: std::sync::Mutex<std::collections::HashMap<PaymentKey, PaymentEntry>>,
    stale: std::sync::atomic::AtomicUsize,
    latest: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl paynotify_shared::ports::Ledger for Lagging {
    async fn load_to_apply(
        &self,
        key: &PaymentKey,
        event_key: &paynotify_shared::event::EventKey,
        freshness: Freshness,
    ) -> Result<Loaded, LedgerError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self
            .inner
            .load_to_apply(key, event_key, Freshness::Latest)
            .await?;
        let before = self
            .last
            .lock()
            .unwrap()
            .insert(key.clone(), now.entry.clone());
        if freshness == Freshness::Latest {
            self.latest.fetch_add(1, SeqCst);
            return Ok(now);
        }
        let entry = before.unwrap_or_default();
        if entry != now.entry || now.seen {
            self.stale.fetch_add(1, SeqCst);
        }
        Ok(Loaded { entry, seen: false })
    }
    async fn load(&self, key: &PaymentKey) -> Result<PaymentEntry, LedgerError> {
        self.inner.load(key).await
    }
    async fn write(&self, w: &LedgerWrite) -> Result<ApplyOutcome, LedgerError> {
        self.inner.write(w).await
    }
    async fn recorded_since(
        &self,
        since: time::OffsetDateTime,
    ) -> Result<Option<u64>, LedgerError> {
        self.inner.recorded_since(since).await
    }
    async fn history(&self, key: &PaymentKey) -> Result<Vec<EventRecord>, LedgerError> {
        self.inner.history(key).await
    }
    async fn contains_event(
        &self,
        key: &PaymentKey,
        event_key: &paynotify_shared::event::EventKey,
    ) -> Result<bool, LedgerError> {
        self.inner.contains_event(key, event_key).await
    }
    async fn parked_before(
        &self,
        t: time::OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<ParkedEntry>, LedgerError> {
        self.inner.parked_before(t, limit).await
    }
    async fn events_between(
        &self,
        source: &str,
        from: time::OffsetDateTime,
        to: time::OffsetDateTime,
    ) -> Result<Vec<EventRecord>, LedgerError> {
        self.inner.events_between(source, from, to).await
    }
    async fn remove_parked(
        &self,
        key: &PaymentKey,
        event_key: &paynotify_shared::EventKey,
    ) -> Result<Option<paynotify_shared::ports::ParkedEvent>, LedgerError> {
        self.inner.remove_parked(key, event_key).await
    }
    async fn payments_by_order(
        &self,
        order_id: &str,
        limit: usize,
    ) -> Result<Vec<PaymentKey>, LedgerError> {
        self.inner.payments_by_order(order_id, limit).await
    }
    async fn search_payments(
        &self,
        search: &paynotify_shared::ports::PaymentSearch,
    ) -> Result<paynotify_shared::ports::PaymentPage, LedgerError> {
        self.inner.search_payments(search).await
    }
}

async fn ledger_load_to_apply_tells_seen_events_and_a_lagging_read_changes_nothing(kind: Kind) {
    use paynotify_worker::{apply::apply, AckKind, Disposition};
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let lagging = Lagging {
        inner: b.ledger.clone(),
        last: Default::default(),
        stale: Default::default(),
        latest: Default::default(),
    };
    let (pay, r1, r2) = (
        event("lag", "pay", EventKind::Payment, 10_000),
        event("lag", "r1", EventKind::Refund, 100),
        event("lag", "r2", EventKind::Refund, 100),
    );
    let void = event("lag", "v", EventKind::Void, 499);
    let applied = |kind| Disposition::Ack(kind);
    // Each delivery reads a replica one read behind: the refund parks on an
    // empty entry, the payment is planned on that stale empty entry, refused
    // by its version, planned again on the latest and takes the refund.
    for (e, want) in [
        (&r1, applied(AckKind::Parked)),
        (&pay, applied(AckKind::Applied)),
        (&r1, applied(AckKind::Duplicate)),
        (&pay, applied(AckKind::Duplicate)),
        (&r2, applied(AckKind::Applied)),
        (&r2, applied(AckKind::Duplicate)),
    ] {
        assert_eq!(
            apply(&lagging, "n", e.clone()).await,
            want,
            "{}",
            e.event_key
        );
    }
    // A conflict is decided on the latest entry only.
    let latest = lagging.latest.load(SeqCst);
    assert!(matches!(
        apply(&lagging, "n", void.clone()).await,
        Disposition::DeadLetter { reason, .. } if reason == "conflict"
    ));
    assert!(lagging.latest.load(SeqCst) > latest);
    assert!(lagging.stale.load(SeqCst) >= 4, "stale reads were served");
    let state = b
        .ledger
        .get_payment(&pay.payment_key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (state.status, state.refunded_minor),
        (PaymentStatus::PartiallyRefunded, 200)
    );
    let history: Vec<String> = b
        .ledger
        .history(&pay.payment_key)
        .await
        .unwrap()
        .iter()
        .map(|h| h.event_key.clone())
        .collect();
    assert_eq!(history, ["pay", "r1", "r2"]);
    // The backend's own answer, as fresh as `load`, for recorded, parked
    // and unknown events, with either freshness.
    let early = event("lag2", "early", EventKind::Refund, 100);
    assert_eq!(
        apply(b.ledger.as_ref(), "n", early.clone()).await,
        applied(AckKind::Parked)
    );
    for freshness in [Freshness::Latest, Freshness::MayLag] {
        for (key, id, seen) in [
            (&pay.payment_key, "pay", true),
            (&pay.payment_key, "r2", true),
            (&pay.payment_key, "v", false),
            (&early.payment_key, "early", true),
            (&early.payment_key, "other", false),
        ] {
            let got = b
                .ledger
                .load_to_apply(key, &paynotify_shared::event::EventKey::new(id), freshness)
                .await
                .unwrap();
            assert_eq!(got.seen, seen, "{key} {id} {freshness:?}");
            assert_eq!(got.entry, b.ledger.load(key).await.unwrap(), "{key}");
        }
    }
}

/// An event that changes no state on a payment that has none yet (a
/// UnionPay answer still in process, a refund that failed before its
/// payment arrived) is recorded, and the payment still takes its first
/// state on version 0 afterwards; a completion's alias also takes a key
/// that holds only such a record.
async fn ledger_records_on_a_new_payment_and_applies_it_later(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let l = &b.ledger;
    let history = |key: PaymentKey| async move {
        l.history(&key)
            .await
            .unwrap()
            .iter()
            .map(|h| h.event_key.as_str().to_owned())
            .collect::<Vec<_>>()
    };

    // In process (03), then the final answer (00).
    let mut asking = event("r1", "q03", EventKind::Payment, 1000);
    asking.outcome = EventOutcome::Pending;
    assert_eq!(
        l.apply(&asking, "n1", None, 0).await.unwrap(),
        ApplyOutcome::Applied
    );
    let entry = l.load(&asking.payment_key).await.unwrap();
    assert_eq!((entry.version, entry.state.is_none()), (0, true));
    let pay = event("r1", "q00", EventKind::Payment, 1000);
    let Transition::Apply(paid) = transition(None, &pay) else {
        panic!()
    };
    assert_eq!(
        l.apply(&pay, "n2", Some(&paid), entry.version)
            .await
            .unwrap(),
        ApplyOutcome::Applied
    );
    let state = l.get_payment(&pay.payment_key).await.unwrap().unwrap();
    assert_eq!(
        (state.status, state.paid_minor, state.version),
        (PaymentStatus::Paid, 1000, 1)
    );
    assert_eq!(history(pay.payment_key.clone()).await, ["q03", "q00"]);

    // A refund that failed before its payment, then the payment.
    let mut failed = event("r2", "f1", EventKind::Refund, 100);
    failed.outcome = EventOutcome::Failed;
    assert_eq!(
        l.apply(&failed, "n3", None, 0).await.unwrap(),
        ApplyOutcome::Applied
    );
    let pay2 = event("r2", "p1", EventKind::Payment, 500);
    let Transition::Apply(paid2) = transition(None, &pay2) else {
        panic!()
    };
    assert_eq!(
        l.apply(&pay2, "n4", Some(&paid2), 0).await.unwrap(),
        ApplyOutcome::Applied
    );
    assert_eq!(
        l.get_payment(&pay2.payment_key)
            .await
            .unwrap()
            .unwrap()
            .status,
        PaymentStatus::Paid
    );

    // A key holding only such a record becomes a completion's alias.
    let mut early = event("c9", "x1", EventKind::Capture, 500);
    early.outcome = EventOutcome::Pending;
    assert_eq!(
        l.apply(&early, "n5", None, 0).await.unwrap(),
        ApplyOutcome::Applied
    );
    let note = event("r2", "note", EventKind::Capture, 500);
    let write = LedgerWrite {
        key: pay2.payment_key.clone(),
        expected_version: 1,
        incoming: Incoming::Record(RecordedEvent {
            event: note,
            notification_id: "n6".into(),
            status_after: None,
            unparked_from: None,
        }),
        state: None,
        unparked: vec![],
        conflicts: vec![],
        aliases: vec![AliasWrite {
            key: early.payment_key.clone(),
            expected_version: 0,
        }],
    };
    assert_eq!(l.write(&write).await.unwrap(), ApplyOutcome::Applied);
    let alias = l.load(&early.payment_key).await.unwrap();
    assert_eq!(alias.alias_of, Some(pay2.payment_key.clone()));
}

/// A retry's pointer that reached the DLQ (a stuck worker, its receive
/// limit) carries its first receive time; `dlq redrive` sends it back
/// without it, so its first transient error is not `retries_exhausted` at
/// once. Other bodies come back byte for byte.
async fn a_redriven_retry_starts_a_fresh_budget(kind: Kind) {
    use paynotify_shared::envelope::RetryState;
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let q = &b.queue;
    let at = Location {
        key: "raw/source=u/date=2026-01-01/hour=00/01A-2.ndjson".into(),
        span: Some([0, 120]),
    };
    let since = datetime!(2026-01-01 00:00:00 UTC);
    let retry = RetryState { since, attempts: 7 };
    let pointer = QueuedBody::pointer(&at, Some("01A"), Some(retry), Some(2));
    let inline = br#"{"v":1,"id":"01B","body":"a=\u00e9&b=1 "}"#.to_vec();
    for body in [&pointer, &inline] {
        q.send(body).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(q.receive(10, Duration::from_secs(1)).await.unwrap());
    }
    for m in &got {
        q.dead_letter(m, "retries_exhausted", "gave up")
            .await
            .unwrap();
    }
    assert_eq!(
        b.dead_letters
            .redrive_with(Some("retries_exhausted"), &|_| {})
            .await
            .unwrap(),
        2
    );
    let mut back = Vec::new();
    while back.len() < 2 {
        back.extend(q.receive(10, Duration::from_secs(1)).await.unwrap());
    }
    // The inline body first.
    back.sort_by_key(|m| m.body != inline);
    assert_eq!(back[0].body, inline, "any other body comes back unchanged");
    let QueuedBody::Pointer {
        location,
        id,
        retry,
        item,
    } = QueuedBody::parse(&back[1].body).unwrap()
    else {
        panic!("a pointer")
    };
    assert_eq!(
        (location, id.as_deref(), retry, item),
        (at, Some("01A"), None, Some(2))
    );
}

/// Every queue keeps SQS's limits (256 KiB a message, delays of at most
/// 900 s), so the pointer path for large envelopes and the delay clamp run
/// on the local backend too, not only on SQS.
async fn queues_keep_sqs_limits(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let q = &b.queue;
    assert_eq!(q.max_message_bytes(), 256 * 1024);
    assert_eq!(q.max_delay_secs(), 900);
    let largest = vec![b'a'; 256 * 1024];
    q.send(&largest).await.unwrap();
    let over = vec![b'a'; 256 * 1024 + 1];
    assert!(q.send(&over).await.is_err());
    assert!(q.send_delayed(&over, 1).await.is_err());
    assert!(q.send_batch(&[b"x".to_vec(), over.clone()]).await.is_err());
    // A longer delay is the longest there is, as SQS would be asked for.
    q.send_delayed(b"later", 3600).await.unwrap();
    let got = q.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        got.len(),
        1,
        "only the largest message; the delayed one waits"
    );
    assert_eq!(got[0].body.len(), 256 * 1024);
    let stats = q.stats().await.unwrap();
    assert_eq!((stats.in_flight, stats.delayed), (1, 1), "{stats:?}");
}

/// One UnionPay transaction seen twice as a success with two codes (00 in
/// its notification, A6 in a status query's answer, or the reverse) is one
/// money movement: the second is a duplicate. In process, then final, stays
/// two events; two in-process codes are one. A success recorded under the
/// key that named its raw code (A6) before keys named the outcome class is
/// still found.
async fn a_unionpay_movement_applies_once_whatever_its_success_code(kind: Kind) {
    use paynotify_shared::event::EventKey;
    use paynotify_shared::scheme::unionpay::{to_event, Fields};
    use paynotify_worker::{apply::apply, AckKind, Disposition};
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let l = b.ledger.as_ref();
    let msg = |txn_type: &str, order: &str, query_id: &str, orig: &str, code: &str| {
        let mut f = Fields::from_pairs([
            ("merId", "777290058167151"),
            ("txnType", txn_type),
            ("orderId", order),
            ("txnTime", "20240105145046"),
            ("queryId", query_id),
            ("respCode", code),
            ("txnAmt", if txn_type == "01" { "1000" } else { "100" }),
            ("currencyCode", "156"),
        ])
        .unwrap();
        if !orig.is_empty() {
            f.set("origQryId", orig);
        }
        to_event("unionpay", &f).unwrap()
    };
    let ack = |k| Disposition::Ack(k);
    let refunded = |pay: PaymentEvent| async move {
        l.get_payment(&pay.payment_key)
            .await
            .unwrap()
            .unwrap()
            .refunded_minor
    };
    for (pay_ref, first, second) in [("P1", "00", "A6"), ("P2", "A6", "00")] {
        let pay = msg("01", &format!("ord{pay_ref}00"), pay_ref, "", "00");
        assert_eq!(apply(l, "n", pay.clone()).await, ack(AckKind::Applied));
        let refund = |code| {
            msg(
                "04",
                &format!("ref{pay_ref}00"),
                &format!("R{pay_ref}"),
                pay_ref,
                code,
            )
        };
        assert_eq!(apply(l, "n1", refund(first)).await, ack(AckKind::Applied));
        assert_eq!(
            apply(l, "q1", refund(second)).await,
            ack(AckKind::Duplicate),
            "{first} then {second}"
        );
        assert_eq!(refunded(pay).await, 100, "{first} then {second}");
    }

    // In process (03, then 05), then the final success: two events.
    let pay = msg("01", "ordP3000", "P3", "", "00");
    assert_eq!(apply(l, "n", pay.clone()).await, ack(AckKind::Applied));
    let refund = |code| msg("04", "refP3000", "RP3", "P3", code);
    assert_eq!(apply(l, "n1", refund("03")).await, ack(AckKind::Recorded));
    assert_eq!(apply(l, "q1", refund("05")).await, ack(AckKind::Duplicate));
    assert_eq!(apply(l, "n2", refund("00")).await, ack(AckKind::Applied));
    assert_eq!(refunded(pay).await, 100);

    // Recorded as `…|A6` before the key named the class.
    let pay = msg("01", "ordP4000", "P4", "", "00");
    assert_eq!(apply(l, "n", pay.clone()).await, ack(AckKind::Applied));
    let mut old = msg("04", "refP4000", "RP4", "P4", "A6");
    let new_key = old.event_key.clone();
    old.event_key = EventKey::new(format!(
        "{}|A6",
        new_key.as_str().strip_suffix("|00").unwrap()
    ));
    assert_ne!(
        old.event_key, new_key,
        "the class key differs from the raw one"
    );
    assert_eq!(apply(l, "n1", old).await, ack(AckKind::Applied));
    assert_eq!(
        apply(l, "n2", msg("04", "refP4000", "RP4", "P4", "A6")).await,
        ack(AckKind::Duplicate)
    );
    assert_eq!(refunded(pay).await, 100);
}

/// 150 refunds parked before their payment: the payment's write takes as
/// many as one write can (DynamoDB: 100 items a transaction) and the writes
/// that follow take the rest; refunds past the amount paid stay parked with
/// their conflict. A process that died after the first write leaves the
/// rest to the redelivery of its message. On DynamoDB the payment's write
/// (150 deletes in one transaction) was refused on every try and the
/// payment never applied.
async fn a_payment_with_150_parked_refunds_applies_every_one(kind: Kind) {
    use paynotify_worker::apply::{apply, plan, Plan};
    use paynotify_worker::{AckKind, Disposition};
    let dir = tempfile::tempdir().unwrap();
    let b = backends(kind, dir.path(), 30, 5).await;
    let l = b.ledger.as_ref();
    let t0 = datetime!(2026-12-01 10:00:00 UTC);
    let park_150 = |payment: &'static str| async move {
        for i in 0..150 {
            let mut r = event(payment, &format!("{payment}-r{i:03}"), EventKind::Refund, 1);
            r.psp_time = Some(t0 + time::Duration::seconds(i));
            assert_eq!(
                apply(l, &format!("n{i}"), r).await,
                Disposition::Ack(AckKind::Parked)
            );
        }
    };
    let settled = |payment: &'static str| async move {
        let key = PaymentKey::new("u", "m", payment);
        let entry = l.load(&key).await.unwrap();
        let history = l.history(&key).await.unwrap();
        (entry, history)
    };

    park_150("p150").await;
    let pay = event("p150", "p150-pay", EventKind::Payment, 1000);
    assert_eq!(
        apply(l, "pay", pay).await,
        Disposition::Ack(AckKind::Applied)
    );
    let (entry, history) = settled("p150").await;
    let state = entry.state.unwrap();
    assert_eq!(
        (
            state.status,
            state.refunded_minor,
            history.len(),
            entry.parked.len()
        ),
        (PaymentStatus::PartiallyRefunded, 150, 151, 0)
    );
    // Applied in the order UnionPay timed them.
    let order: Vec<_> = history.iter().map(|h| h.event_key.clone()).collect();
    let mut sorted = order[1..].to_vec();
    sorted.sort();
    assert_eq!(order[1..], sorted[..]);

    // 100 paid: 100 refunds apply, 50 stay parked with their conflict.
    park_150("p100").await;
    let pay = event("p100", "p100-pay", EventKind::Payment, 100);
    assert_eq!(
        apply(l, "pay", pay).await,
        Disposition::Ack(AckKind::Applied)
    );
    let (entry, history) = settled("p100").await;
    let state = entry.state.unwrap();
    assert_eq!(
        (state.status, state.refunded_minor, history.len()),
        (PaymentStatus::Refunded, 100, 101)
    );
    assert_eq!(entry.parked.len(), 50);
    assert!(
        entry.parked.iter().all(|p| p.conflict.is_some()),
        "{:?}",
        entry.parked[0]
    );

    // The process dies after the payment's first write: its redelivery
    // takes the rest.
    park_150("p-died").await;
    let pay = event("p-died", "p-died-pay", EventKind::Payment, 1000);
    let key = pay.payment_key.clone();
    let entry = l.load(&key).await.unwrap();
    let Plan::Write(first, _) = plan(&entry, &Default::default(), &pay, "pay", t0) else {
        panic!("a write")
    };
    assert!(first.unparked.len() < 150);
    assert_eq!(l.write(&first).await.unwrap(), ApplyOutcome::Applied);
    assert_eq!(
        apply(l, "pay", pay).await,
        Disposition::Ack(AckKind::Duplicate)
    );
    let (entry, history) = settled("p-died").await;
    assert_eq!(
        (
            entry.state.unwrap().refunded_minor,
            history.len(),
            entry.parked.len()
        ),
        (150, 151, 0)
    );
}
