//! The read API (docs/api.md) on both backends: every route answered
//! with a key and refused without one, reads equal to what the ledger and
//! the queues hold, actions only with an operate key and each recorded in
//! the archive, and the OpenAPI document the same as the checked-in one.

use std::time::{Duration, Instant};

use paynotify::api::routes::{document, ROUTES};
use paynotify::app::AppOptions;
use paynotify::receiver::Receiver;
use paynotify::simulate::tamper;
use paynotify_shared::config::ApiScope;
use paynotify_shared::PaymentStatus;
use serde_json::{json, Value};
use support::app::{spawn_app_tweaked, TestApp, MERCHANT};
use support::Kind;

#[macro_use]
mod support;

const READER: &str = "read-key-0123456789abcdef0123456789abcdef";
const OPERATOR: &str = "operate-key-0123456789abcdef0123456789abcd";

async fn spawn(kind: Kind) -> TestApp {
    spawn_with(kind, |_| {}).await
}

async fn spawn_with(
    kind: Kind,
    tweak: impl FnOnce(&mut paynotify_shared::config::Config),
) -> TestApp {
    spawn_app_tweaked(kind, AppOptions::all(), |c| {
        tweak(c);
        support::api_keys(
            c,
            &[
                ("dashboard", ApiScope::Read, READER),
                ("oncall", ApiScope::Operate, OPERATOR),
            ],
        );
    })
    .await
}

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    fn of(t: &TestApp) -> Self {
        Self {
            base: format!("http://{}", t.app().api_addr.expect("the API listens")),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut r = match method {
            "get" => self.http.get(url),
            "post" => self.http.post(url),
            other => panic!("{other}"),
        };
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let answer = r.send().await.unwrap();
        let status = answer.status().as_u16();
        assert_eq!(
            answer.headers()["content-type"],
            "application/json",
            "{method} {path}"
        );
        assert_eq!(answer.headers()["cache-control"], "no-store");
        let text = answer.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("get", path, Some(READER), None).await
    }

    /// The oldest parked event, once there is one.
    async fn first_parked(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.get("/api/v1/parked").await;
            assert_eq!(status, 200, "{body}");
            if let Some(first) = body.as_array().unwrap().first() {
                return first.clone();
            }
            assert!(Instant::now() < deadline, "never parked");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The CLI as an operator: the app's configuration file, and the
/// operator role's environment on AWS.
struct Operator {
    config: String,
    env: Vec<(String, String)>,
}

impl Operator {
    fn of(t: &TestApp) -> Self {
        let file = t
            .config
            .backend
            .data_dir
            .parent()
            .unwrap()
            .join("paynotify.toml");
        Self {
            config: file.display().to_string(),
            env: support::deployed::backend_env(&t.config.backend, "operator"),
        }
    }

    /// Runs `paynotify ARGS --config FILE` as the operator.
    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut all = args.to_vec();
        all.extend(["--config", &self.config]);
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        support::cli::paynotify(&all, &env)
    }

    /// [`Operator::run`], which must exit 0; its JSON output.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// A route's path with its parameters filled.
fn concrete(path: &str) -> String {
    path.replace("{source}", "unionpay")
        .replace("{merchant}", MERCHANT)
        .replace("{reference}", "nothing")
        .replace("{id}", "nothing")
}

async fn every_route_needs_a_key_and_an_action_an_operate_key(kind: Kind) {
    let t = spawn(kind).await;
    let c = Client::of(&t);
    for r in ROUTES {
        let path = concrete(r.path);
        for key in [
            None,
            Some("not-a-key-of-this-api-0123456789abcdef"),
            Some(&READER[1..]),
        ] {
            let (status, body) = c.call(r.method, &path, key, None).await;
            assert_eq!(status, 401, "{} {path} with {key:?}: {body}", r.method);
        }
        let (status, body) = c.call(r.method, &path, Some(READER), None).await;
        match r.scope {
            ApiScope::Read => assert!(status != 401 && status != 403, "{path}: {status} {body}"),
            ApiScope::Operate => assert_eq!(status, 403, "{path}: {body}"),
        }
        let (status, body) = c.call(r.method, &path, Some(OPERATOR), None).await;
        assert!(status != 401 && status != 403, "{path}: {status} {body}");
        // The route answers the method the document gives it; any other
        // is not a route.
        assert_ne!(status, 405, "{} {path}: {body}", r.method);
        let other = if r.method == "get" { "post" } else { "get" };
        let (status, body) = c.call(other, &path, Some(OPERATOR), None).await;
        assert_eq!(status, 405, "{other} {path}: {body}");
    }
    // The scheme's name in any case; the key alone, or under another
    // scheme, is no key.
    for (header, status) in [
        (format!("bearer {READER}"), 200),
        (format!("BEARER {READER}"), 200),
        (READER.to_owned(), 401),
        (format!("Basic {READER}"), 401),
    ] {
        let answer = reqwest::Client::new()
            .get(format!("{}/api/v1/openapi.json", c.base))
            .header("authorization", header.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), status, "{header}");
    }
    // What is not a route is 401 without a key, 404 with one: nothing is
    // learnt without a key.
    assert_eq!(c.call("get", "/api/v1/secrets", None, None).await.0, 401);
    assert_eq!(c.get("/api/v1/secrets").await.0, 404);
    // Not the ingest: the API's port takes no notification.
    let (status, _) = c
        .call("post", "/notify/unionpay", Some(OPERATOR), Some(json!({})))
        .await;
    assert_eq!(status, 404);
    let ingest = format!("http://{}/api/v1/openapi.json", t.app().addr.unwrap());
    let answer = reqwest::Client::new()
        .get(ingest)
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_ne!(answer.status().as_u16(), 200);
}

async fn a_payment_reads_as_the_ledger_holds_it(kind: Kind) {
    let t = spawn(kind).await;
    let c = Client::of(&t);
    t.sim.send(t.sim.purchase("api1", 1000)).await;
    t.wait_for_status("api1", PaymentStatus::Paid).await;
    t.sim.send(t.sim.refund("api1", "api1-r1", 250)).await;
    let state = t
        .wait_for_status("api1", PaymentStatus::PartiallyRefunded)
        .await;
    let (status, body) = c
        .get(&format!("/api/v1/payments/unionpay/{MERCHANT}/api1"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payment_key"], format!("unionpay#{MERCHANT}#api1"));
    assert_eq!(body["state"]["status"], "PARTIALLY_REFUNDED");
    assert_eq!(body["state"]["paid"], "10.00");
    assert_eq!(body["state"]["refunded"], "2.50");
    assert_eq!(body["state"]["version"], state.version);
    // The simulator's purchase of api1 is order oapi1 (its orderId).
    assert_eq!(body["order_id"], "oapi1");
    let by_id = body.clone();
    // Expanded: each event's notification where the archive holds it, and
    // its verdict; the rest as without.
    let (status, expanded) = c
        .get(&format!(
            "/api/v1/payments/unionpay/{MERCHANT}/api1?expand=notifications"
        ))
        .await;
    assert_eq!(status, 200, "{expanded}");
    let history = expanded["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{expanded}");
    for (event, plain) in history.iter().zip(by_id["history"].as_array().unwrap()) {
        let key = event["archive_key"].as_str().unwrap_or_default();
        assert!(key.starts_with("raw/source=unionpay/"), "{event}");
        assert_eq!(event["verification"], json!({ "valid": true }), "{event}");
        let (_, notification) = c
            .get(&format!(
                "/api/v1/notifications/{}",
                event["notification_id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(notification["archive_key"], event["archive_key"]);
        let mut without = event.clone();
        let o = without.as_object_mut().unwrap();
        o.remove("archive_key");
        o.remove("verification");
        assert_eq!(&without, plain);
    }
    assert_eq!(
        c.get(&format!(
            "/api/v1/payments/unionpay/{MERCHANT}/api1?expand=everything"
        ))
        .await
        .0,
        400
    );
    let (status, body) = c.get("/api/v1/payments?order_id=oapi1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["order_id"], "oapi1");
    assert_eq!(
        body["payments"],
        json!([by_id]),
        "the same view as by the PSP's id"
    );
    // The refund's own order (rapi1-r1) is not the payment's.
    for order in ["rapi1-r1", "oapi2", "%3Cscript%3E"] {
        let (status, body) = c.get(&format!("/api/v1/payments?order_id={order}")).await;
        assert_eq!(status, 200, "{order}: {body}");
        assert_eq!(body["payments"], json!([]), "{order}");
    }
    for bad in [
        "/api/v1/payments",
        "/api/v1/payments?order_id=",
        "/api/v1/payments?order=oapi1",
    ] {
        let (status, body) = c.get(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let history = by_id["history"].as_array().unwrap();
    // Each event's notification, as archived, verified again now.
    let first = history[0]["notification_id"].as_str().unwrap();
    let (status, n) = c.get(&format!("/api/v1/notifications/{first}")).await;
    assert_eq!(status, 200, "{n}");
    assert_eq!(n["notification_id"], first);
    assert!(
        n["archive_key"]
            .as_str()
            .unwrap()
            .starts_with("raw/source=unionpay/"),
        "{n}"
    );
    assert_eq!(n["verification"]["valid"], true, "{n}");
    assert!(n["body"].as_str().unwrap().contains("queryId=api1"), "{n}");
    let stored = t
        .app()
        .backends
        .archive
        .get(
            n["archive_key"]
                .as_str()
                .unwrap()
                .split('#')
                .next()
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&stored).contains(first));
    for missing in ["01ARZ3NDEKTSV4RRFFQ69G5FAV", "not-a-ulid"] {
        let (status, body) = c.get(&format!("/api/v1/notifications/{missing}")).await;
        assert_eq!(status, 404, "{missing}: {body}");
    }
    assert_eq!(history.len(), 2, "{body}");
    assert_eq!(history[1]["amount"], "2.50");
    for e in history {
        assert!(
            e["notification_id"].as_str().is_some_and(|n| !n.is_empty()),
            "{e}"
        );
        time::OffsetDateTime::parse(
            e["recorded_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
    }
    // A search, a page at a time: the partially refunded api1 and, with no
    // status, every payment once.
    let (status, body) = c
        .get("/api/v1/payments/search?source=unionpay&status=PARTIALLY_REFUNDED")
        .await;
    assert_eq!(status, 200, "{body}");
    let found: Vec<_> = body["payments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["payment_key"].clone())
        .collect();
    assert_eq!(found, [json!(format!("unionpay#{MERCHANT}#api1"))]);
    assert_eq!(body["payments"][0]["refunded"], "2.50");
    assert_eq!(body["payments"][0]["order_id"], "oapi1");
    t.sim.send(t.sim.purchase("api1b", 300)).await;
    t.wait_for_status("api1b", PaymentStatus::Paid).await;
    let mut keys = Vec::new();
    let mut path = format!("/api/v1/payments/search?source=unionpay&merchant={MERCHANT}&limit=1");
    loop {
        let (status, page) = c.get(&path).await;
        assert_eq!(status, 200, "{page}");
        assert!(page["payments"].as_array().unwrap().len() <= 1, "{page}");
        keys.extend(
            page["payments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["payment_key"].clone()),
        );
        match page["next"].as_str() {
            Some(next) => {
                path = format!(
                "/api/v1/payments/search?source=unionpay&merchant={MERCHANT}&limit=1&cursor={next}"
            )
            }
            None => break,
        }
    }
    keys.sort_by_key(|k| k.to_string());
    assert_eq!(
        keys,
        [
            json!(format!("unionpay#{MERCHANT}#api1")),
            json!(format!("unionpay#{MERCHANT}#api1b"))
        ]
    );
    for bad in [
        "status=paid",
        "from=yesterday",
        "cursor=not-a-cursor",
        "merchant=777290058167151",
        "limit=0",
    ] {
        let (status, body) = c.get(&format!("/api/v1/payments/search?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // Unknown payments, sources and references with odd bytes are 404s.
    for path in [
        format!("/api/v1/payments/unionpay/{MERCHANT}/nope"),
        format!("/api/v1/payments/paypal/{MERCHANT}/api1"),
        format!("/api/v1/payments/unionpay/{MERCHANT}/%3Cscript%3Ealert(1)%3C%2Fscript%3E"),
    ] {
        let (status, body) = c.get(&path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.to_string().contains("<script>"), "{body}");
    }
    // A refund waiting for its payment is listed as parked.
    t.sim.send(t.sim.refund("api2", "api2-r1", 100)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let parked = loop {
        let (status, body) = c.get("/api/v1/parked?limit=10").await;
        assert_eq!(status, 200, "{body}");
        if !body.as_array().unwrap().is_empty() {
            break body;
        }
        assert!(Instant::now() < deadline, "never parked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        parked[0]["payment_key"],
        format!("unionpay#{MERCHANT}#api2")
    );
    for bad in ["0", "1001", "ten", "-1"] {
        let (status, body) = c.get(&format!("/api/v1/parked?limit={bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) = c.get("/api/v1/deliveries/endpoints").await;
    assert_eq!((status, body), (200, json!([])));
}

async fn dead_letters_read_and_redrive_with_an_operate_key_recorded(kind: Kind) {
    let t = spawn(kind).await;
    let c = Client::of(&t);
    t.sim.send(tamper(&t.sim.purchase("api3", 1000))).await;
    t.wait_until_drained().await;
    let (status, listed) = c.get("/api/v1/dead-letters").await;
    assert_eq!(status, 200, "{listed}");
    let listed = listed.as_array().unwrap().clone();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let id = listed[0]["id"].as_str().unwrap();
    assert_eq!(listed[0]["reason"], "bad_signature");
    let (status, shown) = c.get(&format!("/api/v1/dead-letters/{id}")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["verification"]["valid"], false, "{shown}");
    assert!(shown["verification"]["step"].is_string(), "{shown}");
    // By its notification id too.
    let notification = listed[0]["notification_id"].as_str().unwrap();
    assert_eq!(
        c.get(&format!("/api/v1/dead-letters/{notification}"))
            .await
            .1["id"],
        id
    );
    assert_eq!(c.get("/api/v1/dead-letters/nothing").await.0, 404);

    // A read key may not act; a dry run counts; a redrive moves it (it is
    // dead-lettered again: its signature still fails).
    let redrive = "/api/v1/dead-letters/redrive";
    let (status, _) = c.call("post", redrive, Some(READER), Some(json!({}))).await;
    assert_eq!(status, 403);
    let (status, body) = c
        .call(
            "post",
            redrive,
            Some(OPERATOR),
            Some(json!({ "dry_run": true })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["would_redrive"], 1);
    assert_eq!(body["by_reason"]["bad_signature"], 1);
    let (status, body) = c
        .call(
            "post",
            redrive,
            Some(OPERATOR),
            Some(json!({ "reason": "bad_signature" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["redriven"], 1);
    for bad in [json!({ "reasons": "x" }), json!([1]), json!("text")] {
        let (status, body) = c.call("post", redrive, Some(OPERATOR), Some(bad)).await;
        assert_eq!(status, 400, "{body}");
    }
    // Each action done is in the archive with the key that asked.
    let audits = t.keys_under(paynotify::api::AUDIT_PREFIX).await;
    assert_eq!(audits.len(), 2, "{audits:?}");
    let mut actions = Vec::new();
    for key in &audits {
        let bytes = t.app().backends.archive.get(key).await.unwrap();
        let record: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(record["key"], "oncall", "{record}");
        assert_eq!(record["action"], "dead-letters/redrive");
        actions.push(record["asked"]["dry_run"].as_bool().unwrap());
    }
    actions.sort();
    assert_eq!(actions, vec![false, true]);

    // One dead letter by its id (or its notification's), once it is back.
    let deadline = Instant::now() + Duration::from_secs(30);
    let again = loop {
        let (_, listed) = c.get("/api/v1/dead-letters").await;
        if let Some(d) = listed.as_array().unwrap().first() {
            break d.clone();
        }
        assert!(Instant::now() < deadline, "never dead-lettered again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let notification = again["notification_id"].as_str().unwrap();
    for (asked, status) in [
        (json!({ "id": "nothing" }), 404),
        (
            json!({ "id": notification, "reason": "bad_signature" }),
            400,
        ),
        (json!({ "id": notification, "dry_run": true }), 200),
    ] {
        let (got, body) = c
            .call("post", redrive, Some(OPERATOR), Some(asked.clone()))
            .await;
        assert_eq!(got, status, "{asked}: {body}");
    }
    let (status, body) = c
        .call(
            "post",
            redrive,
            Some(OPERATOR),
            Some(json!({ "id": again["id"] })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["redriven"], 1);
}

async fn a_failed_delivery_is_listed_and_resent_with_an_operate_key(kind: Kind) {
    let mut receiver = Receiver::start(&support::receiver_secret(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    receiver.stop();
    let addr = receiver.addr;
    let t = spawn_with(kind, move |c| {
        let path = c.backend.data_dir.with_file_name("endpoint.secret");
        c.deliveries.retry_schedule_secs = vec![1];
        c.deliveries.poll_ms = 50;
        c.deliveries.line_wait_secs = 0;
        c.deliveries.endpoints = vec![support::loopback_endpoint(
            "orders",
            format!("http://{addr}/paynotify"),
            path,
        )];
    })
    .await;
    let c = Client::of(&t);
    t.sim.send(t.sim.purchase("api4", 1000)).await;
    t.wait_for_status("api4", PaymentStatus::Paid).await;
    if kind == Kind::Aws {
        // The events function puts the event on the webhook line, from the
        // ledger's stream.
        let mut backend = t.config.backend.clone();
        backend.aws.ledger_stream = true;
        paynotify_shared::backend::aws::setup::init(&backend)
            .await
            .unwrap();
        t.sim.send(t.sim.purchase("api5", 1000)).await;
        t.wait_for_status("api5", PaymentStatus::Paid).await;
        let events = paynotify_lambda::events::Events::from_config(&t.config)
            .await
            .unwrap();
        let records = support::stream::stream_records(&t.config).await;
        let report = events
            .handle_batch(json!({ "Records": records }))
            .await
            .unwrap();
        assert_eq!(report.failed_at, None);
    }
    // Both attempts fail (the receiver is down): dead-lettered (held).
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = loop {
        let (status, body) = c
            .get("/api/v1/deliveries?endpoint=orders&status=dead_lettered&limit=10")
            .await;
        assert_eq!(status, 200, "{body}");
        if !body.as_array().unwrap().is_empty() {
            break body;
        }
        assert!(Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let event_id = held[0]["event_id"].as_str().unwrap().to_owned();
    assert_eq!(held[0]["attempts"], 2, "{held}");
    // Pending ones are kept on the embedded backend only.
    let (status, body) = c.get("/api/v1/deliveries?status=pending").await;
    assert_eq!(status, if kind == Kind::Aws { 400 } else { 200 }, "{body}");
    assert_eq!(c.get("/api/v1/deliveries?status=lost").await.0, 400);

    receiver.restart().await.unwrap();
    let resend = "/api/v1/deliveries/resend";
    let asked = json!({ "endpoint": "orders", "event_id": event_id });
    assert_eq!(
        c.call("post", resend, Some(READER), Some(asked.clone()))
            .await
            .0,
        403
    );
    for (bad, status) in [
        (json!({ "endpoint": "billing", "event_id": event_id }), 404),
        (
            json!({ "endpoint": "orders", "event_id": "evt_nothing" }),
            404,
        ),
        (json!({ "endpoint": "orders" }), 400),
    ] {
        let (got, body) = c.call("post", resend, Some(OPERATOR), Some(bad)).await;
        assert_eq!(got, status, "{body}");
    }
    let (status, body) = c.call("post", resend, Some(OPERATOR), Some(asked)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["resent"],
        if kind == Kind::Aws {
            "released"
        } else {
            "again"
        }
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !receiver.view().events.contains_key(&event_id) {
        assert!(Instant::now() < deadline, "never resent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let audits = t.keys_under(paynotify::api::AUDIT_PREFIX).await;
    assert_eq!(
        audits.len(),
        1,
        "only what was done is recorded: {audits:?}"
    );
}

async fn the_last_reconcile_report_is_served(kind: Kind) {
    let t = spawn(kind).await;
    let c = Client::of(&t);
    assert_eq!(c.get("/api/v1/reconcile/latest").await.0, 404);
    t.sim.send(t.sim.purchase("api6", 1000)).await;
    t.wait_for_status("api6", PaymentStatus::Paid).await;
    let operator = Operator::of(&t);
    let printed = operator.json(&["reconcile", "--json"]);
    let (status, latest) = c.get("/api/v1/reconcile/latest").await;
    assert_eq!(status, 200, "{latest}");
    assert_eq!(latest["clean"], true);
    assert_eq!(latest["report"], printed);
    // Another run after another payment: the newest is the one served.
    t.sim.send(t.sim.purchase("api7", 500)).await;
    t.wait_for_status("api7", PaymentStatus::Paid).await;
    let second = operator.json(&["reconcile", "--json"]);
    let (_, newest) = c.get("/api/v1/reconcile/latest").await;
    assert_eq!(newest["report"], second);
    assert_ne!(newest["key"], latest["key"]);
    assert_eq!(
        newest["report"]["archived"].as_u64().unwrap(),
        latest["report"]["archived"].as_u64().unwrap() + 1
    );
}

async fn a_parked_event_is_resolved_with_a_note_and_reconcile_counts_it(kind: Kind) {
    let t = spawn(kind).await;
    let c = Client::of(&t);
    // A refund whose payment never arrived: parked.
    t.sim.send(t.sim.refund("api8", "api8-r1", 100)).await;
    let parked = c.first_parked().await;
    let payment_key = parked["payment_key"].as_str().unwrap().to_owned();
    let event_key = parked["event"]["event_key"].as_str().unwrap().to_owned();
    let resolve = "/api/v1/parked/resolve";
    let asked = json!({ "payment_key": payment_key, "event_key": event_key,
                        "note": "refunded by hand, ticket 4711" });
    assert_eq!(
        c.call("post", resolve, Some(READER), Some(asked.clone()))
            .await
            .0,
        403
    );
    for (bad, status) in [
        (
            json!({ "payment_key": payment_key, "event_key": event_key, "note": " " }),
            400,
        ),
        (
            json!({ "payment_key": payment_key, "event_key": event_key }),
            400,
        ),
        (
            json!({ "payment_key": payment_key, "event_key": "nothing", "note": "x" }),
            404,
        ),
    ] {
        let (got, body) = c.call("post", resolve, Some(OPERATOR), Some(bad)).await;
        assert_eq!(got, status, "{body}");
    }
    let (status, record) = c
        .call("post", resolve, Some(OPERATOR), Some(asked.clone()))
        .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["by"], "api:oncall");
    assert_eq!(record["amount"], "1.00");
    assert_eq!(record["note"], "refunded by hand, ticket 4711");
    assert_eq!(c.get("/api/v1/parked").await.1, json!([]));
    // Once.
    assert_eq!(
        c.call("post", resolve, Some(OPERATOR), Some(asked)).await.0,
        404
    );
    // The same from the CLI, as the operator role.
    t.sim.send(t.sim.refund("api9", "api9-r1", 100)).await;
    let parked = c.first_parked().await;
    let operator = Operator::of(&t);
    let resolve_cli = [
        "parked",
        "resolve",
        parked["payment_key"].as_str().unwrap(),
        parked["event"]["event_key"].as_str().unwrap(),
        "--note",
        "payment cancelled at the PSP",
    ];
    let printed = operator.json(&resolve_cli);
    assert_eq!(printed["by"], "cli");
    assert_eq!(
        operator.run(&resolve_cli).status.code(),
        Some(1),
        "only once"
    );
    // Reconcile accounts for both: resolved, not missing.
    let report = t.reconcile().await;
    assert!(report.is_clean(), "{:#?}", report.discrepancies);
    assert_eq!(report.resolved, 2);
    // The payment arriving later is paid, the resolved refund not applied.
    t.sim.send(t.sim.purchase("api8", 1000)).await;
    let state = t.wait_for_status("api8", PaymentStatus::Paid).await;
    assert_eq!(state.refunded_minor, 0);
    for (prefix, n) in [
        (paynotify::parked::PREFIX, 2),
        (paynotify::api::AUDIT_PREFIX, 1),
    ] {
        let keys = t.keys_under(prefix).await;
        assert_eq!(keys.len(), n, "{prefix}: {keys:?}");
    }
}

/// With `backend.aws.order_index = false` a payment's item names no order
/// (no write to the `orders` index), and a lookup by order id says why it
/// cannot answer instead of answering that there is none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_order_index_off_no_order_is_indexed_and_lookups_say_so() {
    let t = spawn_with(Kind::Aws, |c| c.backend.aws.order_index = false).await;
    let c = Client::of(&t);
    t.sim.send(t.sim.purchase("api12", 1000)).await;
    t.wait_for_status("api12", PaymentStatus::Paid).await;
    let aws = &t.config.backend.aws;
    let clients = paynotify_shared::backend::aws::Clients::new(aws).await;
    let item = clients
        .dynamodb
        .get_item()
        .table_name(&aws.table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("unionpay#{MERCHANT}#api12")),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("STATE".into()),
        )
        .send()
        .await
        .unwrap()
        .item
        .expect("the payment's item");
    assert!(item.contains_key("status"), "{item:?}");
    assert!(!item.contains_key("gsi_order"), "{item:?}");
    let (status, body) = c.get("/api/v1/payments?order_id=oapi12").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("order_index"),
        "{body}"
    );
    // By the PSP's id, as ever; the view has no order then.
    let (status, body) = c
        .get(&format!("/api/v1/payments/unionpay/{MERCHANT}/api12"))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Setting a parked event aside: its notification is a dead letter, the
/// event leaves the ledger, reconcile keeps reporting it until a redrive
/// applies it once its payment is there.
async fn a_parked_event_set_aside_is_a_dead_letter_until_redriven(kind: Kind) {
    let t = spawn(kind).await;
    let c = Client::of(&t);
    t.sim.send(t.sim.refund("api10", "api10-r1", 100)).await;
    let parked = c.first_parked().await;
    let payment_key = parked["payment_key"].as_str().unwrap().to_owned();
    let event_key = parked["event"]["event_key"].as_str().unwrap().to_owned();
    let notification_id = parked["notification_id"].as_str().unwrap().to_owned();
    let path = "/api/v1/parked/dead-letter";
    let asked = json!({ "payment_key": payment_key, "event_key": event_key,
                        "note": "purchase expected after the PSP's outage" });
    assert_eq!(
        c.call("post", path, Some(READER), Some(asked.clone()))
            .await
            .0,
        403
    );
    for (bad, status) in [
        (
            json!({ "payment_key": payment_key, "event_key": event_key, "note": "" }),
            400,
        ),
        (
            json!({ "payment_key": payment_key, "event_key": "nothing", "note": "x" }),
            404,
        ),
    ] {
        let (got, body) = c.call("post", path, Some(OPERATOR), Some(bad)).await;
        assert_eq!(got, status, "{body}");
    }
    let (status, record) = c
        .call("post", path, Some(OPERATOR), Some(asked.clone()))
        .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(
        (
            &record["reason"],
            &record["removed"],
            &record["by"],
            &record["notification_id"]
        ),
        (
            &json!("set_aside"),
            &json!(true),
            &json!("api:oncall"),
            &json!(notification_id)
        )
    );
    assert!(
        record["archive_key"].as_str().unwrap().starts_with("raw/"),
        "{record}"
    );
    assert_eq!(c.get("/api/v1/parked").await.1, json!([]));
    let (_, dead) = c.get("/api/v1/dead-letters").await;
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (&dead[0]["id"], &dead[0]["reason"]),
        (&json!(notification_id), &json!("set_aside"))
    );
    assert!(
        dead[0]["error"]
            .as_str()
            .unwrap()
            .contains("purchase expected"),
        "{dead:?}"
    );
    // Once.
    assert_eq!(
        c.call("post", path, Some(OPERATOR), Some(asked)).await.0,
        404
    );
    // Money the PSP reported that the ledger does not hold: reported.
    let report = t.reconcile().await;
    assert!(
        report
            .discrepancies
            .iter()
            .any(|d| d.kind == "verified_dead_lettered" && d.detail.contains("set_aside")),
        "{:#?}",
        report.discrepancies
    );
    // The purchase arrives: paid without the refund; the redrive applies it.
    t.sim.send(t.sim.purchase("api10", 1000)).await;
    let state = t.wait_for_status("api10", PaymentStatus::Paid).await;
    assert_eq!(state.refunded_minor, 0);
    let (status, body) = c
        .call(
            "post",
            "/api/v1/dead-letters/redrive",
            Some(OPERATOR),
            Some(json!({ "id": notification_id })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let state = t
        .wait_for_status("api10", PaymentStatus::PartiallyRefunded)
        .await;
    assert_eq!(state.refunded_minor, 100);
    let report = t.reconcile().await;
    assert!(report.is_clean(), "{:#?}", report.discrepancies);
    // The same from the CLI, once.
    t.sim.send(t.sim.refund("api11", "api11-r1", 100)).await;
    let parked = c.first_parked().await;
    let operator = Operator::of(&t);
    let cli = [
        "parked",
        "dead-letter",
        parked["payment_key"].as_str().unwrap(),
        parked["event"]["event_key"].as_str().unwrap(),
        "--note",
        "waiting for the PSP",
    ];
    assert_eq!(operator.json(&cli)["by"], "cli");
    assert_eq!(operator.run(&cli).status.code(), Some(1), "only once");
}

on_both_backends!(
    a_parked_event_set_aside_is_a_dead_letter_until_redriven,
    a_parked_event_is_resolved_with_a_note_and_reconcile_counts_it,
    the_last_reconcile_report_is_served,
    every_route_needs_a_key_and_an_action_an_operate_key,
    a_payment_reads_as_the_ledger_holds_it,
    dead_letters_read_and_redrive_with_an_operate_key_recorded,
    a_failed_delivery_is_listed_and_resent_with_an_operate_key,
);

#[test]
fn the_checked_in_openapi_document_is_the_codes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api/openapi.json");
    let generated = serde_json::to_string_pretty(&document()).unwrap() + "\n";
    if std::env::var_os("PAYNOTIFY_WRITE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/api/openapi.json is not what the code serves: \
         PAYNOTIFY_WRITE_OPENAPI=1 cargo test --test api the_checked_in_openapi_document_is_the_codes"
    );
    // Every route is in it once, with its method.
    let doc = document();
    let mut listed = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            assert!(
                ROUTES.iter().any(|r| r.path == path && r.method == method),
                "{method} {path}"
            );
            listed += 1;
        }
    }
    assert_eq!(listed, ROUTES.len());
}
