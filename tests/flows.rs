//! UnionPay flows end to end, in the order the PSP sends them and in
//! others: pre-authorizations with completions, refunds and voids that name
//! the completion's own id, pre-auth voids, and early events in random
//! order. Then `reconcile` on a ledger and an archive corrupted on purpose.

use std::time::Duration;

use paynotify::app::AppOptions;
use paynotify_shared::{PaymentKey, PaymentStatus};
use rand::seq::SliceRandom;
use support::app::{spawn_app, spawn_app_tweaked, MERCHANT};
use support::Kind;

#[macro_use]
mod support;

on_both_backends!(
    refund_and_void_of_a_completion_apply_through_its_alias,
    completion_refund_before_completion_before_preauth,
    preauth_void_only_on_an_uncaptured_authorization,
    early_refunds_in_random_order_wait_for_their_purchase,
    a_refund_parked_past_the_alert_bound_is_reported,
    a_depth_read_that_missed_the_queue_does_not_make_a_notification_missing,
    an_in_process_answer_then_the_final_one_makes_the_payment_paid,
);

/// UnionPay answers "in process" (respCode 03) first, then sends the final
/// success: recorded without a state, then paid. On DynamoDB the first
/// write left the payment's item at version 0, and every later write on
/// version 0 was refused until the retries ran out (dead-lettered, the
/// payment never paid).
async fn an_in_process_answer_then_the_final_one_makes_the_payment_paid(kind: Kind) {
    let t = spawn_app(kind).await;
    t.sim
        .send(t.sim.purchase_with("ip1", 700, &[("respCode", "03")]))
        .await;
    t.wait_until_drained().await;
    assert_eq!(t.payment("ip1").await, None, "in process: no state yet");
    t.sim.send(t.sim.purchase("ip1", 700)).await;
    let paid = t.wait_for_status("ip1", PaymentStatus::Paid).await;
    assert_eq!((paid.paid_minor, paid.version), (700, 1));
    t.wait_until_drained().await;
    assert!(
        t.dlq_reasons().await.is_empty(),
        "{:?}",
        t.dlq_reasons().await
    );
}

/// `reconcile` reads the queue's depth before its scan to tell a
/// notification still queued ("unsettled") from a lost one ("missing"); a
/// count can miss messages that are there (SQS's are approximate), so it
/// reads again before calling any missing.
async fn a_depth_read_that_missed_the_queue_does_not_make_a_notification_missing(kind: Kind) {
    // Ingest only: the notification stays on the queue.
    let options = AppOptions {
        ingest: true,
        worker: false,
        faults: true,
        ..AppOptions::default()
    };
    let t = spawn_app_tweaked(kind, options, |_| {}).await;
    t.sim.send(t.sim.purchase("q1", 100)).await;
    let kinds = |r: &paynotify::reconcile::Report| {
        r.discrepancies.iter().map(|d| d.kind).collect::<Vec<_>>()
    };
    t.faults().queue.miss_depth(1);
    let report = t.reconcile().await;
    assert_eq!(
        kinds(&report),
        vec!["unsettled"],
        "{:#?}",
        report.discrepancies
    );
    assert_eq!(report.queue_depth, 1);
    // Both reads wrong: the queue looks empty, and nothing tells the
    // message from a lost one.
    t.faults().queue.miss_depth(2);
    let report = t.reconcile().await;
    assert_eq!(
        kinds(&report),
        vec!["missing"],
        "{:#?}",
        report.discrepancies
    );
}

async fn refund_and_void_of_a_completion_apply_through_its_alias(kind: Kind) {
    let t = spawn_app(kind).await;
    t.sim.send(t.sim.preauth("pa1", 1000)).await;
    t.wait_for_status("pa1", PaymentStatus::Authorized).await;
    t.sim.send(t.sim.follow_up("03", "pa1", "pc1", 800)).await;
    t.wait_for_status("pa1", PaymentStatus::Paid).await;
    // UnionPay names the completion's own queryId in a refund's origQryId.
    t.sim.send(t.sim.refund("pc1", "pr1", 300)).await;
    let s = t
        .wait_for_status("pa1", PaymentStatus::PartiallyRefunded)
        .await;
    assert_eq!(
        (s.authorized_minor, s.paid_minor, s.refunded_minor),
        (1000, 800, 300)
    );
    // A second pre-auth, completed, then the completion voided (33).
    t.sim.send(t.sim.preauth("pa2", 500)).await;
    t.sim.send(t.sim.follow_up("03", "pa2", "pc2", 500)).await;
    t.wait_for_status("pa2", PaymentStatus::Paid).await;
    t.sim.send(t.sim.follow_up("33", "pc2", "pv2", 500)).await;
    t.wait_for_status("pa2", PaymentStatus::Voided).await;
    t.wait_until_drained().await;
    assert!(
        t.dlq_reasons().await.is_empty(),
        "{:?}",
        t.dlq_reasons().await
    );
    let alias = t
        .app()
        .backends
        .ledger
        .load(&PaymentKey::new("unionpay", MERCHANT, "pc1"))
        .await
        .unwrap();
    assert_eq!(
        alias.alias_of,
        Some(PaymentKey::new("unionpay", MERCHANT, "pa1"))
    );
    let report = t.reconcile().await;
    assert!(report.is_clean(), "{:#?}", report.discrepancies);
}

