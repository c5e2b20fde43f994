//! Verification cost of one real UnionPay 5.1.0 notification and its parts,
//! the state transition, and envelope encoding and decoding.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use paynotify_shared::config::UNIONPAY_IDENTITY;
use paynotify_shared::envelope::{Envelope, Received};
use paynotify_shared::scheme::standard_webhooks::StandardWebhooksVerifier;
use paynotify_shared::scheme::stripe::StripeVerifier;
use paynotify_shared::scheme::unionpay::{
    canonical_string, parse_form, to_event, BodyFormat, UnionPayVerifier, VerifierConfig,
};
use paynotify_shared::scheme::Inbound;
use paynotify_shared::testing::{
    cfca_trust, json_vector_form, yansongda_verifier, YANSONGDA_AT, YANSONGDA_MERCHANT,
};
use paynotify_shared::transition;

fn benches(c: &mut Criterion) {
    let body = json_vector_form("unionpay/yansongda-pay/backnotify_purchase_20220908.json");
    let fields = parse_form(&body).unwrap();
    let verifier = yansongda_verifier(BodyFormat::Form);
    verifier
        .verify(&body, YANSONGDA_AT)
        .expect("vector verifies");

    c.bench_function("unionpay/parse_form", |b| {
        b.iter(|| parse_form(black_box(&body)).unwrap())
    });
    c.bench_function("unionpay/canonical_string", |b| {
        b.iter(|| canonical_string(black_box(&fields)))
    });
    c.bench_function("unionpay/verify_5.1.0_chain_cached", |b| {
        b.iter(|| verifier.verify(black_box(&body), YANSONGDA_AT).unwrap())
    });
    c.bench_function("unionpay/verify_5.1.0_chain_uncached", |b| {
        b.iter_batched(
            || {
                UnionPayVerifier::new(&VerifierConfig {
                    trust: cfca_trust(UNIONPAY_IDENTITY),
                    verify_certs: vec![],
                    merchants: vec![YANSONGDA_MERCHANT.into()],
                    body_format: BodyFormat::Form,
                })
                .unwrap()
            },
            |fresh| fresh.verify(black_box(&body), YANSONGDA_AT).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    let event = to_event("unionpay", &fields).unwrap();
    c.bench_function("state/transition_purchase", |b| {
        b.iter(|| transition(None, black_box(&event)))
    });

    // Standard Webhooks: HMAC-SHA256 over a 3 KB body, then the mapping.
    let sw_config: paynotify_shared::config::StandardWebhooksConfig =
        serde_json::from_value(serde_json::json!({
            "secrets": ["file:unused"],
            "fields": {"event_type": "/type", "payment_ref": "/data/payment",
                       "amount": "/data/amount", "currency": "/data/currency"},
            "events": {"payment.succeeded": "payment"}
        }))
        .unwrap();
    let sw = StandardWebhooksVerifier::new(
        &sw_config,
        &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
        &[],
        &["m".into()],
    )
    .unwrap();
    let padding = "x".repeat(3000 - 120);
    let sw_body = format!(
        r#"{{"type":"payment.succeeded","data":{{"payment":"p1","amount":1250,"currency":"eur","note":"{padding}"}}}}"#
    );
    let at = time::OffsetDateTime::now_utc();
    let sw_headers = vec![
        ("webhook-id".to_owned(), "msg_1".to_owned()),
        (
            "webhook-timestamp".to_owned(),
            at.unix_timestamp().to_string(),
        ),
        (
            "webhook-signature".to_owned(),
            sw.sign("msg_1", at.unix_timestamp(), sw_body.as_bytes())
                .unwrap(),
        ),
    ];
    let inbound = Inbound {
        body: sw_body.as_bytes(),
        headers: &sw_headers,
        received_at: at,
    };
    c.bench_function("standard_webhooks/authenticate_3KB", |b| {
        b.iter(|| sw.authenticate(black_box(&inbound)).unwrap())
    });
    c.bench_function("standard_webhooks/verify_and_map_3KB", |b| {
        b.iter(|| sw.verify("sw", black_box(&inbound)).unwrap())
    });

    // Stripe: the same 3 KB, `t.body` under one secret.
    let stripe = StripeVerifier::new(
        &paynotify_shared::config::StripeConfig {
            secrets: vec![],
            tolerance_secs: 300,
            future_tolerance_secs: 300,
        },
        &["whsec_test_secret".into()],
        &["m".into()],
    );
    let stripe_headers = vec![(
        "stripe-signature".to_owned(),
        stripe
            .sign(at.unix_timestamp(), sw_body.as_bytes())
            .unwrap(),
    )];
    let stripe_inbound = Inbound {
        body: sw_body.as_bytes(),
        headers: &stripe_headers,
        received_at: at,
    };
    c.bench_function("stripe/authenticate_3KB", |b| {
        b.iter(|| stripe.authenticate(black_box(&stripe_inbound)).unwrap())
    });

    // Adyen: one item's HMAC over its eight fields.
    let adyen = paynotify_shared::scheme::adyen::AdyenVerifier::new(
        &paynotify_shared::config::AdyenConfig {
            hmac_keys: vec![],
            capture: paynotify_shared::config::CaptureMode::Automatic,
        },
        &["44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056".into()],
        &["TestMerchant".into()],
    )
    .unwrap();
    let mut adyen_item = serde_json::json!({
        "pspReference": "7914073381342284", "merchantAccountCode": "TestMerchant",
        "merchantReference": "TestPayment-1407325143704",
        "amount": {"currency": "EUR", "value": 1130}, "eventCode": "AUTHORISATION",
        "success": "true", "reason": padding,
    });
    adyen_item["additionalData"] =
        serde_json::json!({ "hmacSignature": adyen.sign(&adyen_item).unwrap() });
    let adyen_body = serde_json::json!({
        "live": "false", "notificationItems": [{"NotificationRequestItem": adyen_item}],
    })
    .to_string();
    let adyen_inbound = Inbound {
        body: adyen_body.as_bytes(),
        headers: &[],
        received_at: at,
    };
    c.bench_function("adyen/verify_and_map_3KB", |b| {
        b.iter(|| adyen.verify("adyen", black_box(&adyen_inbound)).unwrap())
    });

    let received = || Received {
        source: "unionpay",
        received_at: time::OffsetDateTime::now_utc(),
        remote_addr: Some("203.0.113.7:41234".into()),
        method: "POST",
        path: "/notify/unionpay",
        query: None,
        headers: vec![(
            "content-type".into(),
            "application/x-www-form-urlencoded".into(),
        )],
        body: &body,
    };
    c.bench_function("envelope/encode", |b| {
        b.iter(|| Envelope::new(black_box(received())).to_json())
    });
    let json = Envelope::new(received()).to_json();
    c.bench_function("envelope/decode_and_check", |b| {
        b.iter(|| {
            Envelope::from_json(black_box(&json))
                .unwrap()
                .body_bytes()
                .unwrap()
        })
    });
}

/// The merchant side of UnionPay: signing a status query (RSA-2048 with
/// the test key) and parsing a settlement file.
fn merchant_side(c: &mut Criterion) {
    use paynotify_shared::scheme::unionpay::{
        parse_zm, query_request, write_zm, QueryTarget, SigningKey, ZmRecord,
    };
    use paynotify_shared::testing::read_vector;
    let key = SigningKey::from_pkcs12(
        &read_vector("unionpay/yansongda-pay/unipayAppCert.pfx"),
        "000000",
    )
    .unwrap();
    let target = QueryTarget::Order {
        order_id: "pay20240105145046".into(),
        txn_time: "20240105145046".into(),
    };
    c.bench_function("unionpay/sign_status_query", |b| {
        b.iter(|| query_request(&key, YANSONGDA_MERCHANT, "000000", black_box(&target)).unwrap())
    });
    let records: Vec<ZmRecord> = (0..10_000)
        .map(|i| ZmRecord {
            line: i + 1,
            trade_code: "S22".into(),
            trace_no: format!("{:06}", i % 1_000_000),
            trace_time: "1126101010".into(),
            amount_minor: 1000 + i as u64,
            query_id: format!("Q{i:020}"),
            order_id: format!("order{i:010}"),
            txn_type: "01".into(),
            txn_sub_type: "01".into(),
            biz_type: "000201".into(),
            orig_query_id: None,
            mer_id: YANSONGDA_MERCHANT.into(),
        })
        .collect();
    let file = write_zm(&records);
    c.bench_function("unionpay/parse_zm_10k_records", |b| {
        b.iter(|| parse_zm(black_box(&file)).unwrap())
    });
}

criterion_group!(verify, benches, merchant_side);
criterion_main!(verify);
