//! Webhook schemes end to end, through ingest and workers on both
//! backends: Standard Webhooks and Stripe sources beside UnionPay, fed by
//! the simulator (payments, refunds, duplicates, tampered and forged
//! bodies, event types a source does not map, stale and future timestamps).

use std::sync::Arc;

use paynotify::app::AppOptions;
use paynotify::simulate::{standard_webhooks_toml, Delivery, Simulator};
use paynotify_shared::config::Config;
use paynotify_shared::{PaymentKey, PaymentStatus};
use support::app::{spawn_app_tweaked, TestApp};
use support::Kind;

#[macro_use]
mod support;

on_both_backends!(
    standard_webhooks_payments_refunds_duplicates_and_forgeries,
    stripe_payments_refund_totals_disputes_and_forgeries,
    adyen_batches_apply_each_item_and_dead_letter_the_forged_one_alone,
    an_adyen_batch_whose_segment_failed_is_archived_alone_before_it_is_split,
);

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const MERCHANT: &str = "acme-shop";
const STRIPE_SECRET: &str = "whsec_test_secret";
const ADYEN_KEY: &str = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056";
const ADYEN_ACCOUNT: &str = "ShopECOM";

/// The app with a Standard Webhooks source `acme` reading the simulator's
/// events and a Stripe source `stripe`, their secrets in files (the only way
/// a secret is configured).
async fn spawn_with_acme(kind: Kind) -> (TestApp, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let path = secrets.path().join("acme.whsec");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    std::fs::write(secrets.path().join("stripe.whsec"), STRIPE_SECRET).unwrap();
    std::fs::write(secrets.path().join("adyen.hmac"), format!("{ADYEN_KEY}\n")).unwrap();
    let toml = format!(
        "[sources.acme]\nscheme = \"standard_webhooks\"\nmerchants = [\"{MERCHANT}\"]\n{}\
         [sources.stripe]\nscheme = \"stripe\"\nmerchants = [\"{MERCHANT}\"]\n\
         [sources.stripe.stripe]\nsecrets = [\"file:stripe.whsec\"]\n\
         [sources.adyen]\nscheme = \"adyen\"\nmerchants = [\"{ADYEN_ACCOUNT}\"]\n\
         [sources.adyen.adyen]\nhmac_keys = [\"file:adyen.hmac\"]\n",
        standard_webhooks_toml("acme", &format!("file:{}", path.display()))
    );
    let added = Config::from_toml(&toml, secrets.path()).unwrap().sources;
    let t = spawn_app_tweaked(kind, AppOptions::all(), move |c| {
        c.sources.extend(added);
    })
    .await;
    (t, secrets)
}

fn acme(t: &TestApp, secret: &str) -> Arc<Simulator> {
    let url = t.url.replace("/notify/unionpay", "/notify/acme");
    Simulator::standard_webhooks(secret, MERCHANT, &url).unwrap()
}

async fn payment(t: &TestApp, id: &str) -> Option<paynotify_shared::PaymentState> {
    t.payment_of(&payment_of(id)).await
}

