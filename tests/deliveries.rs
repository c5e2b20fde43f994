//! Outgoing events to a merchant's receiver (docs/events.md), on the
//! embedded backend: the real ingest, workers and deliverer, and a
//! receiver that verifies signatures, deduplicates and checks the order
//! of each payment's events while it misbehaves. What the receiver ends
//! up with must be the ledger's transitions, each once, in order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use paynotify::receiver::{ledger_statuses, Receiver, View};
use paynotify_shared::ports::{DeliveryFilter, DeliveryStatus};
use paynotify_shared::{PaymentKey, PaymentStatus};
use support::app::{spawn_app_tweaked, TestApp, MERCHANT};
use support::Kind;

#[macro_use]
mod support;

const ENDPOINT: &str = "orders";

fn secret() -> String {
    support::receiver_secret()
}

/// The app, delivering to `receiver` with one-second retries.
async fn spawn(receiver: &Receiver, retries: usize) -> TestApp {
    spawn_with(receiver, retries, paynotify::app::AppOptions::all(), |_| {}).await
}

async fn spawn_with(
    receiver: &Receiver,
    retries: usize,
    options: paynotify::app::AppOptions,
    tweak: impl FnOnce(&mut paynotify_shared::config::Config),
) -> TestApp {
    let addr = receiver.addr;
    spawn_app_tweaked(Kind::Local, options, move |c| {
        let path = c.backend.data_dir.with_file_name("endpoint.secret");
        c.deliveries.retry_schedule_secs = vec![1; retries];
        c.deliveries.poll_ms = 50;
        c.deliveries.concurrency = 4;
        c.deliveries.endpoints = vec![support::loopback_endpoint(
            ENDPOINT,
            format!("http://{addr}/paynotify"),
            path,
        )];
        tweak(c);
    })
    .await
}