async fn completion_refund_before_completion_before_preauth(kind: Kind) {
    let t = spawn_app(kind).await;
    t.sim.send(t.sim.refund("pc3", "pr3", 200)).await;
    t.sim.send(t.sim.follow_up("03", "pa3", "pc3", 700)).await;
    t.wait_until_drained().await;
    assert!(t.payment("pa3").await.is_none());
    t.sim.send(t.sim.preauth("pa3", 900)).await;
    let s = t
        .wait_for_status("pa3", PaymentStatus::PartiallyRefunded)
        .await;
    assert_eq!((s.paid_minor, s.refunded_minor), (700, 200));
    t.wait_until_drained().await;
    let ledger = &t.app().backends.ledger;
    for r in ["pa3", "pc3"] {
        let e = ledger
            .load(&PaymentKey::new("unionpay", MERCHANT, r))
            .await
            .unwrap();
        assert!(e.parked.is_empty(), "{r}: {:?}", e.parked);
    }
    assert_eq!(
        ledger
            .history(&PaymentKey::new("unionpay", MERCHANT, "pa3"))
            .await
            .unwrap()
            .len(),
        3
    );
    let report = t.reconcile().await;
    assert!(report.is_clean(), "{:#?}", report.discrepancies);
}

async fn preauth_void_only_on_an_uncaptured_authorization(kind: Kind) {
    let t = spawn_app(kind).await;
    t.sim.send(t.sim.preauth("pa4", 400)).await;
    t.wait_for_status("pa4", PaymentStatus::Authorized).await;
    t.sim.send(t.sim.follow_up("32", "pa4", "pv4", 400)).await;
    t.wait_for_status("pa4", PaymentStatus::Voided).await;
    t.sim.send(t.sim.preauth("pa5", 400)).await;
    t.sim.send(t.sim.follow_up("03", "pa5", "pc5", 400)).await;
    t.wait_for_status("pa5", PaymentStatus::Paid).await;
    t.sim.send(t.sim.follow_up("32", "pa5", "pv5", 400)).await;
    t.wait_until_drained().await;
    assert_eq!(t.dlq_reasons().await, vec!["conflict"]);
    let dlq = t.app().backends.dead_letters.dlq_list(10).await.unwrap();
    assert!(dlq[0].error.contains("uncaptured"), "{}", dlq[0].error);
    assert_eq!(t.payment("pa5").await.unwrap().status, PaymentStatus::Paid);
}

async fn early_refunds_in_random_order_wait_for_their_purchase(kind: Kind) {
    let t = spawn_app_tweaked(kind, AppOptions::all(), |c| c.worker.concurrency = 4).await;
    let mut bodies = vec![t.sim.purchase("mix", 1000)];
    for (i, amount) in [100, 200, 300, 400].iter().enumerate() {
        bodies.push(t.sim.refund("mix", &format!("mix-r{i}"), *amount));
    }
    bodies.shuffle(&mut rand::rng());
    // Sent one after another, each a duplicate delivery too.
    for body in bodies {
        t.sim.send(body.clone()).await;
        t.sim.send(body).await;
    }
    let s = t.wait_for_status("mix", PaymentStatus::Refunded).await;
    assert_eq!(s.refunded_minor, 1000);
    t.wait_until_drained().await;
    assert!(t.dlq_reasons().await.is_empty());
    let report = t.reconcile().await;
    assert!(report.is_clean(), "{:#?}", report.discrepancies);
}

