//! End to end on the embedded backend: the real ingest and worker on port 0
//! and a temporary data directory, driven by signed HTTP notifications.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use paynotify::app::{App, AppOptions};
use paynotify::simulate::{tamper, Delivery, Simulator};
use paynotify_shared::testpki::{generate, TestPki, TestPkiOptions};
use paynotify_shared::{PaymentKey, PaymentStatus};
use paynotify_worker::Hooks;
use support::app::{config_in, spawn_app, spawn_app_tweaked, spawn_app_with, TestApp, MERCHANT};
use support::Kind;

#[macro_use]
mod support;

on_both_backends!(
    a_verified_purchase_found_only_in_the_dlq_is_a_discrepancy,
    purchase_becomes_paid,
    partial_then_full_refund_becomes_refunded,
    eight_concurrent_deliveries_apply_once,
    refund_before_purchase_waits_for_it,
    tampered_and_forged_go_to_the_dlq_and_leave_the_ledger_alone,
    oversized_unknown_and_binary_requests,
    crash_between_ledger_write_and_delete_is_a_duplicate_on_redelivery,
    restart_applies_everything_queued_once,
    refund_waits_parked_longer_than_queue_retries_would_last,
);

async fn purchase_becomes_paid(kind: Kind) {
    let t = spawn_app(kind).await;
    assert_eq!(
        t.sim.send(t.sim.purchase("q1", 1500)).await,
        Delivery::Accepted(1)
    );
    let s = t.wait_for_status("q1", PaymentStatus::Paid).await;
    assert_eq!(
        (s.paid_minor, s.currency.as_str(), s.version),
        (1500, "CNY", 1)
    );
    // The archive holds the exact envelope.
    let keys = t
        .app()
        .backends
        .archive
        .list("raw/source=unionpay/", None, None)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
}

async fn partial_then_full_refund_becomes_refunded(kind: Kind) {
    let t = spawn_app(kind).await;
    t.sim.send(t.sim.purchase("q2", 1000)).await;
    t.wait_for_status("q2", PaymentStatus::Paid).await;
    t.sim.send(t.sim.refund("q2", "r1", 300)).await;
    let s = t
        .wait_for_status("q2", PaymentStatus::PartiallyRefunded)
        .await;
    assert_eq!(s.refunded_minor, 300);
    t.sim.send(t.sim.refund("q2", "r2", 700)).await;
    let s = t.wait_for_status("q2", PaymentStatus::Refunded).await;
    assert_eq!((s.paid_minor, s.refunded_minor, s.version), (1000, 1000, 3));
}

async fn eight_concurrent_deliveries_apply_once(kind: Kind) {
    let t = spawn_app(kind).await;
    let body = t.sim.purchase("q3", 500);
    let sends: Vec<_> = (0..8)
        .map(|_| {
            let (sim, body) = (t.sim.clone(), body.clone());
            tokio::spawn(async move { sim.send(body).await })
        })
        .collect();
    for s in sends {
        assert!(matches!(s.await.unwrap(), Delivery::Accepted(_)));
    }
    t.wait_until_drained().await;
    let key = PaymentKey::new("unionpay", MERCHANT, "q3");
    assert_eq!(
        t.app().backends.ledger.history(&key).await.unwrap().len(),
        1
    );
    assert_eq!(t.payment("q3").await.unwrap().version, 1);
    assert!(t.dlq_reasons().await.is_empty());
    // Seven at least: on a loaded machine a message whose processing
    // outlasts the 1 s visibility timeout is delivered again (at least once).
    let duplicates = t.app().stats.snapshot().duplicates;
    assert!(duplicates >= 7, "{duplicates}");
    let report = t.reconcile().await;
    assert_eq!(report.in_ledger, 8, "eight archived deliveries, one event");
    assert!(report.is_clean(), "{:#?}", report.discrepancies);
}

