//! The operator's console in a real browser: Debian's Chromium, driven by
//! Playwright for Python (scripts/requirements-tools.txt) pointed at the
//! system browser (`PAYNOTIFY_TEST_CHROMIUM`, default /usr/bin/chromium;
//! nothing is downloaded). This test prepares a running paynotify with
//! something on every page (a payment whose order id holds `<script>`, a
//! payment with a refund, a dead letter a redrive can apply, a parked
//! refund, a delivery whose retries are spent), runs
//! `tests/browser/console.py` against it, and then checks what the
//! browser's clicks did: the payment applied, the parked event resolved,
//! the delivery received, each action recorded in the archive. The
//! screenshots go to `PAYNOTIFY_CONSOLE_SCREENSHOTS` (default
//! target/console-screenshots; docs/console/ holds the committed ones).
//! Fails, never skips, without the Python or the browser.

use std::time::{Duration, Instant};

use paynotify::app::AppOptions;
use paynotify::receiver::Receiver;
use paynotify_shared::config::ApiScope;
use paynotify_shared::PaymentStatus;
use serde_json::{json, Value};
use support::app::{spawn_app_tweaked, MERCHANT};
use support::Kind;

#[macro_use]
mod support;

const READER: &str = "read-key-0123456789abcdef0123456789abcdef";
const OPERATOR: &str = "operate-key-0123456789abcdef0123456789abcd";
/// The order id of a payment whose notification is hostile.
const HOSTILE_ORDER: &str = "<script>alert(1)</script>";

fn python() -> String {
    std::env::var("PAYNOTIFY_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "PAYNOTIFY_TEST_PYTHON is not set: tests/console.rs drives Chromium with Playwright \
             for Python (scripts/requirements-tools.txt). Run scripts/test.sh, or set it to such \
             a Python."
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_works_through_the_console_in_chromium() {
    let chromium =
        std::env::var("PAYNOTIFY_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).is_file(),
        "no browser at {chromium}: install Debian's chromium (scripts/test.sh does), or set \
         PAYNOTIFY_TEST_CHROMIUM"
    );
    let mut receiver = Receiver::start(&support::receiver_secret(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    receiver.stop();
    let addr = receiver.addr;
    let t = spawn_app_tweaked(
        Kind::Local,
        AppOptions {
            faults: true,
            ..AppOptions::all()
        },
        move |c| {
            c.backend.max_receives = 3;
            c.worker.retry_for_secs = 2;
            let dir = c.backend.data_dir.parent().unwrap().to_path_buf();
            support::api_keys(
                c,
                &[
                    ("dashboard", ApiScope::Read, READER),
                    ("oncall", ApiScope::Operate, OPERATOR),
                ],
            );
            c.deliveries.retry_schedule_secs = vec![1];
            c.deliveries.poll_ms = 50;
            c.deliveries.endpoints = vec![support::loopback_endpoint(
                "orders",
                format!("http://{addr}/paynotify"),
                dir.join("endpoint.secret"),
            )];
        },
    )
    .await;

    // A payment whose order id is markup; one with a refund.
    t.sim
        .send(
            t.sim
                .purchase_with("c1", 1200, &[("orderId", HOSTILE_ORDER)]),
        )
        .await;
    t.sim.send(t.sim.purchase("c2", 4200)).await;
    t.wait_for_status("c2", PaymentStatus::Paid).await;
    t.sim.send(t.sim.refund("c2", "c2-r1", 1000)).await;
    t.wait_for_status("c2", PaymentStatus::PartiallyRefunded)
        .await;
    t.wait_for_status("c1", PaymentStatus::Paid).await;
    // A purchase the ledger could not take until its retries ran out.
    let gone = paynotify_shared::PaymentKey::new("unionpay", MERCHANT, "c3");
    t.faults().ledger.only_payment(Some(gone));
    t.faults().ledger.set_down(true);
    t.sim.send(t.sim.purchase("c3", 700)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while t.dlq_reasons().await.is_empty() {
        assert!(Instant::now() < deadline, "c3 was never dead-lettered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.faults().ledger.set_down(false);
    t.faults().ledger.only_payment(None);
    // A refund for a payment that never comes, and one whose payment is
    // late (to set aside).
    t.sim.send(t.sim.refund("c4", "c4-r1", 300)).await;
    t.sim.send(t.sim.refund("c5", "c5-r1", 200)).await;
    // The deliveries to the stopped receiver: retries spent, held.
    let store = paynotify::views::deliveries::store_of(&t.app().backends).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = loop {
        let held = store
            .list(&paynotify_shared::ports::DeliveryFilter {
                status: Some(paynotify_shared::ports::DeliveryStatus::DeadLettered),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        let parked = t.parked_now().await;
        if !held.is_empty() && parked.len() >= 2 {
            break held;
        }
        assert!(Instant::now() < deadline, "never held and parked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    receiver.restart().await.unwrap();
    let report = t.reconcile().await;
    paynotify::reconcile::record::record(&t.app().backends, &report)
        .await
        .unwrap();

    let screenshots = std::env::var("PAYNOTIFY_CONSOLE_SCREENSHOTS").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/console-screenshots").into()
    });
    let plan = json!({
        "base": format!("http://{}", t.app().api_addr.expect("the API listens")),
        "reader": READER,
        "operator": OPERATOR,
        "chromium": chromium,
        "screenshots": screenshots,
        "hostile_order": HOSTILE_ORDER,
        "order": "oc2",
        "merchant": MERCHANT,
        "redrive_reason": "retries_exhausted",
        "redriven_payment": "c3",
        "parked_payment": format!("unionpay#{MERCHANT}#c4"),
        "set_aside_payment": format!("unionpay#{MERCHANT}#c5"),
        "resend_event": held[0].record.event_id,
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/console.py");
    let out = tokio::process::Command::new(python())
        .arg(script)
        .arg(plan.to_string())
        .output()
        .await
        .expect("running the browser script");
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the browser script failed:\n{said}");
    println!("{said}");

    // What the clicks did.
    assert_eq!(
        t.payment("c3").await.map(|s| s.status),
        Some(PaymentStatus::Paid)
    );
    assert!(t.parked_now().await.is_empty());
    // The one set aside is a dead letter, its notification's.
    let dead = t.app().backends.dead_letters.dlq_list(10).await.unwrap();
    assert!(
        dead.iter()
            .any(|d| d.reason == "set_aside" && d.error.contains("payment is late")),
        "{dead:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !receiver
        .view()
        .events
        .contains_key(&held[0].record.event_id)
    {
        assert!(Instant::now() < deadline, "the resent event never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let audits = t.keys_under(paynotify::api::AUDIT_PREFIX).await;
    let mut actions = Vec::new();
    for key in &audits {
        let record: Value =
            serde_json::from_slice(&t.app().backends.archive.get(key).await.unwrap()).unwrap();
        assert_eq!(record["key"], "oncall", "{record}");
        actions.push(record["action"].as_str().unwrap().to_owned());
    }
    actions.sort();
    assert_eq!(
        actions,
        [
            "console/dead-letters/redrive",
            "console/deliveries/resend",
            "console/parked/dead-letter",
            "console/parked/resolve"
        ],
        "only the operate key's confirmed actions were done"
    );
}
