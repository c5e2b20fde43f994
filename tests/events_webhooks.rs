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

use paynotify::receiver::{ledger_statuses, Receiver, View};
use paynotify_lambda::events::Events;
use paynotify_lambda::webhooks::Webhooks;
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

/// What the test's processes deliver: to `addr` through the webhook line,
/// with `retries` one-second retries.
fn deliver_to(c: &mut Config, addr: std::net::SocketAddr, retries: usize) {
    let path = c.backend.data_dir.with_file_name("endpoint.secret");
    c.deliveries.retry_schedule_secs = vec![1; retries];
    c.deliveries.poll_ms = 50;
    // One receive loop: moto computes a FIFO queue's locked message groups
    // when a ReceiveMessage begins, so two receives at once may split a
    // group between them (SQS locks a group atomically); one loop keeps
    // the emulator's order honest. (The slow-endpoint test runs two.)
    c.deliveries.concurrency = 10;
    // The emulator's long poll spins while a message group is held by
    // a message in flight (real SQS waits): poll instead.
    c.deliveries.line_wait_secs = 0;
    // The sender runs in the workers' processes (and the serverless
    // stack's webhooks function has the worker's policy): its calls are
    // the worker role's (infra/tests/test_iam.py), with ingest's beside
    // them.
    c.backend.aws.call_log = support::deployed::call_log_path("worker");
    c.deliveries.endpoints = vec![support::loopback_endpoint(
        ENDPOINT,
        format!("http://{addr}/paynotify"),
        path,
    )];
}

/// Turns on the ledger's stream of the app's table.
async fn stream_on(t: &TestApp) {
    let mut backend = t.config.backend.clone();
    backend.aws.ledger_stream = true;
    backend.aws.call_log = None;
    paynotify_shared::backend::aws::setup::init(&backend)
        .await
        .expect("turning on the ledger's stream");
}

/// The app on the emulator with the ledger's stream on, delivering to
/// `receiver` through the webhook line with `retries` one-second retries.
async fn spawn(receiver: &Receiver, retries: usize) -> TestApp {
    let addr = receiver.addr;
    let t = spawn_app_tweaked(Kind::Aws, paynotify::app::AppOptions::all(), move |c| {
        deliver_to(c, addr, retries)
    })
    .await;
    stream_on(&t).await;
    t
}

