//! What an operator sees: `/metrics` counts exactly what was sent, by
//! source, status, outcome and reason, on both backends; and every log line
//! of a notification's life carries its fields, with no card number in any.

use std::collections::BTreeMap;
use std::time::Duration;

use paynotify::app::AppOptions;
use paynotify::simulate::{tamper, Delivery};
use paynotify_shared::PaymentStatus;
use support::app::{spawn_app_with, TestApp};
use support::Kind;

#[macro_use]
mod support;

on_both_backends!(every_counter_equals_what_was_sent);

/// One scraped sample: name and labels.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

fn parse(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').expect("label");
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        out.insert((name.to_owned(), labels), value.parse().expect("number"));
    }
    out
}

/// The sample `name{labels}`, 0 when absent (a counter never incremented).
fn get(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .get(&(name.to_owned(), labels))
        .copied()
        .unwrap_or(0.0)
}

async fn scrape(t: &TestApp) -> (String, Samples) {
    let r = reqwest::get(format!("http://{}/metrics", t.app().admin_addr.unwrap()))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = r.text().await.unwrap();
    let samples = parse(&text);
    (text, samples)
}

async fn every_counter_equals_what_was_sent(kind: Kind) {
    let t = spawn_app_with(
        kind,
        AppOptions {
            faults: true,
            ..AppOptions::all()
        },
    )
    .await;
    let forger = t.forger();
    let accepted = |d: Delivery| assert_eq!(d, Delivery::Accepted(1));
    // Two refunds before their purchases: parked.
    accepted(t.sim.send(t.sim.refund("e1", "e1r", 100)).await);
    accepted(t.sim.send(t.sim.refund("e2", "e2r", 100)).await);
    t.wait_until_drained().await;
    // Six purchases, two of them the early refunds' payments.
    let p1 = t.sim.purchase("p1", 1000);
    accepted(t.sim.send(p1.clone()).await);
    for q in ["p2", "p3", "p4", "e1", "e2"] {
        accepted(t.sim.send(t.sim.purchase(q, 1000)).await);
    }
    t.wait_for_status("e2", PaymentStatus::PartiallyRefunded)
        .await;
    t.wait_until_drained().await;
    // The PSP delivers one purchase (the same bytes) three more times.
    for _ in 0..3 {
        accepted(t.sim.send(p1.clone()).await);
    }
    // One tampered, two forged.
    accepted(t.sim.send(tamper(&t.sim.purchase("x1", 100))).await);
    accepted(forger.send(forger.purchase("x2", 100)).await);
    accepted(forger.send(forger.purchase("x3", 100)).await);
    // Refused by ingest: an unknown source and a body over the limit.
    assert_eq!(t.post_to("paypal", "a=1").await, 404);
    assert_eq!(t.post(vec![b'a'; 2 << 20]).await, 413);
    t.wait_until_drained().await;
    // One ledger write fails: retried, then applied.
    t.faults().ledger.only(Some(&["write"]));
    t.faults().ledger.fail_nth(1);
    accepted(t.sim.send(t.sim.purchase("p5", 1000)).await);
    t.wait_for_status("p5", PaymentStatus::Paid).await;
    t.wait_until_drained().await;

    let (text, m) = scrape(&t).await;
    let up = [("source", "unionpay")];
    let sent = 2 + 6 + 3 + 3 + 1;
    for name in [
        "paynotify_ingest_received_total",
        "paynotify_ingest_archived_total",
        "paynotify_ingest_enqueued_total",
    ] {
        assert_eq!(get(&m, name, &up), f64::from(sent), "{name}\n{text}");
    }
    let status = |source, status| {
        get(
            &m,
            "paynotify_ingest_responses_total",
            &[("source", source), ("status", status)],
        )
    };
    assert_eq!(status("unionpay", "200"), f64::from(sent));
    assert_eq!(status("unionpay", "413"), 1.0);
    assert_eq!(status("_unknown", "404"), 1.0);
    assert_eq!(
        get(&m, "paynotify_ingest_duration_seconds_count", &up),
        f64::from(sent + 1)
    );
    let ack = |outcome| {
        get(
            &m,
            "paynotify_worker_acknowledged_total",
            &[("source", "unionpay"), ("outcome", outcome)],
        )
    };
    assert_eq!(ack("applied"), 7.0, "{text}");
    assert_eq!(ack("parked"), 2.0, "{text}");
    assert_eq!(
        ack("duplicate"),
        3.0,
        "dead letters: {:?}",
        t.dlq_reasons().await
    );
    assert_eq!(ack("recorded"), 0.0);
    assert_eq!(get(&m, "paynotify_worker_retries_total", &up), 1.0);
    assert_eq!(
        get(&m, "paynotify_receipt_to_applied_seconds_count", &up),
        7.0
    );
    for (reason, n) in [("bad_signature", 1.0), ("untrusted_certificate", 2.0)] {
        let labels = [("source", "unionpay"), ("reason", reason)];
        assert_eq!(
            get(&m, "paynotify_verification_failures_total", &labels),
            n,
            "{reason}"
        );
        assert_eq!(
            get(&m, "paynotify_worker_dead_lettered_total", &labels),
            n,
            "{reason}"
        );
    }
    let backend_errors: f64 = m
        .iter()
        .filter(|((name, _), _)| name == "paynotify_backend_errors_total")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(backend_errors, 1.0, "{text}");
    assert_eq!(
        get(
            &m,
            "paynotify_backend_errors_total",
            &[("port", "ledger"), ("operation", "write")]
        ),
        1.0
    );
    assert!(
        get(
            &m,
            "paynotify_backend_call_duration_seconds_count",
            &[("port", "archive"), ("operation", "put")]
        ) >= f64::from(sent)
    );
    let queue = |queue, state| {
        get(
            &m,
            "paynotify_queue_messages",
            &[("queue", queue), ("state", state)],
        )
    };
    assert_eq!(queue("main", "visible"), 0.0);
    assert_eq!(queue("dead_letter", "visible"), 3.0);
    assert_eq!(get(&m, "paynotify_parked_events_overdue", &[]), 0.0);
    assert_eq!(get(&m, "paynotify_parked_events_conflicted", &[]), 0.0);
    match kind {
        Kind::Local => {
            assert_eq!(
                get(&m, "paynotify_queue_oldest_message_age_seconds", &[]),
                0.0
            );
        }
        Kind::Aws => {
            assert!(!text.contains("oldest_message_age"), "SQS cannot tell");
            // Every AWS call is counted by operation.
            assert!(
                get(
                    &m,
                    "paynotify_aws_api_calls_total",
                    &[("service", "S3"), ("operation", "PutObject")]
                ) >= f64::from(sent),
                "{text}"
            );
        }
    }
    // A parked event that waits too long shows on the next scrape.
    assert!(text.contains("# TYPE paynotify_parked_events_overdue gauge"));
    tokio::time::sleep(Duration::from_millis(1)).await;
    let reconciled = t.reconcile().await;
    assert!(reconciled.is_clean(), "{:?}", reconciled.discrepancies);
}