async fn refund_before_purchase_waits_for_it(kind: Kind) {
    let t = spawn_app(kind).await;
    t.sim.send(t.sim.refund("q4", "r1", 800)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(t.payment("q4").await.is_none());
    t.sim.send(t.sim.purchase("q4", 800)).await;
    let s = t.wait_for_status("q4", PaymentStatus::Refunded).await;
    assert_eq!(s.refunded_minor, 800);
    assert_eq!(t.app().stats.snapshot().parked, 1);
}

async fn tampered_and_forged_go_to_the_dlq_and_leave_the_ledger_alone(kind: Kind) {
    let t = spawn_app(kind).await;
    let forger = t.forger();
    // Ingest accepts both (it does not verify); the worker rejects them.
    assert!(matches!(
        t.sim.send(tamper(&t.sim.purchase("q5", 100))).await,
        Delivery::Accepted(_)
    ));
    assert!(matches!(
        forger.send(forger.purchase("q6", 100)).await,
        Delivery::Accepted(_)
    ));
    t.wait_until_drained().await;
    assert_eq!(
        t.dlq_reasons().await,
        vec!["bad_signature", "untrusted_certificate"]
    );
    assert!(t.payment("q5").await.is_none());
    assert!(t.payment("q6").await.is_none());
}

async fn oversized_unknown_and_binary_requests(kind: Kind) {
    let t = spawn_app(kind).await;
    // A fresh connection per request: the server closes one after a 413
    // without reading the body, and a pooled connection reused in that
    // moment fails with a broken pipe.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let big = vec![b'a'; 2 << 20];
    let r = client.post(&t.url).body(big.clone()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // Chunked (no Content-Length) is limited too.
    assert_eq!(post_chunked(t.app().addr.unwrap(), big.len()).await, 413);
    let unknown = t.url.replace("/notify/unionpay", "/notify/paypal");
    assert_eq!(
        client
            .post(&unknown)
            .body("a=1")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    // Non-UTF-8 bytes are archived exactly and dead-lettered with a reason.
    let r = client
        .post(&t.url)
        .body(vec![0xff, 0xfe, b'=', 0x00])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    t.wait_until_drained().await;
    assert_eq!(t.dlq_reasons().await, vec!["malformed_body"]);
    let admin = format!("http://{}", t.app().admin_addr.unwrap());
    assert_eq!(
        client
            .get(format!("{admin}/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        client
            .get(format!("{admin}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    let metrics = client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains("paynotify_ingest_responses_total{source=\"unionpay\",status=\"200\"} 1\n"),
        "{metrics}"
    );
    // The public listener does not serve admin endpoints.
    assert_eq!(
        client
            .get(t.url.replace("/notify/unionpay", "/healthz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
}

/// POSTs `total` bytes with `Transfer-Encoding: chunked` over a raw socket and
/// returns the status code of the answer.
async fn post_chunked(addr: std::net::SocketAddr, total: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "POST /notify/unionpay HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..total / chunk.len() {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if s.write_all(&frame).await.is_err() {
            break; // the server answered and closed early
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut buf = vec![0; 64];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n])
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

async fn crash_between_ledger_write_and_delete_is_a_duplicate_on_redelivery(kind: Kind) {
    let crash = Arc::new(AtomicBool::new(true));
    let c = crash.clone();
    // The first ack crashes (message abandoned after the ledger write); later ones do not.
    let hooks = Hooks {
        crash_after_apply: Some(Arc::new(move || c.swap(false, Ordering::SeqCst))),
        ..Hooks::default()
    };
    let t = spawn_app_with(
        kind,
        AppOptions {
            hooks,
            ..AppOptions::all()
        },
    )
    .await;
    t.sim.send(t.sim.purchase("q7", 100)).await;
    t.wait_for_status("q7", PaymentStatus::Paid).await;
    // The hook runs after the write, which a reader may see first.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while crash.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the crash hook never fired after the ledger write"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // After the 1 s visibility timeout it is redelivered, found Duplicate, and deleted.
    t.wait_until_drained().await;
    let snap = t.app().stats.snapshot();
    assert_eq!(snap.duplicates, 1);
    assert_eq!(t.payment("q7").await.unwrap().version, 1);
    let key = PaymentKey::new("unionpay", MERCHANT, "q7");
    assert_eq!(
        t.app().backends.ledger.history(&key).await.unwrap().len(),
        1
    );
    let report = t.reconcile().await;
    assert!(report.is_clean(), "{:#?}", report.discrepancies);
}

async fn restart_applies_everything_queued_once(kind: Kind) {
    // First run: ingest only, as if the workers were down.
    let mut t = spawn_app_with(
        kind,
        AppOptions {
            ingest: true,
            worker: false,
            ..AppOptions::default()
        },
    )
    .await;
    for i in 0..20 {
        let q = format!("r{i}");
        assert!(matches!(
            t.sim.send(t.sim.purchase(&q, 100 + i)).await,
            Delivery::Accepted(_)
        ));
        t.sim
            .send(t.sim.refund(&q, &format!("{q}-refund"), 10))
            .await;
    }
    assert_eq!(t.app().backends.queue.depth().await.unwrap(), 40);
    t.app.take().unwrap().stop().await.unwrap();

    // Second run on the same data directory, ingest and workers.
    let app = App::start(&t.config, AppOptions::all()).await.unwrap();
    t.app = Some(app);
    t.wait_until_drained().await;
    for i in 0..20 {
        let s = t.payment(&format!("r{i}")).await.unwrap();
        assert_eq!(
            (s.status, s.refunded_minor, s.version),
            (PaymentStatus::PartiallyRefunded, 10, 2),
            "r{i}"
        );
    }
    assert!(t.dlq_reasons().await.is_empty());
    let _ = (&t.dir, &t.pki);
}

async fn refund_waits_parked_longer_than_queue_retries_would_last(kind: Kind) {
    // With 3 receives and delays of at most 1 s, a refund cycled through the
    // queue would have been dead-lettered within about 3 s.
    let t = spawn_app_tweaked(kind, AppOptions::all(), |c| c.backend.max_receives = 3).await;
    t.sim.send(t.sim.refund("late", "r1", 100)).await;
    t.wait_until_drained().await;
    let key = PaymentKey::new("unionpay", MERCHANT, "late");
    let entry = t.app().backends.ledger.load(&key).await.unwrap();
    assert_eq!((entry.state.is_none(), entry.parked.len()), (true, 1));
    tokio::time::sleep(Duration::from_secs(4)).await;
    t.sim.send(t.sim.purchase("late", 100)).await;
    let s = t.wait_for_status("late", PaymentStatus::Refunded).await;
    assert_eq!(s.refunded_minor, 100);
    let entry = t.app().backends.ledger.load(&key).await.unwrap();
    assert!(entry.parked.is_empty());
    assert_eq!(
        t.app().backends.ledger.history(&key).await.unwrap().len(),
        2
    );
    assert!(t.dlq_reasons().await.is_empty());
    assert_eq!(t.app().stats.snapshot().retried, 0);
}

/// What only the AWS backend has: SSE on archived objects, envelopes too
/// large for SQS travelling as archive pointers, certificates in Secrets
/// Manager that rotate without a restart.
mod aws_only {
    use super::*;
    use paynotify_shared::backend::aws::Clients;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_sends_large_envelopes_as_pointers_and_splits_batches_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let b = support::backends(Kind::Aws, dir.path(), 30, 5).await;
        let (mut keys, mut locations) = (Vec::new(), Vec::new());
        // One envelope over SQS's 256 KiB, and nine of 100 KiB: ten that
        // fit no single SendMessageBatch.
        for size in std::iter::once(300 * 1024).chain(std::iter::repeat_n(100 * 1024, 9)) {
            let body = "a".repeat(size);
            let e = support::envelope(body.as_bytes());
            let (key, segment, at) = e.to_segment();
            b.archive.put(&key, &segment).await.unwrap();
            keys.push(key);
            locations.push(at);
        }
        let replayed = paynotify::replay::replay(&b, &keys, |_| {}).await.unwrap();
        assert_eq!((replayed.sent, replayed.torn), (10, 0));
        let mut pointers = 0;
        let mut received = 0;
        while received < 10 {
            for m in b.queue.receive(10, Duration::from_secs(1)).await.unwrap() {
                received += 1;
                let parsed = paynotify_shared::envelope::QueuedBody::parse(&m.body).unwrap();
                if matches!(
                    parsed,
                    paynotify_shared::envelope::QueuedBody::Pointer { .. }
                ) {
                    pointers += 1;
                    assert_eq!(parsed.location(), locations[0]);
                }
            }
        }
        assert_eq!(pointers, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn aws_init_adds_the_parked_index_to_an_older_table() {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        };
        let dir = tempfile::tempdir().unwrap();
        let mut config = paynotify_shared::config::BackendConfig::default();
        support::prepare(Kind::Aws, &mut config, dir.path()).await;
        // A table as the previous version created it: no index.
        config.aws.table = format!("{}-old", config.aws.table);
        let clients = Clients::new(&config.aws).await;
        let key = |n: &str, t| {
            KeySchemaElement::builder()
                .attribute_name(n)
                .key_type(t)
                .build()
                .unwrap()
        };
        let attr = |n: &str| {
            AttributeDefinition::builder()
                .attribute_name(n)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap()
        };
        clients
            .dynamodb
            .create_table()
            .table_name(&config.aws.table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key("pk", KeyType::Hash))
            .key_schema(key("sk", KeyType::Range))
            .attribute_definitions(attr("pk"))
            .attribute_definitions(attr("sk"))
            .send()
            .await
            .unwrap();
        paynotify_shared::backend::aws::setup::init(&config)
            .await
            .unwrap();
        let b = paynotify_shared::backend::build(&config).await.unwrap();
        assert!(b
            .ledger
            .parked_before(time::OffsetDateTime::now_utc(), 10)
            .await
            .unwrap()
            .is_empty());
        // And a second init changes nothing.
        paynotify_shared::backend::aws::setup::init(&config)
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_sends_share_send_message_batch_calls() {
        let dir = tempfile::tempdir().unwrap();
        let b = support::backends(Kind::Aws, dir.path(), 30, 5).await;
        let sends: Vec<_> = (0..100)
            .map(|i| {
                let q = b.queue.clone();
                tokio::spawn(async move { q.send(format!("{{\"n\":{i}}}").as_bytes()).await })
            })
            .collect();
        for s in sends {
            s.await.unwrap().unwrap();
        }
        let calls = b.api_calls.as_ref().unwrap().snapshot();
        let batches = calls.get("SQS.SendMessageBatch").copied().unwrap_or(0);
        assert!(
            batches <= 20,
            "100 concurrent sends took {batches} SendMessageBatch calls"
        );
        assert_eq!(calls.get("SQS.SendMessage"), None);
        assert_eq!(b.queue.depth().await.unwrap(), 100);
    }

    /// Recording an event is one `UpdateItem` of the payment's item; past
    /// the events it keeps inline, each spills to an overflow item in a
    /// transaction (after one refused update read back).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_event_is_one_read_and_one_update_later_ones_spill_and_redeliveries_only_read() {
        use paynotify_shared::backend::aws::INLINE_EVENTS;
        use paynotify_worker::{apply::apply, AckKind, Disposition};
        let dir = tempfile::tempdir().unwrap();
        let mut config = paynotify_shared::config::BackendConfig::default();
        support::prepare(Kind::Aws, &mut config, dir.path()).await;
        let b = paynotify_shared::backend::build(&config).await.unwrap();
        let calls = b.api_calls.clone().unwrap();
        let count = |name: &str| calls.snapshot().get(name).copied().unwrap_or(0);
        use aws_sdk_dynamodb::types::AttributeValue;
        let event = |id: &str, kind, minor| support::event("spill", id, kind, minor);
        // Calls since `before`: UpdateItem, TransactWriteItems, Query, GetItem.
        let names = [
            "DynamoDB.UpdateItem",
            "DynamoDB.TransactWriteItems",
            "DynamoDB.Query",
            "DynamoDB.GetItem",
        ];
        let since = |before: [u64; 4]| {
            let mut n = names.map(count);
            for (n, b) in n.iter_mut().zip(before) {
                *n -= b;
            }
            n
        };
        let before = names.map(count);
        let extra = 3;
        let events = INLINE_EVENTS + extra;
        // The payment, then refunds.
        let nth = |i: u64| {
            if i == 0 {
                event("pay", paynotify_shared::EventKind::Payment, 10_000)
            } else {
                event(&format!("r{i}"), paynotify_shared::EventKind::Refund, 100)
            }
        };
        for i in 0..events {
            assert_eq!(
                apply(b.ledger.as_ref(), "n", nth(i)).await,
                Disposition::Ack(AckKind::Applied)
            );
        }
        // INLINE_EVENTS updates that fit, then `extra` refused ones, each
        // followed by a spill transaction; one read before each write (the
        // payment's item and parked items in one query); a refused update is
        // read back once to plan its spill.
        assert_eq!(since(before), [events, extra, events, extra]);
        // A later redelivery of each event is one read and no write.
        let before = names.map(count);
        for i in 0..events {
            assert_eq!(
                apply(b.ledger.as_ref(), "again", nth(i)).await,
                Disposition::Ack(AckKind::Duplicate)
            );
        }
        assert_eq!(since(before), [0, 0, events, 0]);
        let clients = Clients::new(&config.aws).await;
        let key = event("pay", paynotify_shared::EventKind::Payment, 1).payment_key;
        let overflow = clients
            .dynamodb
            .query()
            .table_name(&config.aws.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :o)")
            .expression_attribute_values(":pk", AttributeValue::S(key.as_str().to_owned()))
            .expression_attribute_values(":o", AttributeValue::S("EVENTS#".into()))
            .send()
            .await
            .unwrap();
        assert_eq!(overflow.count() as u64, extra);
        let history = b.ledger.history(&key).await.unwrap();
        let keys: Vec<&str> = history.iter().map(|h| h.event_key.as_str()).collect();
        let expected: Vec<String> = std::iter::once("pay".to_owned())
            .chain((1..events).map(|i| format!("r{i}")))
            .collect();
        assert_eq!(keys, expected, "in the order applied");
    }

    /// A query reads the parked items, then the payment's item, each as
    /// committed: a park between the two shows its version without its
    /// event. The item names its parked events, and a view where they
    /// differ is read again, never planned on (else the payment would be
    /// applied over the parked refund, which would stay parked).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_view_of_parked_events_torn_by_a_park_is_never_planned_on() {
        use aws_sdk_dynamodb::types::AttributeValue;
        use paynotify_shared::EventKind;
        use paynotify_worker::{apply::apply, AckKind, Disposition};
        let dir = tempfile::tempdir().unwrap();
        let mut config = paynotify_shared::config::BackendConfig::default();
        support::prepare(Kind::Aws, &mut config, dir.path()).await;
        let b = paynotify_shared::backend::build(&config).await.unwrap();
        let clients = Clients::new(&config.aws).await;
        let table = config.aws.table.clone();
        let refund = support::event("torn", "torn-r", EventKind::Refund, 100);
        let key = refund.payment_key.clone();
        let pk = AttributeValue::S(key.as_str().to_owned());
        assert_eq!(
            apply(b.ledger.as_ref(), "n1", refund.clone()).await,
            Disposition::Ack(AckKind::Parked)
        );
        let item = |sk: &str| {
            clients
                .dynamodb
                .get_item()
                .table_name(&table)
                .key("pk", pk.clone())
                .key("sk", AttributeValue::S(sk.to_owned()))
                .consistent_read(true)
                .send()
        };
        let parked_sk = "PARKED#torn-r";
        let parked = item(parked_sk).await.unwrap().item.unwrap();
        let named = |state: &std::collections::HashMap<String, AttributeValue>| {
            state.get("parked").map(|p| p.as_ss().unwrap().len())
        };
        assert_eq!(named(&item("STATE").await.unwrap().item.unwrap()), Some(1));
        // What the query sees when the park commits after its read of the
        // parked items: the item (version 1) without the parked event.
        clients
            .dynamodb
            .delete_item()
            .table_name(&table)
            .key("pk", pk.clone())
            .key("sk", AttributeValue::S(parked_sk.to_owned()))
            .send()
            .await
            .unwrap();
        let err = b.ledger.load(&key).await.unwrap_err().to_string();
        assert!(err.contains("parked events never matching"), "{err}");
        // The payment is not applied on that view: a retry.
        let payment = support::event("torn", "torn-p", EventKind::Payment, 500);
        let d = apply(b.ledger.as_ref(), "n2", payment.clone()).await;
        assert!(matches!(d, Disposition::Retry(_)), "{d:?}");
        assert_eq!(b.ledger.load(&key).await.map(|e| e.version).ok(), None);
        // Whole again: the payment applies and takes the refund with it,
        // and the item names no parked event any more.
        clients
            .dynamodb
            .put_item()
            .table_name(&table)
            .set_item(Some(parked))
            .send()
            .await
            .unwrap();
        assert_eq!(
            apply(b.ledger.as_ref(), "n2", payment).await,
            Disposition::Ack(AckKind::Applied)
        );
        let entry = b.ledger.load(&key).await.unwrap();
        assert!(entry.parked.is_empty());
        let state = entry.state.unwrap();
        assert_eq!((state.paid_minor, state.refunded_minor), (500, 100));
        assert_eq!(named(&item("STATE").await.unwrap().item.unwrap()), None);
        // A history read between a spill's overflow item and the item's
        // count (here: the overflow item gone) is never short.
        use paynotify_shared::backend::aws::INLINE_EVENTS;
        for i in 0..INLINE_EVENTS {
            let r = support::event("torn", &format!("torn-r{i}"), EventKind::Refund, 1);
            assert_eq!(
                apply(b.ledger.as_ref(), "n3", r).await,
                Disposition::Ack(AckKind::Applied)
            );
        }
        assert_eq!(
            b.ledger.history(&key).await.unwrap().len() as u64,
            INLINE_EVENTS + 2
        );
        let overflow = clients
            .dynamodb
            .query()
            .table_name(&table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :o)")
            .expression_attribute_values(":pk", pk.clone())
            .expression_attribute_values(":o", AttributeValue::S("EVENTS#".into()))
            .send()
            .await
            .unwrap();
        let spilled = overflow.items()[0].get("sk").unwrap().clone();
        clients
            .dynamodb
            .delete_item()
            .table_name(&table)
            .key("pk", pk.clone())
            .key("sk", spilled)
            .send()
            .await
            .unwrap();
        let err = b.ledger.history(&key).await.unwrap_err().to_string();
        assert!(err.contains("never whole"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn archived_objects_are_encrypted_json() {
        let t = spawn_app(Kind::Aws).await;
        t.sim.send(t.sim.purchase("sse", 100)).await;
        let keys = t.archive_keys().await;
        let clients = Clients::new(&t.config.backend.aws).await;
        let head = clients
            .s3
            .head_object()
            .bucket(&t.config.backend.aws.bucket)
            .key(&keys[0])
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.server_side_encryption().map(|s| s.as_str()),
            Some("aws:kms")
        );
        assert_eq!(head.content_type(), Some("application/json"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn envelopes_over_the_sqs_limit_travel_as_archive_pointers() {
        let t = spawn_app(Kind::Aws).await;
        let body = format!("reserved={}", "x".repeat(300 * 1024));
        let r = reqwest::Client::new()
            .post(&t.url)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        t.wait_until_drained().await;
        // The worker fetched the envelope from S3 and verified the real body.
        assert_eq!(t.dlq_reasons().await, vec!["missing_field"]);
        let calls = t.app().backends.api_calls.as_ref().unwrap().snapshot();
        assert!(
            calls.get("S3.GetObject").copied().unwrap_or(0) >= 1,
            "{calls:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotated_certificates_in_secrets_manager_are_used_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let old = generate(&TestPkiOptions::default()).unwrap();
        let new = generate(&TestPkiOptions::default()).unwrap();
        let mut config = config_in(dir.path(), &old);
        support::prepare(Kind::Aws, &mut config.backend, dir.path()).await;
        let clients = Clients::new(&config.backend.aws).await;
        let trust = |pki: &TestPki| {
            serde_json::json!({ "root": pki.root_pem, "middle": pki.middle_pem }).to_string()
        };
        let arn = clients
            .secrets
            .create_secret()
            .name(format!("{}-unionpay-trust", config.backend.aws.table))
            .secret_string(trust(&old))
            .send()
            .await
            .unwrap()
            .arn
            .unwrap();
        let source = config
            .sources
            .get_mut("unionpay")
            .unwrap()
            .unionpay
            .as_mut()
            .unwrap();
        source.root_cert =
            paynotify_shared::secret::SecretRef::parse(&format!("secretsmanager:{arn}#root"))
                .unwrap();
        source.middle_cert =
            paynotify_shared::secret::SecretRef::parse(&format!("secretsmanager:{arn}#middle"))
                .unwrap();
        config.backend.aws.secrets_refresh_secs = 1;
        let app = App::start(&config, AppOptions::all()).await.unwrap();
        let url = format!("http://{}/notify/unionpay", app.addr.unwrap());
        let old_sim =
            Simulator::new(old.leaf_key_pem.as_bytes(), &old.leaf_pem, MERCHANT, &url).unwrap();
        let new_sim =
            Simulator::new(new.leaf_key_pem.as_bytes(), &new.leaf_pem, MERCHANT, &url).unwrap();
        let t = TestApp {
            app: Some(app),
            dir,
            config,
            pki: old,
            sim: old_sim.clone(),
            url,
        };

        old_sim.send(old_sim.purchase("before", 100)).await;
        t.wait_for_status("before", PaymentStatus::Paid).await;
        clients
            .secrets
            .put_secret_value()
            .secret_id(&arn)
            .secret_string(trust(&new))
            .send()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        new_sim.send(new_sim.purchase("after", 100)).await;
        t.wait_for_status("after", PaymentStatus::Paid).await;
        old_sim.send(old_sim.purchase("stale", 100)).await;
        t.wait_until_drained().await;
        assert_eq!(t.dlq_reasons().await, vec!["untrusted_certificate"]);
    }
}

/// Money that verified but never reached the ledger (dead-lettered as
/// `retries_exhausted`, a panic, a conflict) is not "accounted for": it
/// sits in the DLQ, and `reconcile` names it, exit 1. A rejected (forged)
/// notification in the DLQ still is accounted for.
async fn a_verified_purchase_found_only_in_the_dlq_is_a_discrepancy(kind: Kind) {
    let t = spawn_app_with(
        kind,
        AppOptions {
            worker: false,
            ..AppOptions::all()
        },
    )
    .await;
    assert_eq!(t.post(t.sim.purchase("dq1", 4200)).await, 200);
    assert_eq!(t.post(tamper(&t.sim.purchase("dq2", 100))).await, 200);
    // What a worker whose ledger writes kept failing would have done.
    let queue = &t.app().backends.queue;
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(queue.receive(10, Duration::from_secs(1)).await.unwrap());
    }
    for m in &got {
        queue
            .dead_letter(m, "retries_exhausted", "ledger unavailable for 6 h")
            .await
            .unwrap();
    }
    let report = t.reconcile().await;
    assert_eq!(report.dead_lettered, 1, "the tampered one: {report:#?}");
    let named: Vec<_> = report
        .discrepancies
        .iter()
        .map(|d| (d.kind, d.detail.contains("retries_exhausted")))
        .collect();
    assert_eq!(named, [("verified_dead_lettered", true)], "{report:#?}");
}