/// The serverless stack's shape: the app ingests and applies but sends
/// nothing (no endpoint of its own); the configuration returned, with the
/// endpoints, is the events and webhooks functions'.
async fn spawn_serverless(receiver: &Receiver, retries: usize) -> (TestApp, Config) {
    let addr = receiver.addr;
    let t = spawn_app_tweaked(Kind::Aws, paynotify::app::AppOptions::all(), move |c| {
        deliver_to(c, addr, retries);
        c.deliveries.endpoints.clear();
    })
    .await;
    stream_on(&t).await;
    let mut functions = t.config.clone();
    deliver_to(&mut functions, addr, retries);
    (t, functions)
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

/// Waits until `check` holds of what the receiver has seen.
async fn wait_view(receiver: &Receiver, what: &str, check: impl Fn(&View) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = receiver.view();
        if check(&view) {
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

/// The endpoint's held deliveries of the payment.
async fn held(t: &TestApp, query_id: &str) -> Vec<paynotify_shared::ports::Delivery> {
    line(t)
        .list_held(&DeliveryFilter {
            endpoint: Some(ENDPOINT.into()),
            payment_key: Some(key(query_id).to_string()),
            limit: 100,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap()
}

/// Waits until the endpoint holds `n` deliveries of the payment.
async fn wait_held(t: &TestApp, query_id: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = held(t, query_id).await;
        if held.len() == n {
            return;
        }
        assert!(Instant::now() < deadline, "{query_id}: held {held:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_reaches_the_receiver_once_in_order_through_refusals_drops_and_timeouts() {
    let receiver = receiver().await;
    let t = spawn(&receiver, 8).await;
    let events = handler(&t.config).await;
    // The first attempts are answered 500, two are processed and their
    // connections dropped without an answer (sent again with the same id),
    // one is answered past the endpoint's timeout: each is tried again
    // after its visibility timeout, its payment's later events behind it.
    receiver.set(|b| {
        b.fail = 4;
        b.drop_after_processing = 2;
        b.slow = 1;
        b.slow_for = Duration::from_millis(1500);
    });
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
    // The dropped and the late ones were processed and sent again: the
    // late one's second attempt may come after the view is complete
    // (it waits out its visibility timeout), so it is waited for too.
    wait_view(&receiver, "equal to the ledger, three sent again", |v| {
        v.statuses() == ledger && v.duplicates >= 3
    })
    .await;
    let view = receiver.view();
    assert!(
        view.order_violations.is_empty(),
        "{:?}",
        view.order_violations
    );
    assert!(view.rejected.is_empty(), "{:?}", view.rejected);
    assert_eq!(view.events.len(), 12, "each once in effect");
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
        v.statuses()
            .get(&key("h2").to_string())
            .is_some_and(|s| s.len() == 1)
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
    wait_view(&receiver, "equal to the ledger", |v| v.statuses() == ledger).await;
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
async fn a_sender_without_its_queue_or_past_the_queues_retention_or_visibility_refuses_to_start() {
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
    // An endpoint whose posts may take longer than a received message
    // stays invisible (the line's 60 s): it would be handed out again
    // while still being posted.
    let mut slow = config.clone();
    slow.endpoints[0].timeout_ms = 30_000;
    let err = sender(backend.aws.clone(), slow)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("visibility timeout") && err.contains("60 s"),
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
    wait_view(&receiver, "equal to the ledger", |v| v.statuses() == ledger).await;
    wait_held(&t, "g1", 0).await;
    wait_held(&t, "g2", 0).await;
    assert!(receiver.view().order_violations.is_empty());
    let _ = done;
}

/// Lambda's SQS event source on the webhook line, as the test plays it,
/// and the serverless stack's webhooks function behind it.
struct EventSource {
    sqs: aws_sdk_sqs::Client,
    url: String,
    arn: String,
    function: Webhooks,
}

impl EventSource {
    /// The function with `config`'s endpoints, their secrets in Secrets
    /// Manager under the data stack's prefix for them
    /// (`${Name}/webhooks/…`, which the worker's policy may read).
    async fn new(config: &Config) -> Self {
        let mut config = config.clone();
        // The test's own calls are no role's.
        config.backend.aws.call_log = None;
        let clients = paynotify_shared::backend::aws::Clients::new(&config.backend.aws).await;
        let arn = clients
            .secrets
            .create_secret()
            .name(format!("{}/webhooks/{ENDPOINT}", config.backend.aws.queue))
            .secret_string(secret())
            .send()
            .await
            .unwrap()
            .arn
            .unwrap();
        config.deliveries.endpoints[0].secrets = vec![SecretRef::SecretsManager {
            arn,
            json_key: None,
        }];
        config.backend.aws.call_log = support::deployed::call_log_path("lambda-webhooks");
        let url = line_url(&clients, &config).await;
        let arn = format!(
            "arn:aws:sqs:us-east-1:123456789012:{}",
            config.backend.aws.webhooks_queue
        );
        Self {
            sqs: clients.sqs.clone(),
            url,
            arn,
            function: Webhooks::from_config(&config).await.unwrap(),
        }
    }

    /// One invocation: up to ten messages received and handed in as an
    /// SQS event whose deadline is `within` away, then those the response
    /// does not name deleted (Lambda's part). The records handed in, and
    /// the ids named.
    async fn invoke(&self, within: Duration) -> (usize, Vec<String>) {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            return (0, Vec::new());
        }
        let records: Vec<serde_json::Value> = messages
            .iter()
            .map(|m| {
                let attributes: serde_json::Map<String, serde_json::Value> = m
                    .message_attributes
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| {
                        let value = json!({
                            "stringValue": v.string_value,
                            "dataType": v.data_type,
                            "stringListValues": [],
                            "binaryListValues": [],
                        });
                        (k, value)
                    })
                    .collect();
                let system: serde_json::Map<String, serde_json::Value> = m
                    .attributes
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k.as_str().to_owned(), json!(v)))
                    .collect();
                json!({
                    "messageId": m.message_id,
                    "receiptHandle": m.receipt_handle,
                    "body": m.body,
                    "attributes": system,
                    "messageAttributes": attributes,
                    "eventSource": "aws:sqs",
                    "eventSourceARN": self.arn,
                    "awsRegion": "us-east-1",
                })
            })
            .collect();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let response = self
            .function
            .handle(
                json!({ "Records": records }),
                Some(now_ms + within.as_millis() as u64),
            )
            .await
            .unwrap();
        let named: Vec<String> = response["batchItemFailures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["itemIdentifier"].as_str().unwrap().to_owned())
            .collect();
        for m in &messages {
            if !named.contains(m.message_id.as_ref().unwrap()) {
                self.sqs
                    .delete_message()
                    .queue_url(&self.url)
                    .receipt_handle(m.receipt_handle.as_ref().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
        }
        (messages.len(), named)
    }

    /// Invokes the function (as the event source polls) until `check`
    /// holds of the receiver's statuses.
    async fn until_view(
        &self,
        receiver: &Receiver,
        what: &str,
        check: impl Fn(&BTreeMap<String, Vec<String>>) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !check(&receiver.view().statuses()) {
            assert!(
                Instant::now() < deadline,
                "never {what}: {:?}",
                receiver.view().statuses()
            );
            if self.invoke(Duration::from_secs(30)).await.0 == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Invokes the function until the endpoint holds `n` deliveries of
    /// the payment.
    async fn until_held(&self, t: &TestApp, query_id: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let held = held(t, query_id).await;
            if held.len() == n {
                return;
            }
            assert!(Instant::now() < deadline, "{query_id}: held {held:?}");
            if self.invoke(Duration::from_secs(30)).await.0 == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serverless_webhooks_function_delivers_in_order_and_holds_what_is_spent() {
    let mut receiver = receiver().await;
    let (t, functions) = spawn_serverless(&receiver, 2).await;
    let events = handler(&functions).await;
    let source = EventSource::new(&functions).await;
    // Three payments, two of them refunded twice; the first attempts are
    // answered 500 and tried again after their visibility timeout.
    receiver.set(|b| b.fail = 2);
    let ids = ["s0", "s1", "s2"];
    for id in ids {
        t.sim.send(t.sim.purchase(id, 1000)).await;
        t.wait_for_status(id, PaymentStatus::Paid).await;
    }
    for id in &ids[..2] {
        t.sim.send(t.sim.refund(id, &format!("{id}-r1"), 300)).await;
        t.wait_for_status(id, PaymentStatus::PartiallyRefunded)
            .await;
        t.sim.send(t.sim.refund(id, &format!("{id}-r2"), 700)).await;
        t.wait_for_status(id, PaymentStatus::Refunded).await;
    }
    let mut done = pump(&t, &events, 0).await;

    // An invocation with no time left posts nothing: its whole batch comes
    // back, at once, for the next one.
    let (handed, named) = source.invoke(Duration::ZERO).await;
    assert!(handed > 0);
    assert_eq!(named.len(), handed);
    assert!(receiver.view().events.is_empty());
    assert_eq!(source.invoke(Duration::ZERO).await.0, handed);

    let ledger = ledger_statuses(t.app().backends.ledger.as_ref(), ids.map(key))
        .await
        .unwrap();
    source
        .until_view(&receiver, "equal to the ledger", |v| *v == ledger)
        .await;
    let view = receiver.view();
    assert!(
        view.order_violations.is_empty(),
        "{:?}",
        view.order_violations
    );
    assert!(view.rejected.is_empty(), "{:?}", view.rejected);
    assert_eq!(view.events.len(), 7, "each once");
    let status = line(&t).endpoint_status(ENDPOINT).await.unwrap();
    assert_eq!(status.dead_lettered, 0, "{status:?}");
    assert!(status.last_success.is_some(), "{status:?}");

    // The receiver is down: a purchase's three attempts fail and it is
    // held; its refund is held behind it while another payment goes.
    receiver.stop();
    t.sim.send(t.sim.purchase("h1", 1000)).await;
    t.wait_for_status("h1", PaymentStatus::Paid).await;
    done = pump(&t, &events, done).await;
    source.until_held(&t, "h1", 1).await;
    receiver.restart().await.unwrap();
    t.sim.send(t.sim.refund("h1", "h1-r1", 400)).await;
    t.wait_for_status("h1", PaymentStatus::PartiallyRefunded)
        .await;
    t.sim.send(t.sim.purchase("h2", 500)).await;
    t.wait_for_status("h2", PaymentStatus::Paid).await;
    pump(&t, &events, done).await;
    source.until_held(&t, "h1", 2).await;
    source
        .until_view(&receiver, "h2 delivered", |v| {
            v.get(&key("h2").to_string()).is_some_and(|s| s.len() == 1)
        })
        .await;
    assert!(!receiver
        .view()
        .statuses()
        .contains_key(&key("h1").to_string()));

    // Resent (what `deliveries resend` puts on the line): both go, in order.
    line(&t)
        .release(ENDPOINT, &key("h1").to_string())
        .await
        .unwrap();
    let ledger = ledger_statuses(
        t.app().backends.ledger.as_ref(),
        ids.into_iter().chain(["h1", "h2"]).map(key),
    )
    .await
    .unwrap();
    source
        .until_view(&receiver, "equal to the ledger", |v| *v == ledger)
        .await;
    source.until_held(&t, "h1", 0).await;
    let view = receiver.view();
    assert!(
        view.order_violations.is_empty(),
        "{:?}",
        view.order_violations
    );
    assert_eq!(view.events.len(), 10, "each once");
}

/// A `paynotify-worker` process on the test's emulator resources, as the
/// container stack starts it, with the endpoint: the sender runs in it.
/// Killed when dropped.
struct WorkerProcess(std::process::Child);

impl WorkerProcess {
    /// `concurrency / 10` receive loops (see `deliver_to` on why one is
    /// the default here).
    fn start(t: &TestApp, functions: &Config, concurrency: usize) -> Self {
        let e = &functions.deliveries.endpoints[0];
        let SecretRef::File(secret) = &e.secrets[0] else {
            panic!()
        };
        // The app's own file (its sources and certificates), with the
        // endpoint.
        let dir = t.config.backend.data_dir.parent().unwrap();
        let mut text = std::fs::read_to_string(dir.join("paynotify.toml")).unwrap();
        text.push_str(&format!(
            "\n[deliveries]\npoll_ms = 50\nconcurrency = {concurrency}\nline_wait_secs = 0\n\
             retry_schedule_secs = [1, 1, 1, 1, 1, 1, 1, 1]\n\
             [[deliveries.endpoints]]\nname = \"{}\"\nurl = \"{}\"\nsecrets = [\"file:{}\"]\n\
             timeout_ms = 1000\nmax_requests_per_sec = 10000\n\
             allow_insecure_http = true\nallow_private_addresses = true\n",
            e.name,
            e.url,
            secret.display(),
        ));
        let path = dir.join("sender.toml");
        std::fs::write(&path, text).unwrap();
        let child = std::process::Command::new(support::binary("paynotify-worker"))
            .arg("--config")
            .arg(&path)
            .envs(support::deployed::backend_env(&t.config.backend, "worker"))
            .env("PAYNOTIFY__BACKEND__DATA_DIR", dir.join("sender-data"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }

    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_mid_batch_loses_and_reorders_nothing() {
    let receiver = receiver().await;
    // The receiver takes 20 ms an answer, so the kill finds posts in flight.
    receiver.set(|b| {
        b.slow = u32::MAX;
        b.slow_for = Duration::from_millis(20);
    });
    let (t, functions) = spawn_serverless(&receiver, 8).await;
    // What a killed sender had in flight comes back after the line's
    // visibility timeout: a short one, so the test does not wait a minute.
    set_visibility(&t, 3).await;
    let events = handler(&functions).await;
    // The purchases first: one message per payment on the line when the
    // sender is killed. (With several of a group in flight at the kill,
    // moto hands the group's last one out first once they are visible
    // again: moto/sqs/models.py receive_messages keeps a group pending
    // while any of its expired messages is still marked pending. SQS hands
    // a group's messages out in order; the refunds below go after the
    // restart.)
    let ids: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    for id in &ids {
        t.sim.send(t.sim.purchase(id, 1000)).await;
    }
    for id in &ids {
        t.wait_for_status(id, PaymentStatus::Paid).await;
    }
    let done = pump(&t, &events, 0).await;

    // SIGKILL the sending process once a quarter has arrived.
    let sender = WorkerProcess::start(&t, &functions, 10);
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.view().events.len() < ids.len() / 4 {
        assert!(Instant::now() < deadline, "the sender never delivered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sender.kill();
    let at_kill = receiver.view().events.len();
    assert!(at_kill < ids.len(), "everything arrived before the kill");
    let _sender = WorkerProcess::start(&t, &functions, 10);
    wait_view(&receiver, "every purchase delivered", |v| {
        v.statuses().len() == ids.len()
    })
    .await;

    // Then refunds of every third payment, through the restarted sender.
    for (i, id) in ids.iter().enumerate() {
        if i % 3 == 0 {
            t.sim.send(t.sim.refund(id, &format!("{id}-r1"), 300)).await;
            t.wait_for_status(id, PaymentStatus::PartiallyRefunded)
                .await;
            t.sim.send(t.sim.refund(id, &format!("{id}-r2"), 700)).await;
            t.wait_for_status(id, PaymentStatus::Refunded).await;
        }
    }
    pump(&t, &events, done).await;
    let ledger = ledger_statuses(
        t.app().backends.ledger.as_ref(),
        ids.iter().map(|id| key(id)),
    )
    .await
    .unwrap();
    let total: usize = ledger.values().map(Vec::len).sum();
    assert_eq!(total, 40 + 14 * 2);
    wait_view(&receiver, "equal to the ledger", |v| v.statuses() == ledger).await;
    let view = receiver.view();
    assert!(
        view.order_violations.is_empty(),
        "{:?}",
        view.order_violations
    );
    assert!(view.rejected.is_empty(), "{:?}", view.rejected);
    assert_eq!(view.events.len(), total, "each once in effect");
    let status = line(&t).endpoint_status(ENDPOINT).await.unwrap();
    assert_eq!(status.dead_lettered, 0, "{status:?}");
    eprintln!(
        "killed with {at_kill} of {} purchases delivered; {} redelivered after it",
        ids.len(),
        view.duplicates
    );
}

/// The URL of the webhook line's queue.
async fn line_url(clients: &paynotify_shared::backend::aws::Clients, config: &Config) -> String {
    clients
        .sqs
        .get_queue_url()
        .queue_name(&config.backend.aws.webhooks_queue)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap()
}

/// Sets the webhook line's visibility timeout (a sender reads it when it
/// starts).
async fn set_visibility(t: &TestApp, secs: u32) {
    // The test's own call: no role's.
    let mut aws = t.config.backend.aws.clone();
    aws.call_log = None;
    let clients = paynotify_shared::backend::aws::Clients::new(&aws).await;
    let url = line_url(&clients, &t.config).await;
    clients
        .sqs
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            secs.to_string(),
        )
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_never_has_a_payments_events_handed_out_twice() {
    let receiver = receiver().await;
    // Every answer takes 700 ms (the endpoint's timeout is 1 s): five
    // events of one payment, received together, take longer than the
    // line's 3 s visibility timeout one after the other.
    receiver.set(|b| {
        b.slow = u32::MAX;
        b.slow_for = Duration::from_millis(700);
    });
    let (t, functions) = spawn_serverless(&receiver, 8).await;
    set_visibility(&t, 3).await;
    let events = handler(&functions).await;
    t.sim.send(t.sim.purchase("v1", 1000)).await;
    t.wait_for_status("v1", PaymentStatus::Paid).await;
    for i in 1..=4 {
        t.sim
            .send(t.sim.refund("v1", &format!("v1-r{i}"), 100))
            .await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while t.payment_of(&key("v1")).await.unwrap().refunded_minor < 100 * i {
            assert!(Instant::now() < deadline, "refund {i} never applied");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    pump(&t, &events, 0).await;
    // Two receive loops: the other one is what would take the messages
    // handed out again. One payment: one group, never split.
    let _sender = WorkerProcess::start(&t, &functions, 20);
    let ledger = ledger_statuses(t.app().backends.ledger.as_ref(), [key("v1")])
        .await
        .unwrap();
    assert_eq!(ledger[&key("v1").to_string()].len(), 5);
    wait_view(&receiver, "equal to the ledger", |v| v.statuses() == ledger).await;
    // Nothing left on the line (a message handed out again would still be
    // in flight, its post under way).
    let deadline = Instant::now() + Duration::from_secs(30);
    while line(&t).endpoint_status(ENDPOINT).await.unwrap().pending > 0 {
        assert!(Instant::now() < deadline, "the line never emptied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = receiver.view();
    assert!(
        view.order_violations.is_empty(),
        "{:?}",
        view.order_violations
    );
    // None was handed out again while the sender still worked on its
    // group: each was posted once.
    assert_eq!(view.duplicates, 0);
}
