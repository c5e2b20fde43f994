//! The Lambda handlers, invoked directly with fixture events (as Lambda
//! would, without its runtime): an API Gateway payload 2.0 request with a
//! plain and a base64 body, and SQS batches built from real receives of the
//! queue (their receipt handles are the emulator's). Each test runs on both
//! backends; the server and the Lambda modes are compared on the same
//! notifications.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use aws_lambda_events::encodings::Body;
use aws_lambda_events::sqs::SqsEvent;
use base64::Engine as _;
use paynotify::simulate::Simulator;
use paynotify_ingest::IngestState;
use paynotify_lambda::http::Ingest;
use paynotify_lambda::sqs::Worker;
use paynotify_shared::backend::Backends;
use paynotify_shared::config::Config;
use paynotify_shared::envelope::Envelope;
use paynotify_shared::faults::FaultyBackends;
use paynotify_shared::metered;
use paynotify_shared::ports::{LedgerExt, QueueMessage};
use paynotify_shared::testpki::{generate, TestPki, TestPkiOptions};
use paynotify_shared::{PaymentKey, PaymentState, PaymentStatus};
use paynotify_worker::{Hooks, Stats, WorkerContext};
use serde_json::{json, Value};
use support::app::{config_in, spawn_app, MERCHANT};
use support::deployed::Deployed;
use support::Kind;

#[macro_use]
mod support;

on_both_backends!(
    a_signed_notification_through_both_handlers_is_applied,
    a_mixed_batch_fails_only_the_record_whose_write_failed,
    the_server_and_lambda_modes_store_and_decide_alike,
);

/// Both handlers on fresh backends, with fault switchboards.
struct Lambda {
    _dir: tempfile::TempDir,
    config: Config,
    backends: Backends,
    faults: FaultyBackends,
    ingest: Ingest,
    worker: Worker,
}

impl Lambda {
    /// Handlers trusting `pki` on fresh backends of `kind`.
    async fn start(kind: Kind, pki: &TestPki) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_in(dir.path(), pki);
        support::prepare(kind, &mut config.backend, dir.path()).await;
        let (mut backends, metrics) = metered::build(&config.backend).await.unwrap();
        let faults = FaultyBackends::wrap(&mut backends);
        let ingest = Ingest::new(
            IngestState::new(&config, &backends, metrics.clone(), false),
            config.ingest.max_body_bytes,
        );
        let ctx = WorkerContext::build(
            &config,
            &backends,
            Arc::new(Stats::default()),
            metrics,
            Hooks::default(),
        )
        .await
        .unwrap();
        let worker = Worker::new(ctx);
        Self {
            _dir: dir,
            config,
            backends,
            faults,
            ingest,
            worker,
        }
    }

    /// Invokes the ingest with `body`; the status and the answer's text.
    async fn post(&self, request: ApiGatewayV2httpRequest) -> (i64, String) {
        let response = self.ingest.handle(request).await;
        let body = match response.body {
            Some(Body::Text(t)) => t,
            Some(Body::Empty) | None => String::new(),
            Some(other) => panic!("a text answer, not {other:?}"),
        };
        (response.status_code, body)
    }

    /// Receives `n` messages from the queue, as Lambda's poller would.
    async fn receive(&self, n: usize) -> Vec<QueueMessage> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        while got.len() < n {
            assert!(Instant::now() < deadline, "received {} of {n}", got.len());
            let batch = self
                .backends
                .queue
                .receive(n - got.len(), Duration::from_millis(200))
                .await
                .unwrap();
            got.extend(batch);
        }
        got
    }

    /// Invokes the worker with an SQS event of `messages`; the message ids
    /// it reports as failed. Nothing is deleted: Lambda lost the answer.
    async fn invoke_only(&self, messages: &[QueueMessage]) -> Vec<String> {
        let response = self.worker.handle(sqs_event(messages)).await.unwrap();
        response["batchItemFailures"]
            .as_array()
            .expect("an SQS batch response")
            .iter()
            .map(|f| f["itemIdentifier"].as_str().unwrap().to_owned())
            .collect()
    }

    /// [`Lambda::invoke_only`], then what Lambda does with the answer:
    /// deletes every record not reported as failed (those already off the
    /// queue, dead-lettered, included: a stale receipt is not an error).
    async fn invoke_worker(&self, messages: &[QueueMessage]) -> Vec<String> {
        let failed = self.invoke_only(messages).await;
        for m in messages.iter().filter(|m| !failed.contains(&m.id)) {
            let _ = self.backends.queue.delete(&m.receipt).await;
        }
        failed
    }

    async fn payment(&self, query_id: &str) -> Option<PaymentState> {
        let key = PaymentKey::new("unionpay", MERCHANT, query_id);
        self.backends.ledger.get_payment(&key).await.unwrap()
    }

    async fn dlq_reasons(&self) -> Vec<String> {
        support::dlq_reasons(self.backends.dead_letters.as_ref()).await
    }

    /// Every archived envelope.
    async fn archived(&self) -> Vec<Envelope> {
        support::archived(self.backends.archive.as_ref())
            .await
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }
}

