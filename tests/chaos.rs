//! The pipeline under injected faults, on both backends: outages longer
//! than the queue's receive limit, throttling, lost replies, panics and
//! failed reads. Each scenario ends in a clean `reconcile`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use paynotify::app::AppOptions;
use paynotify::simulate::Delivery;
use paynotify_shared::ports::LedgerExt;
use paynotify_shared::PaymentStatus;
use paynotify_worker::Hooks;
use support::app::{spawn_app_tweaked, TestApp};
use support::Kind;

#[macro_use]
mod support;

on_both_backends!(
    ledger_outage_outlasting_the_receive_limit_is_retried_until_it_ends,
    transient_failures_past_retry_for_are_dead_lettered_as_retries_exhausted,
    a_failed_duplicate_check_retries_instead_of_dead_lettering,
    a_failed_delete_is_not_counted_and_the_redelivery_is_a_duplicate,
    a_panic_is_caught_retried_and_dead_lettered_as_panic,
    archive_down_answers_503_and_the_message_sent_meanwhile_applies_once,
    a_retried_message_whose_segment_failed_moves_to_a_fresh_delivery_archived_alone,
    an_archive_put_retried_after_its_success_is_not_a_503,
    queue_down_after_archiving_answers_503_and_the_psp_retry_applies_once,
    ledger_throttling_and_lost_replies_apply_everything_once,
    a_receive_in_flight_at_shutdown_is_settled_before_the_worker_stops,
);

/// SIGTERM while a receive's reply is on its way: the queue has already
/// taken the message (invisible for the visibility timeout). A worker that
/// dropped the receive would leave it hidden and unprocessed; it settles it
/// before it stops.
async fn a_receive_in_flight_at_shutdown_is_settled_before_the_worker_stops(kind: Kind) {
    let mut t = spawn_app_tweaked(kind, with_faults(), |_| {}).await;
    t.faults().queue.only(Some(&["receive"]));
    t.faults()
        .queue
        .set_reply_latency(Duration::from_millis(700));
    let (queue, ledger) = (
        t.app().backends.queue.clone(),
        t.app().backends.ledger.clone(),
    );
    t.sim.send(t.sim.purchase("term", 500)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue.stats().await.unwrap().in_flight == 0 {
        assert!(Instant::now() < deadline, "never received");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Taken by a receive whose reply is still 700 ms away.
    t.app.take().unwrap().stop().await.unwrap();
    let key = paynotify_shared::PaymentKey::new("unionpay", support::app::MERCHANT, "term");
    let paid = ledger.get_payment(&key).await.unwrap();
    assert_eq!(paid.map(|p| p.status), Some(PaymentStatus::Paid));
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.visible, stats.in_flight), (0, 0), "{stats:?}");
}

fn with_faults() -> AppOptions {
    AppOptions {
        faults: true,
        ..AppOptions::all()
    }
}

async fn wait_for_dlq(t: &TestApp, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reasons = t.dlq_reasons().await;
        if reasons.len() >= n {
            return reasons;
        }
        assert!(
            Instant::now() < deadline,
            "DLQ never reached {n}: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn assert_clean(t: &TestApp) {
    let report = t.reconcile().await;
    assert!(report.is_clean(), "{:#?}", report.discrepancies);
}

/// `reconcile`'s one discrepancy: a verified event in the DLQ, dead-lettered
/// as `reason`, that the ledger does not hold (money an operator must see).
async fn assert_verified_in_dlq(t: &TestApp, reason: &str) {
    let report = t.reconcile().await;
    let found: Vec<_> = report
        .discrepancies
        .iter()
        .map(|d| (d.kind, d.detail.contains(&format!("as {reason}"))))
        .collect();
    assert_eq!(
        found,
        [("verified_dead_lettered", true)],
        "{:#?}",
        report.discrepancies
    );
}

async fn ledger_outage_outlasting_the_receive_limit_is_retried_until_it_ends(kind: Kind) {
    // Three receives, retries at most 1 s apart: cycled through the queue
    // alone, a message would reach the DLQ within about 3 s.
    let t = spawn_app_tweaked(kind, with_faults(), |c| c.backend.max_receives = 3).await;
    t.faults().ledger.set_down(true);
    t.sim.send(t.sim.purchase("outage", 500)).await;
    t.sim.send(t.sim.refund("outage", "outage-r", 100)).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        t.dlq_reasons().await.is_empty(),
        "{:?}",
        t.dlq_reasons().await
    );
    assert!(t.app().stats.snapshot().retried >= 4);
    t.faults().ledger.set_down(false);
    let s = t
        .wait_for_status("outage", PaymentStatus::PartiallyRefunded)
        .await;
    assert_eq!(s.refunded_minor, 100);
    t.wait_until_drained().await;
    assert!(t.dlq_reasons().await.is_empty());
    assert_clean(&t).await;
}