/// Waits until the DLQ holds every reason of `expected` (as many times as
/// listed) and no other. Delivery is at least once: on a loaded machine a
/// message whose processing outlasts the 1 s visibility timeout is
/// processed again, and a rejected one may then be dead-lettered twice.
async fn dead_lettered(t: &TestApp, expected: &[&str]) {
    use std::collections::BTreeMap;
    let count = |reasons: &[String]| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for r in reasons {
            *m.entry(r.clone()).or_default() += 1;
        }
        m
    };
    let want = count(&expected.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let got = count(&t.dlq_reasons().await);
        let same_reasons = got.keys().eq(want.keys());
        if same_reasons && want.iter().all(|(r, n)| got[r] >= *n) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dead letters {got:?}, expected {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// POSTs `body` to `source` with these headers; the status.
async fn post_signed(t: &TestApp, source: &str, body: &str, headers: &[(&str, String)]) -> u16 {
    let mut request = reqwest::Client::new()
        .post(
            t.url
                .replace("/notify/unionpay", &format!("/notify/{source}")),
        )
        .header("content-type", "application/json");
    for (k, v) in headers {
        request = request.header(*k, v);
    }
    request
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn standard_webhooks_payments_refunds_duplicates_and_forgeries(kind: Kind) {
    let (t, _secrets) = spawn_with_acme(kind).await;
    let sim = acme(&t, SECRET);
    let forger = acme(&t, OTHER_SECRET);
    let accepted = |d: Delivery| assert!(matches!(d, Delivery::Accepted(_)), "{d:?}");

    // A payment delivered three times at once, then a partial refund.
    let purchase = sim.purchase("p1", 1000);
    let sends: Vec<_> = (0..3)
        .map(|_| {
            let (s, b) = (sim.clone(), purchase.clone());
            tokio::spawn(async move { s.send(b).await })
        })
        .collect();
    for s in sends {
        accepted(s.await.unwrap());
    }
    accepted(sim.send(sim.refund("p1", "r1", 300)).await);
    // A refund that arrives before its payment waits for it.
    accepted(sim.send(sim.refund("p2", "r2", 500)).await);
    accepted(sim.send(sim.purchase("p2", 500)).await);
    // Tampered after signing, signed with another secret, not a payment event.
    accepted(sim.send_tampered(&sim.purchase("p3", 700)).await);
    accepted(forger.send(forger.purchase("p4", 700)).await);
    let other = r#"{"type":"customer.created","data":{"id":"c1"}}"#;
    accepted(sim.send(other.to_owned()).await);
    // Signed correctly, but an hour old, or an hour ahead.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let stale = sim.purchase("p5", 100);
    for (n, ts) in [now - 3600, now + 3600].into_iter().enumerate() {
        let verifier = signer();
        let id = format!("msg_stale{n}");
        let sig = verifier.sign(&id, ts, stale.as_bytes()).unwrap();
        let headers = [
            ("webhook-id", id),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sig),
        ];
        assert_eq!(post_signed(&t, "acme", &stale, &headers).await, 200);
    }
    // Headers missing altogether.
    assert_eq!(t.post_to("acme", purchase.clone()).await, 200);

    let p1 = t
        .wait_for_status_of(&payment_of("p1"), PaymentStatus::PartiallyRefunded)
        .await;
    assert_eq!((p1.paid_minor, p1.refunded_minor), (1000, 300));
    let p2 = t
        .wait_for_status_of(&payment_of("p2"), PaymentStatus::Refunded)
        .await;
    assert_eq!(p2.refunded_minor, 500);
    t.wait_until_drained().await;
    dead_lettered(
        &t,
        &[
            "bad_signature",
            "bad_signature",
            "missing_header",
            "timestamp_outside_tolerance",
            "timestamp_outside_tolerance",
        ],
    )
    .await;
    for never in ["p3", "p4", "p5"] {
        assert_eq!(payment(&t, never).await, None, "{never}");
    }
    let stats = t.app().stats.snapshot();
    assert!(stats.ignored >= 1 && stats.duplicates >= 2, "{stats:?}");
    // The archive and the ledger agree; the ignored event is counted.
    let report = t.reconcile().await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.ignored, 1);
}

/// The verifier of [`SECRET`], to sign requests by hand.
fn signer() -> paynotify_shared::scheme::standard_webhooks::StandardWebhooksVerifier {
    let toml = format!(
        "[sources.acme]\nscheme = \"standard_webhooks\"\nmerchants = [\"{MERCHANT}\"]\n{}",
        standard_webhooks_toml("acme", "file:unused")
    );
    let config = Config::from_toml(&toml, std::path::Path::new(".")).unwrap();
    let sw = config.sources["acme"].standard_webhooks.clone().unwrap();
    paynotify_shared::scheme::standard_webhooks::StandardWebhooksVerifier::new(
        &sw,
        &[SECRET.to_owned()],
        &[],
        &[MERCHANT.to_owned()],
    )
    .unwrap()
}

fn payment_of(id: &str) -> PaymentKey {
    PaymentKey::new("acme", MERCHANT, id)
}

async fn stripe_payments_refund_totals_disputes_and_forgeries(kind: Kind) {
    let (t, _secrets) = spawn_with_acme(kind).await;
    let url = t.url.replace("/notify/unionpay", "/notify/stripe");
    let sim = Simulator::stripe(STRIPE_SECRET, MERCHANT, &url).unwrap();
    let forger = Simulator::stripe("whsec_not_the_secret", MERCHANT, &url).unwrap();
    let accepted = |d: Delivery| assert!(matches!(d, Delivery::Accepted(_)), "{d:?}");
    let key = |id: &str| PaymentKey::new("stripe", MERCHANT, id);

    // A payment delivered twice; refund totals 300 then 1000, delivered
    // newest first (the older total then changes nothing).
    let purchase = sim.purchase("pi_1", 1000);
    accepted(sim.send(purchase.clone()).await);
    accepted(sim.send(purchase.clone()).await);
    let first = sim.refund("pi_1", "re_1", 300);
    let second = sim.refund("pi_1", "re_2", 700);
    t.wait_for_status_of(&key("pi_1"), PaymentStatus::Paid)
        .await;
    accepted(sim.send(second).await);
    accepted(sim.send(first).await);
    // A dispute, signed as Stripe signs it.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let dispute = serde_json::json!({
        "id": "evt_dispute_1", "object": "event", "type": "charge.dispute.created", "created": now,
        "data": {"object": {"id": "dp_1", "object": "dispute", "charge": "ch_pi_1",
                            "payment_intent": "pi_1", "amount": 1000, "currency": "cny",
                            "reason": "fraudulent"}},
    })
    .to_string();
    let verifier = stripe_signer();
    let header = verifier.sign(now, dispute.as_bytes()).unwrap();
    assert_eq!(
        post_signed(&t, "stripe", &dispute, &[("stripe-signature", header)]).await,
        200
    );
    // Tampered, forged, stale, and a type the source does not map.
    accepted(sim.send_tampered(&sim.purchase("pi_2", 500)).await);
    accepted(forger.send(forger.purchase("pi_3", 500)).await);
    let stale = sim.purchase("pi_4", 500);
    let header = verifier.sign(now - 3600, stale.as_bytes()).unwrap();
    assert_eq!(
        post_signed(&t, "stripe", &stale, &[("stripe-signature", header)]).await,
        200
    );
    let other = r#"{"id":"evt_c","object":"event","type":"customer.created","data":{"object":{"id":"cus_1"}}}"#;
    let header = verifier.sign(now, other.as_bytes()).unwrap();
    assert_eq!(
        post_signed(&t, "stripe", other, &[("stripe-signature", header)]).await,
        200
    );

    let p1 = t
        .wait_for_status_of(&key("pi_1"), PaymentStatus::Refunded)
        .await;
    assert_eq!((p1.paid_minor, p1.refunded_minor), (1000, 1000));
    t.wait_until_drained().await;
    dead_lettered(
        &t,
        &[
            "bad_signature",
            "bad_signature",
            "timestamp_outside_tolerance",
        ],
    )
    .await;
    for never in ["pi_2", "pi_3", "pi_4"] {
        assert_eq!(t.payment_of(&key(never)).await, None, "{never}");
    }
    let history = t.app().backends.ledger.history(&key("pi_1")).await.unwrap();
    // Workers apply concurrently: the history holds these, in some order.
    let mut kinds: Vec<_> = history
        .iter()
        .map(|e| (e.kind.as_str(), e.amount_minor))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            ("dispute", 1000),
            ("payment", 1000),
            ("refund_total", 300),
            ("refund_total", 1000),
        ],
        "{history:?}"
    );
    let stats = t.app().stats.snapshot();
    assert!(stats.ignored >= 1 && stats.duplicates >= 1, "{stats:?}");
    let report = t.reconcile().await;
    assert!(report.is_clean(), "{report:?}");
}