/// The fixture request to `/notify/{source}` carrying `body`, base64-encoded
/// when `base64` (as API Gateway sends binary media).
fn http_event(source: &str, body: &[u8], base64: bool) -> ApiGatewayV2httpRequest {
    let mut event: Value =
        serde_json::from_str(include_str!("fixtures/lambda/apigw_v2_request.json")).unwrap();
    let path = format!("/notify/{source}");
    event["rawPath"] = json!(path);
    event["requestContext"]["http"]["path"] = json!(path);
    if base64 {
        event["body"] = json!(base64::engine::general_purpose::STANDARD.encode(body));
        event["isBase64Encoded"] = json!(true);
    } else {
        event["body"] = json!(std::str::from_utf8(body).unwrap());
    }
    serde_json::from_value(event).unwrap()
}

/// An SQS event of `messages`, each record as Lambda delivers it.
fn sqs_event(messages: &[QueueMessage]) -> Value {
    let template: Value =
        serde_json::from_str(include_str!("fixtures/lambda/sqs_record.json")).unwrap();
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let mut r = template.clone();
            r["messageId"] = json!(m.id);
            r["receiptHandle"] = json!(m.receipt.0);
            r["body"] = json!(String::from_utf8(m.body.clone()).unwrap());
            r["attributes"]["ApproximateReceiveCount"] = json!(m.receive_count.to_string());
            let first = m
                .first_received_at
                .map_or(0, |t| t.unix_timestamp_nanos() / 1_000_000);
            r["attributes"]["ApproximateFirstReceiveTimestamp"] = json!(first.to_string());
            r
        })
        .collect();
    // The event deserialises as Lambda's own type, too.
    let event = json!({ "Records": records });
    let typed: SqsEvent = serde_json::from_value(event.clone()).unwrap();
    assert_eq!(typed.records.len(), messages.len());
    event
}

fn simulator(pki: &TestPki) -> Arc<Simulator> {
    Simulator::new(
        pki.leaf_key_pem.as_bytes(),
        &pki.leaf_pem,
        MERCHANT,
        "http://127.0.0.1:9/notify/unionpay",
    )
    .unwrap()
}