async fn transient_failures_past_retry_for_are_dead_lettered_as_retries_exhausted(kind: Kind) {
    let t = spawn_app_tweaked(kind, with_faults(), |c| {
        c.backend.max_receives = 3;
        c.worker.retry_for_secs = 2;
    })
    .await;
    t.faults().ledger.set_down(true);
    t.sim.send(t.sim.purchase("gone", 500)).await;
    assert_eq!(wait_for_dlq(&t, 1).await, vec!["retries_exhausted"]);
    let dlq = t.app().backends.dead_letters.dlq_list(10).await.unwrap();
    assert!(dlq[0].error.contains("injected fault"), "{}", dlq[0].error);
    t.faults().ledger.set_down(false);
    assert!(t.payment("gone").await.is_none());
    // In the DLQ, not in the ledger: verified money that reconcile names.
    assert_verified_in_dlq(&t, "retries_exhausted").await;
}

async fn a_failed_duplicate_check_retries_instead_of_dead_lettering(kind: Kind) {
    let t = spawn_app_tweaked(kind, with_faults(), |_| {}).await;
    t.sim.send(t.sim.purchase("dup", 500)).await;
    t.wait_for_status("dup", PaymentStatus::Paid).await;
    // A void of the wrong amount conflicts on the first read; whether it is
    // a redelivery of an applied event is read again, from the latest
    // entry, and that second read fails: a retry, not a dead letter.
    let retried = t.app().stats.snapshot().retried;
    t.faults().ledger.only(Some(&["load_to_apply"]));
    t.faults().ledger.fail_nth(2);
    t.sim.send(t.sim.void("dup", "dup-v", 499)).await;
    assert_eq!(wait_for_dlq(&t, 1).await, vec!["conflict"]);
    assert_eq!(t.faults().ledger.injected(), 1);
    assert_eq!(t.app().stats.snapshot().retried, retried + 1);
    assert_eq!(t.payment("dup").await.unwrap().status, PaymentStatus::Paid);
    assert_verified_in_dlq(&t, "conflict").await;
}

async fn a_failed_delete_is_not_counted_and_the_redelivery_is_a_duplicate(kind: Kind) {
    let t = spawn_app_tweaked(kind, with_faults(), |_| {}).await;
    t.faults().queue.only(Some(&["delete"]));
    t.faults().queue.fail_nth(1);
    t.sim.send(t.sim.purchase("del", 500)).await;
    t.wait_for_status("del", PaymentStatus::Paid).await;
    // Applied, but its delete failed: it comes back after its visibility
    // timeout, is a duplicate, and is deleted. The stats count what left
    // the queue: one duplicate, no applied.
    t.wait_until_drained().await;
    let stats = t.app().stats.snapshot();
    assert_eq!(t.faults().queue.injected(), 1);
    assert_eq!((stats.applied, stats.duplicates), (0, 1), "{stats:?}");
    assert_eq!(t.payment("del").await.unwrap().version, 1);
    assert_clean(&t).await;
}

async fn a_panic_is_caught_retried_and_dead_lettered_as_panic(kind: Kind) {
    let hooks = Hooks {
        before_apply: Some(Arc::new(|e| {
            assert!(
                e.payment_ref != "boom",
                "injected panic for {}",
                e.payment_ref
            );
        })),
        ..Hooks::default()
    };
    let t = spawn_app_tweaked(
        kind,
        AppOptions {
            hooks,
            ..AppOptions::all()
        },
        |c| c.backend.max_receives = 4,
    )
    .await;
    t.sim.send(t.sim.purchase("boom", 100)).await;
    t.sim.send(t.sim.purchase("fine", 100)).await;
    t.wait_for_status("fine", PaymentStatus::Paid).await;
    assert_eq!(wait_for_dlq(&t, 1).await, vec!["panic"]);
    let dlq = t.app().backends.dead_letters.dlq_list(10).await.unwrap();
    assert!(
        dlq[0].error.contains("injected panic for boom"),
        "{}",
        dlq[0].error
    );
    // Retried once (receive 1), dead-lettered at receive 2 = 4 - 2.
    assert_eq!(dlq[0].receive_count, 2);
    assert!(t.payment("boom").await.is_none());
    t.wait_until_drained().await;
    assert_verified_in_dlq(&t, "panic").await;
}

/// Ingest sends a notification's message while its segment is written; the
/// segment fails, the answer is 503, and the message (the whole envelope)
/// is applied anyway. The PSP's retry is archived and is a duplicate.
async fn archive_down_answers_503_and_the_message_sent_meanwhile_applies_once(kind: Kind) {
    let t = spawn_app_tweaked(kind, with_faults(), |_| {}).await;
    t.faults().archive.only(Some(&["put"]));
    t.faults().archive.set_down(true);
    let purchase = t.sim.purchase("a503", 100);
    assert_eq!(t.post(purchase.clone()).await, 503);
    t.wait_for_status("a503", PaymentStatus::Paid).await;
    t.faults().archive.set_down(false);
    assert_eq!(t.post(purchase).await, 200);
    t.wait_until_drained().await;
    assert_eq!(t.app().stats.snapshot().duplicates, 1);
    assert_eq!(t.payment("a503").await.unwrap().version, 1);
    let report = t.reconcile().await;
    // Only the retry is archived; its event is the one recorded.
    assert_eq!((report.archived, report.in_ledger), (1, 1));
    assert!(report.is_clean(), "{:#?}", report.discrepancies);
}