async fn a_refund_parked_past_the_alert_bound_is_reported(kind: Kind) {
    let t = spawn_app_tweaked(kind, AppOptions::all(), |c| c.worker.parked_alert_secs = 1).await;
    t.sim.send(t.sim.refund("orphan", "orphan-r", 100)).await;
    t.wait_until_drained().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metrics = reqwest::get(format!("http://{}/metrics", t.app().admin_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("paynotify_parked_events_overdue 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("paynotify_parked_events_conflicted 0\n"),
        "{metrics}"
    );
    let report = t.reconcile().await;
    assert_eq!(report.parked, 1);
    let kinds: Vec<&str> = report.discrepancies.iter().map(|d| d.kind).collect();
    assert_eq!(kinds, vec!["parked_overdue"], "{:#?}", report.discrepancies);
}

/// `reconcile` must be able to fail: a corrupted ledger and an archived
/// notification that never reached the queue are each reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reports_a_corrupted_ledger_and_an_unprocessed_archive_object() {
    let t = spawn_app(Kind::Local).await;
    t.sim.send(t.sim.purchase("c1", 1000)).await;
    t.sim.send(t.sim.refund("c1", "c1-r", 300)).await;
    t.sim.send(t.sim.purchase("c2", 500)).await;
    t.wait_for_status("c1", PaymentStatus::PartiallyRefunded)
        .await;
    t.wait_for_status("c2", PaymentStatus::Paid).await;
    t.wait_until_drained().await;
    assert!(t.reconcile().await.is_clean());

    // An archived notification that no worker ever saw.
    let mut envelope = support::archived(t.app().backends.archive.as_ref())
        .await
        .remove(0)
        .1;
    let body = t.sim.purchase("c3", 700);
    envelope.id = ulid::Ulid::new().to_string();
    envelope.body_sha256 = hex_sha256(body.as_bytes());
    envelope.body = Some(body);
    let (key, segment, _) = envelope.to_segment();
    t.app().backends.archive.put(&key, &segment).await.unwrap();
    // A refunded amount changed behind the ledger's back.
    let db = rusqlite::Connection::open(t.config.backend.data_dir.join("ledger.sqlite3")).unwrap();
    db.execute(
        "UPDATE payments SET refunded_minor = 0 WHERE payment_key LIKE '%#c1'",
        [],
    )
    .unwrap();
    // An applied event deleted.
    db.execute("DELETE FROM events WHERE payment_key LIKE '%#c2'", [])
        .unwrap();
    drop(db);
    tokio::time::sleep(Duration::from_millis(50)).await;

    let report = t.reconcile().await;
    let mut kinds: Vec<&str> = report.discrepancies.iter().map(|d| d.kind).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        vec!["missing", "missing", "state_mismatch"],
        "{:#?}",
        report.discrepancies
    );
    assert!(report
        .discrepancies
        .iter()
        .any(|d| d.kind == "missing" && d.subject == envelope.id));
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A crash mid-write leaves a torn segment that ingest never acknowledged:
/// counted apart, not a discrepancy, and skipped by replay with a warning;
/// garbage in a whole segment is a discrepancy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_and_replay_skip_torn_segments_and_flag_garbage() {
    let t = spawn_app(Kind::Local).await;
    t.sim.send(t.sim.purchase("w1", 100)).await;
    t.wait_for_status("w1", PaymentStatus::Paid).await;
    t.wait_until_drained().await;
    let archive = &t.app().backends.archive;
    let (_, envelope) = support::archived(archive.as_ref()).await.remove(0);
    // Two notifications written as one segment, the second cut short.
    let (mut one, mut two) = (envelope.clone(), envelope.clone());
    one.id = ulid::Ulid::new().to_string();
    two.id = ulid::Ulid::new().to_string();
    let key = paynotify_shared::segment::segment_key(&envelope.partition(), &one.id, 2);
    let (whole, _) = paynotify_shared::segment::build(
        &key,
        [one.to_json().as_slice(), two.to_json().as_slice()],
    );
    let torn = &whole[..whole.len() - 20];
    archive.put(&key, torn).await.unwrap();
    let report = t.reconcile().await;
    assert_eq!((report.partial_writes, report.archived), (1, 1));
    assert!(report.is_clean(), "{:#?}", report.discrepancies);
    let keys = archive.list("raw/", None, None).await.unwrap();
    assert_eq!(keys.len(), 2);
    let replayed = paynotify::replay::replay(&t.app().backends, &keys, |_| {})
        .await
        .unwrap();
    assert_eq!((replayed.sent, replayed.torn), (1, 1));
    t.wait_until_drained().await;
    let garbage = paynotify_shared::segment::segment_key(
        &envelope.partition(),
        &ulid::Ulid::new().to_string(),
        1,
    );
    archive.put(&garbage, b"not json at all\n").await.unwrap();
    let report = t.reconcile().await;
    let kinds: Vec<&str> = report.discrepancies.iter().map(|d| d.kind).collect();
    assert_eq!(kinds, vec!["unreadable"]);
    assert_eq!(report.discrepancies[0].subject, format!("{garbage}#0+15"));
}

