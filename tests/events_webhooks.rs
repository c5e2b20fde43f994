//! Webhook endpoints on AWS (docs/events.md#webhooks-on-aws): the events
//! handler reads the ledger table's stream and puts each event on the
//! webhook line (a FIFO queue on the emulator) once per endpoint; the app's
//! sender posts them to a merchant's receiver that checks signatures,
//! deduplicates and checks each payment's order.
//!
//! What must hold: the receiver's view equals the ledger's transitions, in
//! order, each once, through refused and failed attempts; a delivery whose
//! retries are spent is held, and so are its payment's later events, while
//! other payments go on; `deliveries resend` sends the held ones in order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use paynotify::receiver::{ledger_statuses, Receiver};
use paynotify_lambda::events::Events;
use paynotify_shared::config::{Config, SecretRef};
use paynotify_shared::ports::{DeliveryFilter, WebhookLine};
use paynotify_shared::{PaymentKey, PaymentStatus};
use serde_json::json;
use support::app::{spawn_app_tweaked, TestApp, MERCHANT};
use support::stream::stream_records;
use support::Kind;

#[macro_use]
mod support;

const ENDPOINT: &str = "orders";

fn secret() -> String {
    support::receiver_secret()
}

async fn receiver() -> Receiver {
    Receiver::start(&secret(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// The app on the emulator with the ledger's stream on, delivering to
/// `receiver` through the webhook line with `retries` one-second retries.
async fn spawn(receiver: &Receiver, retries: usize) -> TestApp {
    let addr = receiver.addr;
    let t = spawn_app_tweaked(Kind::Aws, paynotify::app::AppOptions::all(), move |c| {
        let path = c.backend.data_dir.with_file_name("endpoint.secret");
        c.deliveries.retry_schedule_secs = vec![1; retries];
        c.deliveries.poll_ms = 50;
        c.deliveries.concurrency = 20;
        // The emulator's long poll spins while a message group is held by
        // a message in flight (real SQS waits): poll instead.
        c.deliveries.line_wait_secs = 0;
        // The sender runs in the workers' processes: its calls are the
        // worker role's (infra/tests/test_iam.py), with ingest's beside them.
        c.backend.aws.call_log = support::deployed::call_log_path("worker");
        c.deliveries.endpoints = vec![support::loopback_endpoint(
            ENDPOINT,
            format!("http://{addr}/paynotify"),
            path,
        )];
    })
    .await;
    let mut backend = t.config.backend.clone();
    backend.aws.ledger_stream = true;
    backend.aws.call_log = None;
    paynotify_shared::backend::aws::setup::init(&backend)
        .await
        .expect("turning on the ledger's stream");
    t
}

fn key(query_id: &str) -> PaymentKey {
    PaymentKey::new("unionpay", MERCHANT, query_id)
}

/// The events handler with the app's endpoints (its calls recorded for
/// infra/tests/test_iam.py).
async fn handler(config: &Config) -> Events {
    let mut config = config.clone();
    config.backend.aws.call_log = support::deployed::call_log_path("lambda-events");
    Events::from_config(&config).await.unwrap()
}

/// Hands the stream's records not handled yet to the handler, as Lambda
/// would; how many it has handled now.
async fn pump(t: &TestApp, events: &Events, done: usize) -> usize {
    let records = stream_records(&t.config).await;
    for batch in records[done..].chunks(25) {
        let report = events
            .handle_batch(json!({ "Records": batch }))
            .await
            .unwrap();
        assert_eq!(report.failed_at, None, "{report:?}");
    }
    records.len()
}

fn line(t: &TestApp) -> std::sync::Arc<dyn WebhookLine> {
    t.app()
        .backends
        .webhooks
        .clone()
        .expect("the AWS backend has a webhook line")
}

/// Waits until `check` holds of the receiver's statuses.
async fn wait_view(
    receiver: &Receiver,
    what: &str,
    check: impl Fn(&BTreeMap<String, Vec<String>>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = receiver.view();
        if check(&view.statuses()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never {what}: {:?}",
            view.statuses()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the endpoint holds `n` deliveries of the payment.
async fn wait_held(t: &TestApp, query_id: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = line(t)
            .list_held(&DeliveryFilter {
                endpoint: Some(ENDPOINT.into()),
                payment_key: Some(key(query_id).to_string()),
                limit: 100,
                ..DeliveryFilter::default()
            })
            .await
            .unwrap();
        if held.len() == n {
            return;
        }
        assert!(Instant::now() < deadline, "{query_id}: held {held:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_reaches_the_receiver_once_in_order_through_refusals() {
    let receiver = receiver().await;
    let t = spawn(&receiver, 8).await;
    let events = handler(&t.config).await;
    // The first attempts are answered 500: each is tried again after its
    // visibility timeout, its payment's later events behind it.
    receiver.set(|b| b.fail = 4);
    let ids: Vec<String> = (0..6).map(|i| format!("w{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        t.sim.send(t.sim.purchase(id, 1000)).await;
        t.wait_for_status(id, PaymentStatus::Paid).await;
        if i % 2 == 0 {
            t.sim.send(t.sim.refund(id, &format!("{id}-r1"), 300)).await;
        }
    }
    for (i, id) in ids.iter().enumerate() {
        if i % 2 == 0 {
            t.wait_for_status(id, PaymentStatus::PartiallyRefunded)
                .await;
            t.sim.send(t.sim.refund(id, &format!("{id}-r2"), 700)).await;
            t.wait_for_status(id, PaymentStatus::Refunded).await;
        }
    }
    pump(&t, &events, 0).await;
    let ledger = ledger_statuses(
        t.app().backends.ledger.as_ref(),
        ids.iter().map(|id| key(id)),
    )
    .await
    .unwrap();
    assert_eq!(ledger.len(), 6);
    wait_view(&receiver, "equal to the ledger", |v| *v == ledger).await;
    let view = receiver.view();
    assert!(
        view.order_violations.is_empty(),
        "{:?}",
        view.order_violations
    );
    assert!(view.rejected.is_empty(), "{:?}", view.rejected);
    // Nothing held; the endpoint's success recorded.
    let status = line(&t).endpoint_status(ENDPOINT).await.unwrap();
    assert_eq!(status.dead_lettered, 0, "{status:?}");
    assert!(status.last_success.is_some(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_delivery_is_held_with_its_payments_later_events_until_resent() {
    let mut receiver = receiver().await;
    let t = spawn(&receiver, 1).await;
    let events = handler(&t.config).await;
    // The receiver is down: the purchase's two attempts fail; it is held.
    receiver.stop();
    t.sim.send(t.sim.purchase("h1", 1000)).await;
    t.wait_for_status("h1", PaymentStatus::Paid).await;
    let mut done = pump(&t, &events, 0).await;
    wait_held(&t, "h1", 1).await;
    // Back up: the refund of the held payment is held behind it; another
    // payment is delivered meanwhile.
    receiver.restart().await.unwrap();
    t.sim.send(t.sim.refund("h1", "h1-r1", 400)).await;
    t.wait_for_status("h1", PaymentStatus::PartiallyRefunded)
        .await;
    t.sim.send(t.sim.purchase("h2", 500)).await;
    t.wait_for_status("h2", PaymentStatus::Paid).await;
    done = pump(&t, &events, done).await;
    wait_view(&receiver, "h2 delivered", |v| {
        v.get(&key("h2").to_string()).is_some_and(|s| s.len() == 1)
    })
    .await;
    wait_held(&t, "h1", 2).await;
    assert!(
        !receiver
            .view()
            .statuses()
            .contains_key(&key("h1").to_string()),
        "nothing of the held payment was delivered"
    );
    let held = line(&t)
        .list_held(&DeliveryFilter {
            endpoint: Some(ENDPOINT.into()),
            limit: 10,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(held[0].attempts, 2, "{held:?}");
    assert!(
        held[1]
            .last_error
            .as_deref()
            .unwrap()
            .contains("waits behind"),
        "{held:?}"
    );

    // The operator resends the first: both go, in order.
    let cli = cli_config(&t);
    let out = support::cli::paynotify(
        &[
            "deliveries",
            "resend",
            "--config",
            cli.to_str().unwrap(),
            "--endpoint",
            ENDPOINT,
            &held[0].record.event_id,
        ],
        &support::deployed::backend_env(&t.config.backend, "operator")
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ledger = ledger_statuses(t.app().backends.ledger.as_ref(), [key("h1"), key("h2")])
        .await
        .unwrap();
    wait_view(&receiver, "equal to the ledger", |v| *v == ledger).await;
    wait_held(&t, "h1", 0).await;
    assert!(receiver.view().order_violations.is_empty());
    let _ = done;
}

/// A configuration file for the CLI on the test's emulator resources.
fn cli_config(t: &TestApp) -> std::path::PathBuf {
    let aws = &t.config.backend.aws;
    let e = &t.config.deliveries.endpoints[0];
    let SecretRef::File(secret) = &e.secrets[0] else {
        panic!()
    };
    let path = t.config.backend.data_dir.with_file_name("cli.toml");
    let text = format!(
        "[backend]\nkind = \"aws\"\n[backend.aws]\nregion = \"{}\"\nendpoint_url = \"{}\"\n\
         bucket = \"{}\"\nqueue = \"{}\"\ndead_letter_queue = \"{}\"\nwebhooks_queue = \"{}\"\n\
         table = \"{}\"\n[[deliveries.endpoints]]\nname = \"{}\"\nurl = \"{}\"\n\
         secrets = [\"file:{}\"]\nallow_insecure_http = true\nallow_private_addresses = true\n",
        aws.region,
        aws.endpoint_url.as_deref().unwrap(),
        aws.bucket,
        aws.queue,
        aws.dead_letter_queue,
        aws.webhooks_queue,
        aws.table,
        e.name,
        e.url,
        secret.display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_without_its_queue_or_past_the_queues_retention_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = paynotify_shared::config::BackendConfig::default();
    support::prepare(Kind::Aws, &mut backend, dir.path()).await;
    let clients = paynotify_shared::backend::aws::Clients::new(&backend.aws).await;
    let metrics = paynotify_shared::metrics::Metrics::new(None);
    let endpoints = vec![support::loopback_endpoint(
        ENDPOINT,
        "https://orders.example/hook".into(),
        dir.path().join("orders.whsec"),
    )];
    let mut config = paynotify_shared::config::DeliveriesConfig {
        endpoints,
        ..Default::default()
    };
    let sender = |aws: paynotify_shared::config::AwsConfig,
                  config: paynotify_shared::config::DeliveriesConfig| {
        let line = std::sync::Arc::new(paynotify_shared::backend::aws::line::SqsWebhookLine::new(
            &clients, &aws,
        ));
        let metrics = metrics.clone();
        async move {
            paynotify_deliver::line::LineSender::new(&config, line, None, metrics)
                .await
                .map(|_| ())
        }
    };
    // Its own queue: it starts.
    sender(backend.aws.clone(), config.clone()).await.unwrap();
    // A queue that is not there: named, with what creates it.
    let mut missing = backend.aws.clone();
    missing.webhooks_queue = "pn-nowhere.fifo".into();
    let err = sender(missing, config.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pn-nowhere.fifo") && err.contains("init"),
        "{err}"
    );
    // Retries that would outlast the queue's fourteen days.
    config.retry_schedule_secs = vec![7 * 24 * 3600, 7 * 24 * 3600];
    let err = sender(backend.aws.clone(), config)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("14 days"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_answers_gone_is_disabled_and_enable_sends_what_it_held() {
    let receiver = receiver().await;
    let t = spawn(&receiver, 3).await;
    let events = handler(&t.config).await;
    receiver.set(|b| b.gone = true);
    t.sim.send(t.sim.purchase("g1", 1000)).await;
    t.wait_for_status("g1", PaymentStatus::Paid).await;
    let mut done = pump(&t, &events, 0).await;
    // 410 Gone: disabled at once; the retry finds it disabled and holds.
    wait_held(&t, "g1", 1).await;
    let status = line(&t).endpoint_status(ENDPOINT).await.unwrap();
    assert!(
        status.disabled.as_deref().unwrap().contains("410"),
        "{status:?}"
    );
    // While disabled, new events are held too, in order.
    receiver.set(|b| b.gone = false);
    t.sim.send(t.sim.refund("g1", "g1-r1", 1000)).await;
    t.wait_for_status("g1", PaymentStatus::Refunded).await;
    t.sim.send(t.sim.purchase("g2", 700)).await;
    t.wait_for_status("g2", PaymentStatus::Paid).await;
    done = pump(&t, &events, done).await;
    wait_held(&t, "g1", 2).await;
    wait_held(&t, "g2", 1).await;
    assert!(receiver.view().statuses().is_empty());

    let cli = cli_config(&t);
    let config = cli.to_str().unwrap();
    let env = support::deployed::backend_env(&t.config.backend, "operator");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = support::cli::paynotify(&["deliveries", "endpoints", "--config", config], &env);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["dead_lettered"], 3, "{shown}");
    let out = support::cli::paynotify(&["deliveries", "list", "--config", config, "--json"], &env);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["status"] == "dead_lettered"));
    // Pending deliveries are messages on the queue: asking for them says so.
    let out = support::cli::paynotify(
        &[
            "deliveries",
            "list",
            "--config",
            config,
            "--status",
            "pending",
        ],
        &env,
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("webhooks queue"));

    let out = support::cli::paynotify(
        &["deliveries", "enable", "--config", config, ENDPOINT],
        &env,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ledger = ledger_statuses(t.app().backends.ledger.as_ref(), [key("g1"), key("g2")])
        .await
        .unwrap();
    wait_view(&receiver, "equal to the ledger", |v| *v == ledger).await;
    wait_held(&t, "g1", 0).await;
    wait_held(&t, "g2", 0).await;
    assert!(receiver.view().order_violations.is_empty());
    let _ = done;
}