/// A message whose segment failed, retried past the queue's receive limit
/// (a ledger outage): its fresh delivery is a pointer, so the worker first
/// archives the notification alone, and the pointer leads there.
async fn a_retried_message_whose_segment_failed_moves_to_a_fresh_delivery_archived_alone(
    kind: Kind,
) {
    let t = spawn_app_tweaked(kind, with_faults(), |c| c.backend.max_receives = 3).await;
    t.faults().archive.only(Some(&["put"]));
    t.faults().archive.set_down(true);
    t.faults().ledger.set_down(true);
    assert_eq!(t.post(t.sim.purchase("moved", 100)).await, 503);
    t.faults().archive.set_down(false);
    let retried = t.app().stats.snapshot().retried;
    // Receive 1 is the last of its own with three receives: moved then.
    t.wait_for_retried(retried + 2, Duration::from_secs(20))
        .await;
    let keys = t.archive_keys().await;
    assert_eq!(keys.len(), 1, "archived alone: {keys:?}");
    assert!(keys[0].ends_with("-1.ndjson"), "{keys:?}");
    t.faults().ledger.set_down(false);
    t.wait_for_status("moved", PaymentStatus::Paid).await;
    t.wait_until_drained().await;
    assert!(
        t.dlq_reasons().await.is_empty(),
        "{:?}",
        t.dlq_reasons().await
    );
    let report = t.reconcile().await;
    assert_eq!((report.archived, report.in_ledger), (1, 1));
    assert!(report.is_clean(), "{:#?}", report.discrepancies);
}

async fn an_archive_put_retried_after_its_success_is_not_a_503(kind: Kind) {
    let t = spawn_app_tweaked(kind, with_faults(), |_| {}).await;
    t.faults().archive.only(Some(&["put"]));
    t.faults().archive.set_repeat(true);
    assert_eq!(t.post(t.sim.purchase("twice", 100)).await, 200);
    t.wait_for_status("twice", PaymentStatus::Paid).await;
    assert_clean(&t).await;
}

async fn queue_down_after_archiving_answers_503_and_the_psp_retry_applies_once(kind: Kind) {
    let t = spawn_app_tweaked(kind, with_faults(), |_| {}).await;
    // The first send fails after the archive put, as if ingest died there.
    t.faults().queue.only(Some(&["send"]));
    t.faults().queue.fail_nth(1);
    assert_eq!(
        t.sim.send(t.sim.purchase("q503", 100)).await,
        Delivery::Accepted(2)
    );
    t.wait_for_status("q503", PaymentStatus::Paid).await;
    t.wait_until_drained().await;
    let report = t.reconcile().await;
    // Two archived copies of one notification: the orphan's event is the
    // retry's, recorded once.
    assert_eq!((report.archived, report.in_ledger), (2, 2));
    assert!(report.is_clean(), "{:#?}", report.discrepancies);
    assert_eq!(t.payment("q503").await.unwrap().version, 1);
}

async fn ledger_throttling_and_lost_replies_apply_everything_once(kind: Kind) {
    let t = spawn_app_tweaked(kind, with_faults(), |c| c.backend.max_receives = 4).await;
    let n = if kind == Kind::Aws { 6 } else { 30 };
    t.faults().ledger.set_error_rate(0.3);
    t.faults().ledger.set_lost_reply_rate(0.2);
    for i in 0..n {
        let q = format!("t{i}");
        t.sim.send(t.sim.refund(&q, &format!("{q}-r"), 40)).await;
        t.sim.send(t.sim.purchase(&q, 100)).await;
    }
    for i in 0..n {
        let s = t
            .wait_for_status(&format!("t{i}"), PaymentStatus::PartiallyRefunded)
            .await;
        assert_eq!((s.paid_minor, s.refunded_minor), (100, 40));
    }
    t.wait_until_drained().await;
    assert!(t.faults().ledger.injected() > 0);
    assert!(
        t.dlq_reasons().await.is_empty(),
        "{:?}",
        t.dlq_reasons().await
    );
    let report = t.reconcile().await;
    assert_eq!(report.in_ledger, 2 * n as u64);
    assert!(report.is_clean(), "{:#?}", report.discrepancies);
}

/// A store that can no longer be written (a writer thread that ended) stops
/// the whole process with an error, instead of answering 503 forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_can_no_longer_be_written_stops_the_process() {
    let mut t = spawn_app_tweaked(Kind::Local, with_faults(), |_| {}).await;
    t.faults()
        .ledger
        .set_fatal(Some("the writer of ledger.sqlite3 has stopped"));
    let app = t.app.take().unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(10), app.wait())
        .await
        .expect("the process stopped by itself");
    let error = stopped.expect_err("a fatal store is an error exit");
    assert!(error.to_string().contains("ledger.sqlite3"), "{error}");
}