/// The verifier of [`STRIPE_SECRET`], to sign requests by hand.
fn stripe_signer() -> paynotify_shared::scheme::stripe::StripeVerifier {
    let config = paynotify_shared::config::StripeConfig {
        secrets: vec![],
        tolerance_secs: 300,
        future_tolerance_secs: 300,
    };
    paynotify_shared::scheme::stripe::StripeVerifier::new(
        &config,
        &[STRIPE_SECRET.to_owned()],
        &[MERCHANT.to_owned()],
    )
}

async fn adyen_batches_apply_each_item_and_dead_letter_the_forged_one_alone(kind: Kind) {
    let (t, _secrets) = spawn_with_acme(kind).await;
    let url = t.url.replace("/notify/unionpay", "/notify/adyen");
    let sim = Simulator::adyen(ADYEN_KEY, ADYEN_ACCOUNT, &url).unwrap();
    let forger = Simulator::adyen(&"0".repeat(64), ADYEN_ACCOUNT, &url).unwrap();
    let key = |id: &str| PaymentKey::new("adyen", ADYEN_ACCOUNT, id);
    let post = |body: String| {
        let url = url.clone();
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let accepted = (200, "[accepted]".to_owned());

    // A payment, delivered twice.
    let a1 = sim.purchase("A1", 1000);
    assert_eq!(post(a1.clone()).await, accepted);
    assert_eq!(post(a1).await, accepted);
    t.wait_for_status_of(&key("A1"), PaymentStatus::Paid).await;
    // One notification of three items: a payment, a forged payment, and a
    // refund of A1. The forged item must not hide the other two.
    let batch = Simulator::adyen_batch(&[
        sim.purchase("A2", 500),
        forger.purchase("A3", 500),
        sim.refund("A1", "R1", 300),
    ]);
    assert_eq!(post(batch).await, accepted);
    // Tampered after signing; a code the source does not map.
    assert_eq!(
        post(paynotify::simulate::tamper(&sim.purchase("A4", 700))).await,
        accepted
    );
    let report = adyen_signed(serde_json::json!({
        "pspReference": "REPORT1", "merchantAccountCode": ADYEN_ACCOUNT,
        "merchantReference": "report", "amount": {"currency": "EUR", "value": 0},
        "eventCode": "REPORT_AVAILABLE", "success": "true",
        "reason": "https://ca-test.adyen.com/reports/download/settlement_detail_report_batch_1.csv",
    }));
    assert_eq!(post(report).await, accepted);

    t.wait_for_status_of(&key("A2"), PaymentStatus::Paid).await;
    let a1 = t
        .wait_for_status_of(&key("A1"), PaymentStatus::PartiallyRefunded)
        .await;
    assert_eq!(a1.refunded_minor, 300);
    t.wait_until_drained().await;
    dead_lettered(&t, &["bad_signature", "bad_signature"]).await;
    for never in ["A3", "A4", "REPORT1"] {
        assert_eq!(t.payment_of(&key(never)).await, None, "{never}");
    }
    let stats = t.app().stats.snapshot();
    assert!(
        stats.split >= 1 && stats.duplicates >= 1 && stats.ignored >= 1,
        "{stats:?}"
    );
    let report = t.reconcile().await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!((report.dead_lettered, report.ignored), (2, 1), "{report:?}");
}

/// A notification of `item`, signed with [`ADYEN_KEY`].
fn adyen_signed(mut item: serde_json::Value) -> String {
    let signer = paynotify_shared::scheme::adyen::AdyenVerifier::new(
        &paynotify_shared::config::AdyenConfig {
            hmac_keys: vec![],
            capture: paynotify_shared::config::CaptureMode::Automatic,
        },
        &[ADYEN_KEY.to_owned()],
        &[ADYEN_ACCOUNT.to_owned()],
    )
    .unwrap();
    let signature = signer.sign(&item).unwrap();
    item["additionalData"] = serde_json::json!({ "hmacSignature": signature });
    serde_json::json!({"live": "false", "notificationItems": [{"NotificationRequestItem": item}]})
        .to_string()
}

/// Ingest sends a message while its segment is written; when the segment
/// then fails, the message still holds the whole notification. A batch is
/// split into pointers, so the worker must not point into a segment that
/// does not hold it: while the notification is young it waits (the put may
/// still be running), then archives it alone and splits from there.
async fn an_adyen_batch_whose_segment_failed_is_archived_alone_before_it_is_split(kind: Kind) {
    use paynotify_shared::envelope::QueuedBody;
    use paynotify_shared::segment::{self, Location};
    let (t, _secrets) = spawn_with_acme(kind).await;
    let sim = Simulator::adyen(ADYEN_KEY, ADYEN_ACCOUNT, &t.url).unwrap();
    let key = |id: &str| PaymentKey::new("adyen", ADYEN_ACCOUNT, id);
    let queue = t.app().backends.queue.clone();
    // The message of a batch whose segment of 3 was never written.
    let orphan = |received_at, ids: [&str; 2]| {
        let body = Simulator::adyen_batch(&[sim.purchase(ids[0], 500), sim.purchase(ids[1], 700)]);
        let headers = vec![("content-type".into(), "application/json".into())];
        let e = support::received("adyen", received_at, headers, body.as_bytes());
        let at = Location::span(segment::segment_key(&e.partition(), &e.id, 3), 4_000, 2_000);
        (
            e.clone(),
            QueuedBody::inline(e.to_json(), &at, queue.max_message_bytes()).unwrap(),
        )
    };
    let now = time::OffsetDateTime::now_utc();
    let (old, message) = orphan(now - time::Duration::minutes(2), ["O1", "O2"]);
    queue.send(&message).await.unwrap();
    t.wait_for_status_of(&key("O1"), PaymentStatus::Paid).await;
    t.wait_for_status_of(&key("O2"), PaymentStatus::Paid).await;
    t.wait_until_drained().await;
    assert!(
        t.dlq_reasons().await.is_empty(),
        "{:?}",
        t.dlq_reasons().await
    );
    // Archived alone, where a notification that arrives by itself would be.
    let (own_key, bytes, _) = old.to_segment();
    assert_eq!(t.app().backends.archive.get(&own_key).await.unwrap(), bytes);
    let report = t.reconcile().await;
    assert_eq!((report.archived, report.in_ledger), (1, 2), "{report:?}");
    assert!(report.is_clean(), "{:#?}", report.discrepancies);

    // Young: retried, neither split nor dead-lettered.
    let retried = t.app().stats.snapshot().retried;
    let (young, message) = orphan(now, ["Y1", "Y2"]);
    queue.send(&message).await.unwrap();
    t.wait_for_retried(retried + 1, std::time::Duration::from_secs(10))
        .await;
    assert_eq!(t.payment_of(&key("Y1")).await, None);
    assert!(t.dlq_reasons().await.is_empty());
    let (own_key, _, _) = young.to_segment();
    assert!(t.app().backends.archive.get(&own_key).await.is_err());
}

/// Adyen items nobody signed, many of them: a 1 MiB body of empty items
/// (about 35,000) was split into one queue message per item before any was
/// authenticated (about 3,500 `SendMessageBatch` calls on SQS, each item
/// then re-reading the whole envelope, and as many dead letters). Now a
/// batch of more items than Adyen sends is refused whole, and one of which
/// no item authenticates is one dead letter: neither is split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adyen_batches_of_unsigned_items_are_not_split() {
    let (t, _secrets) = spawn_with_acme(Kind::Local).await;
    let url = t.url.replace("/notify/unionpay", "/notify/adyen");
    let item = r#"{"NotificationRequestItem":{}}"#;
    let batch = |n: usize| {
        format!(
            r#"{{"live":"false","notificationItems":[{}]}}"#,
            vec![item; n].join(",")
        )
    };
    let huge = batch((1 << 20) / (item.len() + 1) - 10);
    assert!(huge.len() < 1 << 20);
    for body in [huge, batch(50)] {
        let status = reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while t.dlq_reasons().await.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            t.dlq_reasons().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    t.wait_until_drained().await;
    assert_eq!(t.app().stats.snapshot().split, 0);
    assert_eq!(
        t.dlq_reasons().await.len(),
        2,
        "{:?}",
        t.dlq_reasons().await
    );
}