async fn a_signed_notification_through_both_handlers_is_applied(kind: Kind) {
    let pki = generate(&TestPkiOptions::default()).unwrap();
    let sim = simulator(&pki);
    let l = Lambda::start(kind, &pki).await;
    let success = l.config.sources["unionpay"].success_body().to_owned();

    let plain = sim.purchase("q1", 1000);
    let encoded = sim.purchase("q2", 2500);
    assert_eq!(
        l.post(http_event("unionpay", plain.as_bytes(), false))
            .await,
        (200, success.clone())
    );
    assert_eq!(
        l.post(http_event("unionpay", encoded.as_bytes(), true))
            .await,
        (200, success)
    );
    // The archive holds the exact bytes, whichever way they came.
    let mut bodies: Vec<_> = l
        .archived()
        .await
        .iter()
        .map(|e| e.body_bytes().unwrap())
        .collect();
    bodies.sort();
    let mut sent = vec![plain.into_bytes(), encoded.into_bytes()];
    sent.sort();
    assert_eq!(bodies, sent);

    let messages = l.receive(2).await;
    assert!(l.invoke_only(&messages).await.is_empty());
    let q1 = l.payment("q1").await.expect("q1 applied");
    assert_eq!((q1.status, q1.paid_minor), (PaymentStatus::Paid, 1000));
    let q2 = l.payment("q2").await.expect("q2 applied");
    assert_eq!((q2.status, q2.paid_minor), (PaymentStatus::Paid, 2500));
    // Acknowledged records are left to Lambda to delete: the worker
    // deleted nothing, so the messages are in flight until Lambda does.
    let stats = l.backends.queue.stats().await.unwrap();
    assert_eq!(stats.in_flight, 2, "{stats:?}");
    assert_eq!(l.worker.context().stats.snapshot().applied, 2);

    // A redelivery of the same batch (Lambda lost the response) is absorbed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = l.receive(2).await;
    assert!(l.invoke_worker(&again).await.is_empty());
    assert_eq!(l.worker.context().stats.snapshot().duplicates, 2);
    assert_eq!(l.payment("q1").await.unwrap(), q1);
    assert_eq!(l.backends.queue.depth().await.unwrap(), 0);
}