/// `paynotify parked list` and `paynotify reconcile` from the command line,
/// on the data directory of a running process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_list_and_reconcile_commands() {
    let t = spawn_app(Kind::Local).await;
    t.sim.send(t.sim.refund("cli", "cli-r", 100)).await;
    t.wait_until_drained().await;
    let config = t.dir.path().join("paynotify.toml");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_paynotify"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .arg("--json")
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), json)
    };
    let (code, parked) = run(&["parked", "list"]);
    assert_eq!(code, Some(0), "{parked}");
    assert_eq!(parked.as_array().unwrap().len(), 1);
    assert_eq!(parked[0]["event"]["kind"], "refund");
    assert!(parked[0]["payment_key"].as_str().unwrap().ends_with("#cli"));
    let (code, report) = run(&["reconcile"]);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(
        (report["archived"].as_u64(), report["parked"].as_u64()),
        (Some(1), Some(1))
    );
}

/// The simulator's follow-ups (`demo`/`simulate --follow-up-secs`): the
/// other deliveries of a duplicated notification and the refunds come after
/// the delay, each redelivery is acknowledged as a duplicate, and the ledger
/// is what the simulation expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mix_with_follow_ups_sends_them_late_and_the_ledger_matches() {
    use paynotify::simulate::{run_mix, Mix};
    let t = spawn_app(Kind::Local).await;
    let delay = Duration::from_millis(300);
    let mix = Mix {
        count: 6,
        rate: 0.0,
        duplicates: 1.0,
        tamper: 0.0,
        refunds: 1.0,
        voids: 0.0,
        early_refunds: 0.0,
        concurrency: 6,
        follow_up: Some(delay),
    };
    let started = std::time::Instant::now();
    let report = run_mix(t.sim.clone(), None, &mix).await;
    assert!(started.elapsed() >= delay);
    assert_eq!((report.failed, report.duplicate_deliveries), (0, 42));
    t.wait_until_drained().await;
    assert_eq!(t.app().stats.snapshot().duplicates, 42);
    let reconciled = t.reconcile().await;
    let rows = report.check(&reconciled.ledger, &Default::default());
    assert!(rows.iter().all(|r| r.matches()), "{rows:?}");
}

/// A torn segment whose complete line is a notification that was applied,
/// and no whole copy of its bytes archived anywhere (its own segment lost
/// after it was acknowledged, or the PSP's retry never came): the archive
/// lost it, `archive_torn`, not a benign partial write. It was counted as
/// one and reconcile was clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_segment_holding_the_only_copy_of_an_applied_notification_is_a_discrepancy() {
    let t = spawn_app(Kind::Local).await;
    t.sim.send(t.sim.purchase("w9", 100)).await;
    t.wait_for_status("w9", PaymentStatus::Paid).await;
    t.wait_until_drained().await;
    let archive = &t.app().backends.archive;
    let (at, envelope) = support::archived(archive.as_ref()).await.remove(0);
    // Its segment now holds it and a second line cut short.
    let mut other = envelope.clone();
    other.id = ulid::Ulid::new().to_string();
    other.body = Some("x=1".into());
    other.body_sha256 = hex_sha256(b"x=1");
    let key = paynotify_shared::segment::segment_key(&envelope.partition(), &envelope.id, 2);
    let (whole, _) = paynotify_shared::segment::build(
        &key,
        [envelope.to_json().as_slice(), other.to_json().as_slice()],
    );
    std::fs::remove_file(t.dir.path().join("data/archive").join(&at.key)).unwrap();
    archive.put(&key, &whole[..whole.len() - 5]).await.unwrap();
    let report = t.reconcile().await;
    let found: Vec<_> = report
        .discrepancies
        .iter()
        .map(|d| (d.kind, d.subject.as_str()))
        .collect();
    assert_eq!(
        found,
        [("archive_torn", envelope.id.as_str())],
        "{report:#?}"
    );
    assert_eq!(report.partial_writes, 1);
}
