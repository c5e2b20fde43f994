//! Outgoing events on AWS (docs/events.md): the ledger table's stream is
//! the outbox. The app applies notifications on the emulator; the test
//! reads the table's stream as Lambda's event source would (`GetRecords`
//! from the trim horizon, in order) and invokes the events handler with
//! the records; the sinks are the emulator's SQS queues.
//!
//! What must hold: the events the stream gives are those the embedded
//! backend's outbox records for the same notifications (same ids, types,
//! payment views, causes), each once, in order per payment, including a
//! write that spills its events to an overflow item and one that finds a
//! conflicting parked refund; a sink that fails stops the batch at its
//! record and a second invocation from there completes it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use paynotify_lambda::events::Events;
use paynotify_shared::config::{Config, SinkConfig, SinkKind};
use paynotify_shared::{PaymentKey, PaymentStatus};
use serde_json::{json, Value};
use support::app::{spawn_app, spawn_app_tweaked, TestApp, MERCHANT};
use support::stream::stream_records;
use support::Kind;

#[macro_use]
mod support;

/// The app on fresh emulator resources whose ledger table has its stream
/// (`paynotify init`'s default; the other tests leave it off), turned on
/// before anything is written.
async fn spawn_streaming(options: paynotify::app::AppOptions) -> TestApp {
    let t = spawn_app_tweaked(Kind::Aws, options, |_| {}).await;
    let mut backend = t.config.backend.clone();
    backend.aws.ledger_stream = true;
    paynotify_shared::backend::aws::setup::init(&backend)
        .await
        .expect("turning on the ledger's stream");
    t
}

fn key(query_id: &str) -> PaymentKey {
    PaymentKey::new("unionpay", MERCHANT, query_id)
}