async fn a_mixed_batch_fails_only_the_record_whose_write_failed(kind: Kind) {
    let pki = generate(&TestPkiOptions::default()).unwrap();
    let sim = simulator(&pki);
    let forged_pki = generate(&TestPkiOptions::default()).unwrap();
    let forger = simulator(&forged_pki);
    let l = Lambda::start(kind, &pki).await;

    let bodies = [
        sim.purchase("good", 1000),
        forger.purchase("forged", 1000),
        sim.refund("never-sent", "early-refund", 300),
        sim.purchase("flaky", 700),
    ];
    for body in &bodies {
        let (status, _) = l.post(http_event("unionpay", body.as_bytes(), false)).await;
        assert_eq!(status, 200);
    }
    let messages = l.receive(4).await;
    // Which message carries the purchase whose ledger write will fail.
    let flaky = messages
        .iter()
        .find(|m| String::from_utf8_lossy(&m.body).contains("queryId=flaky"))
        .expect("the flaky purchase was enqueued")
        .id
        .clone();
    l.faults.ledger.only(Some(&["write"]));
    l.faults
        .ledger
        .only_payment(Some(PaymentKey::new("unionpay", MERCHANT, "flaky")));
    l.faults.ledger.set_down(true);

    assert_eq!(l.invoke_worker(&messages).await, vec![flaky.clone()]);
    assert_eq!(l.faults.ledger.injected(), 1);
    assert_eq!(
        l.payment("good").await.map(|p| p.status),
        Some(PaymentStatus::Paid)
    );
    assert_eq!(l.payment("flaky").await, None);
    assert_eq!(l.dlq_reasons().await, vec!["untrusted_certificate"]);
    let parked = l
        .backends
        .ledger
        .parked_before(time::OffsetDateTime::now_utc() + time::Duration::DAY, 100)
        .await
        .unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(
        parked[0].payment_key,
        PaymentKey::new("unionpay", MERCHANT, "never-sent")
    );
    let stats = l.worker.context().stats.snapshot();
    assert_eq!((stats.applied, stats.parked, stats.retried), (1, 1, 1));

    // The failed record comes back after its retry delay (set by
    // ChangeMessageVisibility, not Lambda), alone, and is applied.
    l.faults.ledger.set_down(false);
    let retried = l.receive(1).await;
    assert_eq!(retried[0].id, flaky);
    assert_eq!(retried[0].receive_count, 2);
    assert!(l.invoke_worker(&retried).await.is_empty());
    assert_eq!(
        l.payment("flaky").await.map(|p| (p.status, p.paid_minor)),
        Some((PaymentStatus::Paid, 700))
    );

    // The schedule's parked check counts the early refund (not overdue yet).
    let scheduled: Value =
        serde_json::from_str(include_str!("fixtures/lambda/scheduled_event.json")).unwrap();
    assert_eq!(
        l.worker.handle(scheduled).await.unwrap(),
        json!({"overdue": 0, "conflicted": 0, "queries_asked": 0, "queries_finished": 0})
    );
    assert!(l.worker.handle(json!({"hello": 1})).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_ingest_refuses_answer_as_the_server_does() {
    let pki = generate(&TestPkiOptions::default()).unwrap();
    let l = Lambda::start(Kind::Local, &pki).await;
    let body = b"accessType=0&bizType=000201";

    assert_eq!(
        l.post(http_event("nope", body, false)).await,
        (404, "unknown source\n".into())
    );
    let mut wrong_path = http_event("unionpay", body, false);
    wrong_path.raw_path = Some("/notify/unionpay/extra".into());
    assert_eq!(l.post(wrong_path).await.0, 404);
    let mut get = http_event("unionpay", body, false);
    get.request_context.http.method = aws_lambda_events::http::Method::GET;
    assert_eq!(l.post(get).await.0, 405);
    let big = vec![b'a'; l.config.ingest.max_body_bytes + 1];
    assert_eq!(l.post(http_event("unionpay", &big, true)).await.0, 413);
    let mut bad = http_event("unionpay", body, false);
    bad.is_base64_encoded = true;
    bad.body = Some("not base64!".into());
    assert_eq!(l.post(bad).await.0, 400);
    assert!(l.archived().await.is_empty());
    assert_eq!(l.backends.queue.depth().await.unwrap(), 0);

    // A body that is not UTF-8 (only base64 can carry it) is archived as is.
    let binary = [0xff_u8, 0xfe, b'a', b'=', 0x80];
    assert_eq!(l.post(http_event("unionpay", &binary, true)).await.0, 200);
    let archived = l.archived().await;
    assert_eq!(archived[0].body_bytes().unwrap(), binary);
    assert_eq!(archived[0].remote_addr.as_deref(), Some("203.0.113.7"));

    // A store that fails answers 503, so the PSP sends it again.
    l.faults.archive.set_down(true);
    assert_eq!(
        l.post(http_event("unionpay", body, false)).await,
        (503, "archive unavailable\n".into())
    );
    l.faults.archive.set_down(false);
    l.faults.queue.only(Some(&["send"]));
    l.faults.queue.set_down(true);
    assert_eq!(
        l.post(http_event("unionpay", body, false)).await,
        (503, "queue unavailable\n".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incomplete_sqs_record_fails_the_whole_batch() {
    let pki = generate(&TestPkiOptions::default()).unwrap();
    let l = Lambda::start(Kind::Local, &pki).await;
    let mut event = sqs_event(&[]);
    let mut record: Value =
        serde_json::from_str(include_str!("fixtures/lambda/sqs_record.json")).unwrap();
    record.as_object_mut().unwrap().remove("receiptHandle");
    event["Records"] = json!([record]);
    let err = l.worker.handle(event).await.unwrap_err();
    assert!(err.to_string().contains("receiptHandle"), "{err}");
}

/// The envelope as JSON without what differs by transport or instant: its
/// id, receive time and remote address (the server sees the client's port;
/// API Gateway gives only the address).
fn comparable(e: &Envelope) -> Value {
    let mut v = serde_json::to_value(e).unwrap();
    let o = v.as_object_mut().unwrap();
    for k in ["id", "received_at", "remote_addr"] {
        o.remove(k);
    }
    v
}

async fn the_server_and_lambda_modes_store_and_decide_alike(kind: Kind) {
    let t = spawn_app(kind).await;
    let forger = t.forger();
    let purchase = t.sim.purchase("same", 1234);
    let forged = forger.purchase("forged", 1234);
    assert_eq!(t.post(purchase).await, 200);
    assert_eq!(t.post(forged).await, 200);
    let server_state = t.wait_for_status("same", PaymentStatus::Paid).await;
    t.wait_until_drained().await;
    let server_dlq = t.dlq_reasons().await;
    let mut server_archive = Vec::new();
    let archive = &t.app().backends.archive;
    for (_, e) in support::archived(archive.as_ref()).await {
        server_archive.push(e);
    }
    server_archive.sort_by_key(|e| e.body.clone());

    let l = Lambda::start(kind, &t.pki).await;
    for envelope in &server_archive {
        // The same request as the server saw it: its headers, its body.
        let mut event = http_event("unionpay", &envelope.body_bytes().unwrap(), false);
        event.headers.clear();
        for (k, v) in &envelope.headers {
            event.headers.append(
                aws_lambda_events::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        assert_eq!(l.post(event).await.0, 200);
    }
    let messages = l.receive(2).await;
    assert!(l.invoke_worker(&messages).await.is_empty());

    let mut lambda_archive = l.archived().await;
    lambda_archive.sort_by_key(|e| e.body.clone());
    assert_eq!(lambda_archive.len(), server_archive.len());
    for (s, a) in server_archive.iter().zip(&lambda_archive) {
        assert_eq!(comparable(s), comparable(a));
        let partition = |e: &Envelope| {
            let key = e.partition();
            key[..key.find("date=").unwrap()].to_owned()
        };
        assert_eq!(partition(s), partition(a));
    }
    assert_eq!(l.payment("same").await, Some(server_state));
    assert_eq!(l.dlq_reasons().await, server_dlq);
    assert_eq!(server_dlq, vec!["untrusted_certificate"]);
}

/// A deployment on the emulator (`support::deployed`).
async fn deployed() -> Deployed {
    Deployed::new().await
}

use support::binary;

/// A bootstrap started as Lambda starts it: no arguments, its settings in
/// the environment. Killed when dropped.
///
/// With `PAYNOTIFY_TEST_LAMBDA_PACKAGES=DIR` it runs the packages
/// `scripts/package_lambda.sh` built, unzipped in `DIR/ingest` and
/// `DIR/worker`, as Lambda does: `bootstrap` in `LAMBDA_TASK_ROOT`, whose
/// `paynotify.toml` it reads; `PAYNOTIFY_TEST_LAMBDA_RUNNER` prefixes the
/// command (`qemu-aarch64 -L /usr/aarch64-linux-gnu` for an arm64 package).
struct Bootstrap(std::process::Child);

impl Bootstrap {
    fn start(name: &str, deployed: &Deployed, api: &support::runtime_api::RuntimeApi) -> Self {
        let mut env = deployed.env_as(name.trim_start_matches("paynotify-"));
        let mut command = match std::env::var_os("PAYNOTIFY_TEST_LAMBDA_PACKAGES") {
            Some(dir) => {
                let function = name.trim_start_matches("paynotify-lambda-");
                let root = std::path::Path::new(&dir).join(function);
                env.retain(|(k, _)| k != paynotify_lambda::CONFIG_ENV);
                env.push(("LAMBDA_TASK_ROOT".into(), root.display().to_string()));
                let runner = std::env::var("PAYNOTIFY_TEST_LAMBDA_RUNNER").unwrap_or_default();
                let mut words: Vec<String> = runner.split_whitespace().map(str::to_owned).collect();
                words.push(root.join("bootstrap").display().to_string());
                let mut c = std::process::Command::new(&words[0]);
                c.args(&words[1..]);
                c
            }
            None => std::process::Command::new(binary(name)),
        };
        let child = command
            .env_clear()
            .envs(env)
            .envs(api.env(name))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }
}

impl Drop for Bootstrap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The answer of a [`support::runtime_api::Outcome::Response`].
fn answered(outcome: support::runtime_api::Outcome) -> Value {
    match outcome {
        support::runtime_api::Outcome::Response(v) => v,
        other => panic!("an answer, not {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_binaries_run_on_the_runtime_api_with_the_deployed_configuration() {
    use support::runtime_api::{Outcome, RuntimeApi};
    let d = deployed().await;
    let sim = simulator(&d.pki);
    let (ingest_api, worker_api) = (RuntimeApi::start().await, RuntimeApi::start().await);
    let _ingest = Bootstrap::start("paynotify-lambda-ingest", &d, &ingest_api);
    let _worker = Bootstrap::start("paynotify-lambda-worker", &d, &worker_api);
    let wait = Duration::from_secs(60);

    let body = sim.purchase("boot", 4200);
    let event = serde_json::to_value(http_event("unionpay", body.as_bytes(), true)).unwrap();
    ingest_api.invoke("http-1", event);
    let answer = answered(ingest_api.outcome("http-1", wait).await.0);
    assert_eq!(answer["statusCode"], 200, "{answer}");
    assert_eq!(answer["body"], d.config.sources["unionpay"].success_body());

    let backends = paynotify_shared::backend::build(&d.config.backend)
        .await
        .unwrap();
    let messages = {
        let deadline = Instant::now() + wait;
        loop {
            let m = backends
                .queue
                .receive(10, Duration::from_millis(500))
                .await
                .unwrap();
            if !m.is_empty() || Instant::now() > deadline {
                break m;
            }
        }
    };
    assert_eq!(messages.len(), 1);
    worker_api.invoke("sqs-1", sqs_event(&messages));
    let answer = answered(worker_api.outcome("sqs-1", wait).await.0);
    assert_eq!(answer["batchItemFailures"], json!([]), "{answer}");
    let key = PaymentKey::new("unionpay", MERCHANT, "boot");
    let paid = backends.ledger.get_payment(&key).await.unwrap().unwrap();
    assert_eq!((paid.status, paid.paid_minor), (PaymentStatus::Paid, 4200));

    let scheduled: Value =
        serde_json::from_str(include_str!("fixtures/lambda/scheduled_event.json")).unwrap();
    worker_api.invoke("schedule-1", scheduled);
    let answer = answered(worker_api.outcome("schedule-1", wait).await.0);
    assert_eq!(
        answer,
        json!({"overdue": 0, "conflicted": 0, "queries_asked": 0, "queries_finished": 0})
    );
    // An event it does not know fails the invocation, as an error Lambda's
    // logs and metrics name.
    worker_api.invoke("odd-1", json!({"hello": "world"}));
    match worker_api.outcome("odd-1", wait).await.0 {
        Outcome::Error(e) => assert_eq!(e["errorType"], "UnexpectedEvent", "{e}"),
        other => panic!("an error, not {other:?}"),
    }
}

/// Cold start and warm per-record times of the release bootstraps against
/// the emulator (`scripts/bench_lambda.sh` runs it; BENCHMARKS.md has the
/// figures). Prints, asserts nothing about time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: scripts/bench_lambda.sh"]
async fn measure_lambda_cold_start_and_warm_records() {
    use support::runtime_api::RuntimeApi;
    let rounds: usize = std::env::var("PAYNOTIFY_BENCH_COLD_STARTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let records: usize = 200;
    let d = deployed().await;
    let sim = simulator(&d.pki);
    let wait = Duration::from_secs(60);
    let mut cold = Vec::new();
    for name in ["paynotify-lambda-ingest", "paynotify-lambda-worker"] {
        let mut init = Vec::new();
        for _ in 0..rounds {
            let api = RuntimeApi::start().await;
            let spawned = Instant::now();
            let _process = Bootstrap::start(name, &d, &api);
            init.push(api.ready_at(wait).await - spawned);
        }
        cold.push((name, init));
    }
    for (name, mut init) in cold {
        init.sort();
        println!(
            "{name}: cold start (spawn to first invocation/next) over {rounds}: p50 {:.1} ms, max {:.1} ms",
            init[init.len() / 2].as_secs_f64() * 1e3,
            init[init.len() - 1].as_secs_f64() * 1e3
        );
    }

    // The emulator's own share: the two calls ingest makes, made directly.
    let backends = paynotify_shared::backend::build(&d.config.backend)
        .await
        .unwrap();
    let mut floor = Vec::new();
    for i in 0..records {
        let body = sim.purchase(&format!("floor{i}"), 100);
        let envelope = support::envelope(body.as_bytes());
        let ((key, segment, _), json) = (envelope.to_segment(), envelope.to_json());
        let started = Instant::now();
        backends.archive.put(&key, &segment).await.unwrap();
        backends.queue.send(&json).await.unwrap();
        floor.push(started.elapsed());
    }
    // Those messages are not the measurement's.
    let mut drained = 0;
    while drained < records {
        let m = backends
            .queue
            .receive(10, Duration::from_millis(200))
            .await
            .unwrap();
        drained += m.len();
        let receipts: Vec<_> = m.iter().map(|m| m.receipt.clone()).collect();
        backends.queue.delete_batch(&receipts).await.unwrap();
    }

    let ingest_api = RuntimeApi::start().await;
    let _ingest = Bootstrap::start("paynotify-lambda-ingest", &d, &ingest_api);
    let mut per_request = Vec::new();
    for i in 0..records {
        let body = sim.purchase(&format!("warm{i}"), 100);
        let event = serde_json::to_value(http_event("unionpay", body.as_bytes(), false)).unwrap();
        let id = format!("http-{i}");
        ingest_api.invoke(&id, event);
        per_request.push(ingest_api.outcome(&id, wait).await.1);
    }
    let worker_api = RuntimeApi::start().await;
    let _worker = Bootstrap::start("paynotify-lambda-worker", &d, &worker_api);
    let (mut per_record, mut batches, mut received) = (Vec::new(), 0, 0);
    while received < records {
        let messages = backends
            .queue
            .receive(10, Duration::from_millis(500))
            .await
            .unwrap();
        if messages.is_empty() {
            continue;
        }
        received += messages.len();
        let id = format!("sqs-{batches}");
        batches += 1;
        worker_api.invoke(&id, sqs_event(&messages));
        let (outcome, took) = worker_api.outcome(&id, wait).await;
        assert_eq!(answered(outcome)["batchItemFailures"], json!([]));
        per_record.push(took / messages.len() as u32);
        let receipts: Vec<_> = messages.iter().map(|m| m.receipt.clone()).collect();
        backends.queue.delete_batch(&receipts).await.unwrap();
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3
    };
    println!(
        "ingest warm, {records} requests: p50 {:.2} ms, p99 {:.2} ms per request",
        pct(&mut per_request, 0.5),
        pct(&mut per_request, 0.99)
    );
    println!(
        "emulator floor, PutObject + SendMessage made directly, {records} times: p50 {:.2} ms, p99 {:.2} ms",
        pct(&mut floor, 0.5),
        pct(&mut floor, 0.99)
    );
    println!(
        "worker warm, {records} records in {batches} batches: p50 {:.2} ms, p99 {:.2} ms per record",
        pct(&mut per_record, 0.5),
        pct(&mut per_record, 0.99)
    );
}