async fn receiver() -> Receiver {
    Receiver::start(&secret(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn key(query_id: &str) -> PaymentKey {
    PaymentKey::new("unionpay", MERCHANT, query_id)
}

/// Waits until `n` events wait in the ledger for the payment `query_id`.
async fn wait_parked(t: &TestApp, query_id: &str, n: usize) {
    let ledger = t.app().backends.ledger.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let entry = ledger.load(&key(query_id)).await.unwrap();
        if entry.parked.len() >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{query_id}: {entry:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each payment's statuses after each transition, as the ledger has them.
async fn ledger_view(t: &TestApp, ids: &[String]) -> BTreeMap<String, Vec<String>> {
    let ledger = t.app().backends.ledger.as_ref();
    ledger_statuses(ledger, ids.iter().map(|id| key(id)))
        .await
        .unwrap()
}

/// Waits until every outbox record has been delivered to the endpoint.
async fn wait_delivered(t: &TestApp, within: Duration) {
    let store = t.app().backends.deliveries.clone().unwrap();
    let deadline = Instant::now() + within;
    while !store.caught_up(ENDPOINT).await.unwrap() {
        let status = store.endpoint_status(ENDPOINT).await.unwrap();
        assert!(
            Instant::now() < deadline,
            "not delivered in {within:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Purchases, refunds after them, and refunds before their purchase (one
/// write then applies three events).
async fn traffic(t: &TestApp, prefix: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        if i % 3 == 0 {
            t.sim.send(t.sim.refund(id, &format!("{id}-r1"), 300)).await;
            t.sim.send(t.sim.refund(id, &format!("{id}-r2"), 200)).await;
            // Both parked before the purchase is sent: otherwise a worker
            // can apply the purchase while another still holds a refund,
            // and the refund comes in a write of its own.
            wait_parked(t, id, 2).await;
        }
        t.sim.send(t.sim.purchase(id, 1000)).await;
        if i % 3 == 1 {
            t.sim
                .send(t.sim.refund(id, &format!("{id}-r1"), 1000))
                .await;
        }
    }
    for (i, id) in ids.iter().enumerate() {
        let status = match i % 3 {
            0 => PaymentStatus::PartiallyRefunded,
            1 => PaymentStatus::Refunded,
            _ => PaymentStatus::Paid,
        };
        t.wait_for_status(id, status).await;
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_reaches_a_misbehaving_receiver_once_in_order() {
    let mut r = receiver().await;
    // 500s first, then answers lost after the receiver processed them
    // (each redelivered with the same id), then one past the timeout.
    r.set(|b| {
        b.fail = 3;
        b.drop_after_processing = 2;
        b.slow = 1;
        b.slow_for = Duration::from_millis(1500);
    });
    let t = spawn(&r, 10).await;
    let mut ids = traffic(&t, "a", 9).await;
    wait_delivered(&t, Duration::from_secs(60)).await;

    // The receiver is down for a while: nothing is lost, nothing reordered.
    r.stop();
    ids.extend(traffic(&t, "b", 3).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let store = t.app().backends.deliveries.clone().unwrap();
    let down = store.endpoint_status(ENDPOINT).await.unwrap();
    assert!(down.failing_since.is_some() && down.pending > 0, "{down:?}");
    r.restart().await.unwrap();
    wait_delivered(&t, Duration::from_secs(60)).await;

    let view = r.view();
    assert_eq!(view.rejected, Vec::<String>::new());
    assert_eq!(view.order_violations, Vec::<String>::new());
    assert!(
        view.duplicates >= 2,
        "answers lost: {} duplicates",
        view.duplicates
    );
    let ledger = ledger_view(&t, &ids).await;
    assert_eq!(view.statuses(), ledger);
    // One event per transition: the outbox holds nothing else.
    let transitions: usize = ledger.values().map(Vec::len).sum();
    let outbox = store.outbox_after(0, 100_000).await.unwrap();
    assert_eq!(outbox.len(), transitions);
    assert_eq!(view.events.len(), transitions);
    // A payment whose refunds were parked before it: three events of one
    // write, told apart by their sequence.
    let a0 = &view.by_payment[key("a0").as_str()];
    let positions: Vec<_> = a0
        .iter()
        .map(|e| {
            (
                e["payment"]["version"].as_u64(),
                e["payment"]["sequence"].as_u64(),
            )
        })
        .collect();
    assert_eq!(positions.len(), 3, "{a0:?}");
    assert!(positions.iter().all(|p| p.0 == positions[0].0));
    assert_eq!(
        a0.iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [
            "payment.paid",
            "payment.partially_refunded",
            "payment.partially_refunded"
        ]
    );
    assert_eq!(a0[2]["payment"]["refunded"], "5.00");
    assert_eq!(a0[2]["payment"]["previous_status"], "PARTIALLY_REFUNDED");

    // What /metrics says of it: attempts by outcome, and the lag.
    let metrics = t.app().metrics.render(None).await;
    for line in [
        "paynotify_delivery_attempts_total{endpoint=\"orders\",outcome=\"delivered\"}",
        "paynotify_delivery_attempts_total{endpoint=\"orders\",outcome=\"failed\"}",
        "paynotify_delivery_lag_seconds_count{endpoint=\"orders\"}",
        // The deliveries store is metered as every port is.
        "paynotify_backend_call_duration_seconds_count{port=\"deliveries\",operation=\"claim\"}",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

    // The project's own verifier accepted every request; the Standard
    // Webhooks reference library for Python must too, and every body must
    // validate against the published schema.
    check_with_python(&view);

    // Reconcile accounts for every event; a lost delivery or a lost event
    // is a discrepancy.
    let report = t.reconcile().await;
    assert!(report.is_clean(), "{:?}", report.discrepancies);
    assert_eq!(report.deliveries.delivered as usize, transitions);
    let db = rusqlite::Connection::open(t.config.backend.data_dir.join("ledger.sqlite3")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute(
        "DELETE FROM deliveries WHERE seq = (SELECT MIN(seq) FROM deliveries)",
        [],
    )
    .unwrap();
    db.execute(
        "DELETE FROM outbox WHERE seq = (SELECT MAX(seq) FROM outbox)",
        [],
    )
    .unwrap();
    let report = t.reconcile().await;
    let kinds: Vec<_> = report.discrepancies.iter().map(|d| d.kind).collect();
    assert_eq!(kinds.len(), 2, "{:?}", report.discrepancies);
    assert!(kinds.contains(&"delivery_missing") && kinds.contains(&"event_missing"));
}

/// Runs tests/fixtures/check_deliveries.py over every request received.
fn check_with_python(view: &View) {
    let python = std::env::var("PAYNOTIFY_TEST_PYTHON").expect(
        "PAYNOTIFY_TEST_PYTHON: the tools venv's python (scripts/tools.sh), with standardwebhooks and jsonschema",
    );
    let dir = tempfile::tempdir().unwrap();
    let requests: Vec<_> = view
        .requests
        .iter()
        .map(|(headers, body)| {
            serde_json::json!({
                "headers": headers.iter().cloned().collect::<BTreeMap<_, _>>(),
                "body": String::from_utf8(body.clone()).unwrap(),
            })
        })
        .collect();
    let path = dir.path().join("requests.json");
    std::fs::write(&path, serde_json::to_vec(&requests).unwrap()).unwrap();
    let out = std::process::Command::new(python)
        .arg("tests/fixtures/check_deliveries.py")
        .arg(&path)
        .arg(secret())
        .arg("docs/events.schema.json")
        .arg("docs/events.md")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{} verified", requests.len())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_delivery_holds_its_payment_s_later_events_until_resent() {
    let r = receiver().await;
    r.set(|b| b.fail = 2);
    // Two attempts in all: both answered 500.
    let t = spawn(&r, 1).await;
    let store = t.app().backends.deliveries.clone().unwrap();
    t.sim.send(t.sim.purchase("d1", 1000)).await;
    t.wait_for_status("d1", PaymentStatus::Paid).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.endpoint_status(ENDPOINT).await.unwrap().dead_lettered == 0 {
        assert!(Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The refund's event waits behind the dead letter: the receiver, now
    // answering, must not hear `partially_refunded` before `paid`.
    t.sim.send(t.sim.refund("d1", "d1-r", 400)).await;
    t.wait_for_status("d1", PaymentStatus::PartiallyRefunded)
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(r.view().events.is_empty(), "{:?}", r.view().events);
    let listed = store
        .list(&DeliveryFilter {
            endpoint: Some(ENDPOINT.into()),
            limit: 10,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    let statuses: Vec<_> = listed.iter().map(|d| d.status).collect();
    assert_eq!(
        statuses,
        [DeliveryStatus::DeadLettered, DeliveryStatus::Pending]
    );
    assert_eq!(listed[0].attempts, 2);
    assert!(listed[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("HTTP 500"));

    // Resent: both arrive, in order.
    let now = time::OffsetDateTime::now_utc();
    assert!(store
        .resend(ENDPOINT, &listed[0].record.event_id, now)
        .await
        .unwrap());
    assert!(!store.resend(ENDPOINT, "evt_none", now).await.unwrap());
    wait_delivered(&t, Duration::from_secs(30)).await;
    let view = r.view();
    assert_eq!(
        view.statuses()[key("d1").as_str()],
        ["PAID", "PARTIALLY_REFUNDED"]
    );
    assert_eq!(view.order_violations, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_longer_than_allowed_is_disabled() {
    let r = receiver().await;
    r.set(|b| b.fail = u32::MAX);
    let options = paynotify::app::AppOptions::all();
    let t = spawn_with(&r, 100, options, |c| c.deliveries.disable_after_secs = 2).await;
    let store = t.app().backends.deliveries.clone().unwrap();
    t.sim.send(t.sim.purchase("l1", 1000)).await;
    t.wait_for_status("l1", PaymentStatus::Paid).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let why = loop {
        if let Some(why) = store.endpoint_status(ENDPOINT).await.unwrap().disabled {
            break why;
        }
        assert!(Instant::now() < deadline, "never disabled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(why.contains("every attempt failed since"), "{why}");
    // Its event waits, still pending, not dead-lettered.
    let status = store.endpoint_status(ENDPOINT).await.unwrap();
    assert_eq!((status.pending, status.dead_lettered), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_answers_410_is_disabled_and_its_events_wait() {
    let r = receiver().await;
    r.set(|b| b.gone = true);
    let t = spawn(&r, 10).await;
    let store = t.app().backends.deliveries.clone().unwrap();
    t.sim.send(t.sim.purchase("g1", 1000)).await;
    t.wait_for_status("g1", PaymentStatus::Paid).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while store
        .endpoint_status(ENDPOINT)
        .await
        .unwrap()
        .disabled
        .is_none()
    {
        assert!(Instant::now() < deadline, "never disabled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let requests = r.view().requests.len();
    r.set(|b| b.gone = false);
    // Nothing is sent while it is disabled, though its retry is due.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(r.view().requests.len(), requests);
    let status = store.endpoint_status(ENDPOINT).await.unwrap();
    assert_eq!(status.pending, 1);
    assert!(status.disabled.unwrap().contains("410"));
    store.set_disabled(ENDPOINT, None).await.unwrap();
    wait_delivered(&t, Duration::from_secs(30)).await;
    assert_eq!(r.view().statuses()[key("g1").as_str()], ["PAID"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_deliveries_store_delays_but_loses_and_reorders_nothing() {
    let r = receiver().await;
    let options = paynotify::app::AppOptions {
        faults: true,
        ..paynotify::app::AppOptions::all()
    };
    let t = spawn_with(&r, 20, options, |_| {}).await;
    // Reads and writes of the outbox and the deliveries fail, or succeed
    // with the reply lost: a claim whose deliveries never reached the
    // deliverer, an attempt delivered but not recorded (sent again, same
    // id), a cursor moved without the deliverer knowing.
    let faults = &t.faults().deliveries;
    faults.set_error_rate(0.2);
    faults.set_lost_reply_rate(0.3);
    let ids = traffic(&t, "f", 9).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    faults.set_error_rate(0.0);
    faults.set_lost_reply_rate(0.0);
    wait_delivered(&t, Duration::from_secs(60)).await;
    let view = r.view();
    assert_eq!(view.rejected, Vec::<String>::new());
    assert_eq!(view.order_violations, Vec::<String>::new());
    assert_eq!(view.statuses(), ledger_view(&t, &ids).await);
    let report = t.reconcile().await;
    assert!(report.is_clean(), "{:?}", report.discrepancies);
}

#[tokio::test]
async fn endpoints_on_a_backend_without_an_outbox_refuse_to_start() {
    // A backend with neither an outbox nor a webhook line: a deliverer
    // there would deliver nothing, silently. It refuses to start instead.
    let dir = tempfile::tempdir().unwrap();
    let mut backends = support::backends(Kind::Local, dir.path(), 30, 5).await;
    backends.deliveries = None;
    let config = paynotify_shared::config::Config::from_toml(
        "[[deliveries.endpoints]]\nname = \"orders\"\nurl = \"https://orders.example/hook\"\n\
         secrets = [\"file:orders.whsec\"]\n",
        dir.path(),
    )
    .unwrap();
    let started = paynotify_deliver::start(
        &config,
        &backends,
        &paynotify_shared::metrics::Metrics::new(None),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await;
    assert!(
        matches!(started, Err(paynotify_deliver::DeliverError::NoOutbox)),
        "{:?}",
        started.err()
    );

    // With an outbox, an endpoint whose secret cannot be read, or is not a
    // whsec_ key, stops the start with its name.
    let with_outbox = support::backends(Kind::Local, dir.path(), 30, 5).await;
    for content in [None, Some("not base64!")] {
        if let Some(c) = content {
            std::fs::write(dir.path().join("orders.whsec"), c).unwrap();
        }
        let err = paynotify_deliver::start(
            &config,
            &with_outbox,
            &paynotify_shared::metrics::Metrics::new(None),
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .expect_err("refused");
        assert!(err.to_string().contains("\"orders\""), "{err}");
    }
}