/// Waits until `check` holds of the payment's ledger entry.
async fn wait_entry(
    t: &TestApp,
    id: &str,
    what: &str,
    check: impl Fn(&paynotify_shared::ports::PaymentEntry) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(e) = t.app().backends.ledger.load(&key(id)).await {
            if check(&e) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{id}: never {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The same notifications on either backend, each waited for, so that both
/// backends make the same writes: a purchase; a purchase and its full
/// refund; a purchase and five refunds (the fifth and sixth events spill to
/// overflow items); five refunds and one too large parked before their
/// purchase (one write of six events, spilled at once, and a conflict).
async fn traffic(t: &TestApp) -> Vec<&'static str> {
    let sim = &t.sim;
    sim.send(sim.purchase("p1", 1000)).await;
    sim.send(sim.purchase("p2", 1000)).await;
    t.wait_for_status("p2", PaymentStatus::Paid).await;
    sim.send(sim.refund("p2", "p2-r", 1000)).await;
    sim.send(sim.purchase("ov", 1000)).await;
    t.wait_for_status("ov", PaymentStatus::Paid).await;
    for i in 1..=5u64 {
        sim.send(sim.refund("ov", &format!("ov-r{i}"), 100)).await;
        wait_entry(t, "ov", "refunded", |e| {
            e.state
                .as_ref()
                .is_some_and(|s| s.refunded_minor == 100 * i)
        })
        .await;
    }
    for i in 1..=5 {
        sim.send(sim.refund("pk", &format!("pk-r{i}"), 100)).await;
    }
    sim.send(sim.refund("pk", "pk-big", 1500)).await;
    wait_entry(t, "pk", "parked six times", |e| e.parked.len() == 6).await;
    sim.send(sim.purchase("pk", 1000)).await;
    t.wait_for_status("p1", PaymentStatus::Paid).await;
    t.wait_for_status("p2", PaymentStatus::Refunded).await;
    wait_entry(t, "pk", "unparked", |e| {
        e.state.as_ref().is_some_and(|s| s.refunded_minor == 500) && e.parked.len() == 1
    })
    .await;
    vec!["p1", "p2", "ov", "pk"]
}

/// What both backends must agree on in an event: all but the times, the
/// notification id and the PSP's event key (the simulator stamps each
/// notification with the time it is sent).
fn comparable(e: &Value) -> Value {
    json!({
        "id": e["id"],
        "type": e["type"],
        "schema": e["schema"],
        "payment": e["payment"],
        "kind": e["cause"]["kind"],
        "outcome": e["cause"]["outcome"],
        "amount": e["cause"]["amount"],
        "currency": e["cause"]["currency"],
        "attention": e.get("attention").map(|a| !a.is_null()),
    })
}

/// A new queue on the emulator; its URL.
async fn queue(config: &Config, name: &str, fifo: bool) -> String {
    let clients = paynotify_shared::backend::aws::Clients::new(&config.backend.aws).await;
    let mut create = clients.sqs.create_queue().queue_name(name);
    if fifo {
        create = create.attributes("FifoQueue".into(), "true");
    }
    create.send().await.unwrap().queue_url.unwrap()
}

/// Every message on the queue, in the order received (each deleted once read).
async fn drain(config: &Config, url: &str) -> Vec<Value> {
    let clients = paynotify_shared::backend::aws::Clients::new(&config.backend.aws).await;
    let mut out = Vec::new();
    loop {
        let got = clients
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        let messages = got.messages.unwrap_or_default();
        if messages.is_empty() {
            return out;
        }
        for m in messages {
            out.push(serde_json::from_str(m.body().unwrap()).unwrap());
            clients
                .sqs
                .delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
}

fn sink(name: &str, target: &str) -> SinkConfig {
    SinkConfig {
        name: name.into(),
        kind: SinkKind::Sqs,
        target: target.into(),
        event_types: Default::default(),
        sources: Default::default(),
        merchants: Default::default(),
    }
}

/// The events handler on `config`'s table, as the events function runs it
/// (its calls recorded for infra/tests/test_iam.py).
async fn handler(config: &Config, sinks: Vec<SinkConfig>) -> Events {
    let mut config = config.clone();
    config.deliveries.sinks = sinks;
    config.backend.aws.call_log = support::deployed::call_log_path("lambda-events");
    Events::from_config(&config).await.unwrap()
}

/// Invokes the handler with `records` in batches of `size`, starting each
/// batch again where the previous one reported a failure.
async fn invoke(events: &Events, records: &[Value], size: usize) -> usize {
    let mut sent = 0;
    for batch in records.chunks(size) {
        let report = events
            .handle_batch(json!({ "Records": batch }))
            .await
            .unwrap();
        assert_eq!(report.failed_at, None, "{report:?}");
        sent += report.messages;
    }
    sent
}

/// Each payment's events, by payment key, in the order given.
fn by_payment(events: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in events {
        out.entry(e["payment"]["key"].as_str().unwrap().to_owned())
            .or_default()
            .push(comparable(e));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_gives_the_events_the_embedded_outbox_records() {
    // The embedded backend's outbox for the notifications.
    let local = spawn_app(Kind::Local).await;
    let ids = traffic(&local).await;
    let store = local.app().backends.deliveries.clone().unwrap();
    let mut expected = BTreeMap::new();
    for id in &ids {
        let records = store.outbox_for(key(id).as_str()).await.unwrap();
        let bodies: Vec<Value> = records
            .iter()
            .map(|r| serde_json::from_str(&r.body).unwrap())
            .collect();
        expected.insert(
            key(id).as_str().to_owned(),
            bodies.iter().map(comparable).collect::<Vec<_>>(),
        );
    }
    let kinds: Vec<usize> = expected.values().map(Vec::len).collect();
    assert_eq!(
        kinds,
        vec![6, 1, 2, 7],
        "the embedded outbox: {expected:#?}"
    );
    // Every event names the merchant's order (the simulator's purchase of
    // p1 is order op1), a refund's and an attention's too; the stream's
    // below must equal these.
    for e in expected.values().flatten() {
        let reference = e["payment"]["reference"].as_str().unwrap();
        assert_eq!(e["payment"]["order_id"], format!("o{reference}"), "{e}");
    }

    // The same on the emulator, through the stream.
    let t = spawn_streaming(paynotify::app::AppOptions::all()).await;
    traffic(&t).await;
    let records = stream_records(&t.config).await;
    let fifo = queue(
        &t.config,
        &format!("{}-events.fifo", t.config.backend.aws.queue),
        true,
    )
    .await;
    let attention = queue(
        &t.config,
        &format!("{}-attention", t.config.backend.aws.queue),
        false,
    )
    .await;
    let mut only_attention = sink("attention", &attention);
    only_attention.event_types = [paynotify_shared::outgoing::EventType::NeedsAttention].into();
    let events = handler(&t.config, vec![sink("orders", &fifo), only_attention]).await;
    // Every record twice, as after a lost answer: the FIFO queue keeps one
    // of each (its deduplication id is the event's id).
    let sent = invoke(&events, &records, 7).await;
    assert_eq!(sent, 16 + 1);
    assert_eq!(invoke(&events, &records, 3).await, sent);
    let received = drain(&t.config, &fifo).await;
    assert_eq!(by_payment(&received), expected);

    let flagged = drain(&t.config, &attention).await;
    let flagged: Vec<(Value, Value)> = flagged
        .iter()
        .map(|e| (e["type"].clone(), e["payment"]["reference"].clone()))
        .collect();
    // A standard queue: at least once (both invocations sent it).
    assert!(!flagged.is_empty());
    assert!(flagged
        .iter()
        .all(|f| *f == (json!("payment.needs_attention"), json!("pk"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_stops_the_batch_at_its_record_and_a_retry_completes_it() {
    let t = spawn_streaming(paynotify::app::AppOptions::all()).await;
    let sim = &t.sim;
    for id in ["f1", "f2", "f3"] {
        sim.send(sim.purchase(id, 1000)).await;
        t.wait_for_status(id, PaymentStatus::Paid).await;
    }
    let records = stream_records(&t.config).await;
    let name = format!("{}-events.fifo", t.config.backend.aws.queue);
    let url = queue(&t.config, &name, true).await;
    let clients = paynotify_shared::backend::aws::Clients::new(&t.config.backend.aws).await;
    clients
        .sqs
        .delete_queue()
        .queue_url(&url)
        .send()
        .await
        .unwrap();
    let events = handler(&t.config, vec![sink("orders", &url)]).await;

    // The queue is gone: the first record with an event fails, and the
    // batch stops there (nothing after it is sent ahead of it).
    let batch = json!({ "Records": records });
    let report = events.handle_batch(batch.clone()).await.unwrap();
    let first_with_event = records
        .iter()
        .position(|r| r["dynamodb"]["NewImage"]["status"].is_object())
        .unwrap();
    assert_eq!(
        report.failed_at.as_deref(),
        records[first_with_event]["dynamodb"]["SequenceNumber"].as_str()
    );
    assert_eq!(report.messages, 0);
    let answer = events.handle(batch).await.unwrap();
    assert_eq!(
        answer["batchItemFailures"][0]["itemIdentifier"],
        records[first_with_event]["dynamodb"]["SequenceNumber"]
    );

    // Lambda starts again from that record once the queue is back.
    let again = queue(&t.config, &name, true).await;
    assert_eq!(again, url);
    let report = events
        .handle_batch(json!({ "Records": records[first_with_event..] }))
        .await
        .unwrap();
    assert_eq!((report.failed_at, report.messages), (None, 3));
    let got: Vec<String> = drain(&t.config, &url)
        .await
        .iter()
        .map(|e| e["payment"]["reference"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, ["f1", "f2", "f3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_ledger_cannot_have_written_fail_and_others_give_nothing() {
    let t = spawn_streaming(paynotify::app::AppOptions::all()).await;
    t.sim.send(t.sim.purchase("b1", 1000)).await;
    t.wait_for_status("b1", PaymentStatus::Paid).await;
    let records = stream_records(&t.config).await;
    let url = queue(
        &t.config,
        &format!("{}-e.fifo", t.config.backend.aws.queue),
        true,
    )
    .await;
    let events = handler(&t.config, vec![sink("orders", &url)]).await;
    let written = records
        .iter()
        .find(|r| r["dynamodb"]["NewImage"]["status"].is_object())
        .unwrap()
        .clone();

    let mut tampered = Vec::new();
    // A stored event that is not the ledger's JSON.
    let mut bad = written.clone();
    bad["dynamodb"]["NewImage"]["events"] = json!({"L": [{"S": "{not json"}]});
    tampered.push(bad);
    // A status the ledger does not have.
    let mut bad = written.clone();
    bad["dynamodb"]["NewImage"]["status"] = json!({"S": "SHIPPED"});
    tampered.push(bad);
    // An attribute value of no DynamoDB type.
    let mut bad = written.clone();
    bad["dynamodb"]["NewImage"]["version"] = json!({"Q": "1"});
    tampered.push(bad);
    // Fewer events than before.
    let mut bad = written.clone();
    bad["dynamodb"]["OldImage"] = bad["dynamodb"]["NewImage"].clone();
    bad["dynamodb"]["OldImage"]["recorded"] = json!({"N": "9"});
    tampered.push(bad);
    for bad in tampered {
        let seq = bad["dynamodb"]["SequenceNumber"].clone();
        let answer = events.handle(json!({ "Records": [bad] })).await.unwrap();
        assert_eq!(answer["batchItemFailures"][0]["itemIdentifier"], seq);
    }

    // A removal, an item that is not a payment's: nothing to send.
    let mut removed = written.clone();
    removed["eventName"] = json!("REMOVE");
    removed["dynamodb"]
        .as_object_mut()
        .unwrap()
        .remove("NewImage");
    let mut watch = written.clone();
    watch["dynamodb"]["NewImage"]["sk"] = json!({"S": "WATCH"});
    let report = events
        .handle_batch(json!({ "Records": [removed, watch] }))
        .await
        .unwrap();
    assert_eq!((report.events, report.failed_at), (0, None));

    // Not a stream batch at all: the invocation fails and Lambda retries it.
    assert!(events
        .handle(json!({"Records": [{"eventName": "INSERT"}]}))
        .await
        .is_err());
    assert!(events
        .handle(json!({"detail-type": "Scheduled Event"}))
        .await
        .is_err());
    assert!(drain(&t.config, &url).await.is_empty());
}

/// A queue's ARN on the emulator.
async fn queue_arn(config: &Config, url: &str) -> String {
    let clients = paynotify_shared::backend::aws::Clients::new(&config.backend.aws).await;
    let got = clients
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names("QueueArn".into())
        .send()
        .await
        .unwrap();
    got.attributes.unwrap()[&"QueueArn".into()].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_and_eventbridge_sinks_get_every_event_with_its_type() {
    let t = spawn_streaming(paynotify::app::AppOptions::all()).await;
    let sim = &t.sim;
    for id in ["t1", "t2"] {
        sim.send(sim.purchase(id, 1000)).await;
        t.wait_for_status(id, PaymentStatus::Paid).await;
        sim.send(sim.refund(id, &format!("{id}-r"), 400)).await;
        t.wait_for_status(id, PaymentStatus::PartiallyRefunded)
            .await;
    }
    let config = &t.config;
    let name = &config.backend.aws.queue;
    let clients = paynotify_shared::backend::aws::Clients::new(&config.backend.aws).await;

    // A topic with a queue subscribed (raw: the body is the message).
    let topic = clients
        .sns
        .create_topic()
        .name(format!("{name}-events"))
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    let from_topic = queue(config, &format!("{name}-from-topic"), false).await;
    clients
        .sns
        .subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(queue_arn(config, &from_topic).await)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .unwrap();

    // A bus whose rule takes paynotify's events to a queue.
    let bus = format!("{name}-bus");
    clients
        .eventbridge
        .create_event_bus()
        .name(&bus)
        .send()
        .await
        .unwrap();
    clients
        .eventbridge
        .put_rule()
        .name("paynotify")
        .event_bus_name(&bus)
        .event_pattern(json!({ "source": ["paynotify"] }).to_string())
        .send()
        .await
        .unwrap();
    let from_bus = queue(config, &format!("{name}-from-bus"), false).await;
    clients
        .eventbridge
        .put_targets()
        .rule("paynotify")
        .event_bus_name(&bus)
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(queue_arn(config, &from_bus).await)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    let fifo = queue(config, &format!("{name}-events.fifo"), true).await;
    let mut sns = sink("topic", &topic);
    sns.kind = SinkKind::Sns;
    let mut eventbridge = sink("bus", &bus);
    eventbridge.kind = SinkKind::Eventbridge;
    let events = handler(config, vec![sink("orders", &fifo), sns, eventbridge]).await;
    let records = stream_records(config).await;
    assert_eq!(invoke(&events, &records, 100).await, 3 * 4);

    // The FIFO queue's events are the reference.
    let reference = drain(config, &fifo).await;
    let ids = |events: &[Value]| {
        let mut ids: Vec<String> = events
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(reference.len(), 4);
    let from_topic = drain(config, &from_topic).await;
    assert_eq!(ids(&from_topic), ids(&reference));
    let from_bus = drain(config, &from_bus).await;
    let details: Vec<Value> = from_bus.iter().map(|e| e["detail"].clone()).collect();
    assert_eq!(ids(&details), ids(&reference));
    for e in &from_bus {
        assert_eq!(e["source"], "paynotify");
        assert_eq!(e["detail-type"], e["detail"]["type"]);
    }
    for e in &reference {
        assert!(from_topic.contains(e) && details.contains(e), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_carries_ten_payments_and_each_payment_stays_in_order() {
    let t = spawn_streaming(paynotify::app::AppOptions::all()).await;
    let sim = &t.sim;
    let ids: Vec<String> = (0..20).map(|i| format!("n{i:02}")).collect();
    for id in &ids {
        sim.send(sim.purchase(id, 1000)).await;
    }
    for id in &ids {
        t.wait_for_status(id, PaymentStatus::Paid).await;
    }
    // One payment with three writes in the same invocation.
    sim.send(sim.purchase("line", 1000)).await;
    t.wait_for_status("line", PaymentStatus::Paid).await;
    for (i, amount) in [(1, 100), (2, 900)] {
        sim.send(sim.refund("line", &format!("line-r{i}"), amount))
            .await;
        wait_entry(&t, "line", "refunded", |e| {
            e.state
                .as_ref()
                .is_some_and(|s| s.refunded_minor == if i == 1 { 100 } else { 1000 })
        })
        .await;
    }
    let records = stream_records(&t.config).await;
    let fifo = queue(
        &t.config,
        &format!("{}-events.fifo", t.config.backend.aws.queue),
        true,
    )
    .await;
    let events = handler(&t.config, vec![sink("orders", &fifo)]).await;
    let report = events
        .handle_batch(json!({ "Records": records }))
        .await
        .unwrap();
    assert_eq!((report.events, report.messages), (23, 23));
    assert_eq!(report.failed_at, None);
    // 21 payments' first events fill three requests; the line's second and
    // third events each wait for the request before them.
    assert_eq!(report.requests, 5, "{report:?}");
    let received = drain(&t.config, &fifo).await;
    let line: Vec<&str> = received
        .iter()
        .filter(|e| e["payment"]["reference"] == "line")
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        line,
        [
            "payment.paid",
            "payment.partially_refunded",
            "payment.refunded"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_whose_replies_were_lost_give_each_transition_one_event() {
    // Ledger writes that happen and then report failure (a lost reply), and
    // calls that fail outright: the worker retries, a retry of a write that
    // happened is a duplicate. The stream has exactly the writes that
    // happened: the sink's events, deduplicated on the id, are the ledger's
    // transitions, each payment's in order.
    let options = paynotify::app::AppOptions {
        faults: true,
        ..paynotify::app::AppOptions::all()
    };
    let t = spawn_streaming(options).await;
    let ledger = &t.faults().ledger;
    ledger.only(Some(&["write"]));
    ledger.set_lost_reply_rate(0.3);
    ledger.set_error_rate(0.1);
    let sim = &t.sim;
    let ids: Vec<String> = (0..12).map(|i| format!("c{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        if i % 3 == 0 {
            sim.send(sim.refund(id, &format!("{id}-early"), 300)).await;
        }
        sim.send(sim.purchase(id, 1000)).await;
        if i % 2 == 0 {
            sim.send(sim.refund(id, &format!("{id}-late"), 200)).await;
        }
    }
    for (i, id) in ids.iter().enumerate() {
        let status = if i % 3 == 0 || i % 2 == 0 {
            PaymentStatus::PartiallyRefunded
        } else {
            PaymentStatus::Paid
        };
        t.wait_for_status(id, status).await;
        if i % 3 == 0 && i % 2 == 0 {
            wait_entry(&t, id, "refunded twice", |e| {
                e.state.as_ref().is_some_and(|s| s.refunded_minor == 500)
            })
            .await;
        }
    }
    ledger.set_lost_reply_rate(0.0);
    ledger.set_error_rate(0.0);
    let injected = t.faults().ledger.injected();
    assert!(injected > 0, "no fault was injected");

    let records = stream_records(&t.config).await;
    let fifo = queue(
        &t.config,
        &format!("{}-events.fifo", t.config.backend.aws.queue),
        true,
    )
    .await;
    let events = handler(&t.config, vec![sink("orders", &fifo)]).await;
    invoke(&events, &records, 10).await;
    let received = drain(&t.config, &fifo).await;
    let mut seen = std::collections::HashSet::new();
    let mut heard: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut last: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for e in &received {
        assert!(
            seen.insert(e["id"].as_str().unwrap().to_owned()),
            "sent twice: {e}"
        );
        let key = e["payment"]["key"].as_str().unwrap().to_owned();
        let at = (
            e["payment"]["version"].as_u64().unwrap(),
            e["payment"]["sequence"].as_u64().unwrap(),
        );
        assert!(
            last.get(&key).is_none_or(|before| *before < at),
            "out of order: {e}"
        );
        last.insert(key.clone(), at);
        heard
            .entry(key)
            .or_default()
            .push(e["payment"]["status"].as_str().unwrap().to_owned());
    }
    let ledger_view = paynotify::receiver::ledger_statuses(
        t.app().backends.ledger.as_ref(),
        ids.iter().map(|id| key(id)),
    )
    .await
    .unwrap();
    assert_eq!(heard, ledger_view, "{injected} faults injected");
}
