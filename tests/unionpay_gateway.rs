//! UnionPay status queries end to end, on both backends, against the
//! simulated gateway: a payment whose notification never came becomes PAID
//! through the workers' own queries, exactly once, with each exchange in
//! the archive; an in-process answer is asked again; a refund parked for
//! its payment is resolved by asking about the payment; forged, unsigned
//! and failed answers change nothing.

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use paynotify::app::AppOptions;
use paynotify::gateway_sim::{GatewaySim, Scripted, Txn, TxnState};
use paynotify_shared::config::GatewayConfig;
use paynotify_shared::ports::Watch;
use paynotify_shared::scheme::unionpay::{parse_form, QueryTarget};
use paynotify_shared::scheme::{SourceVerifier, VerifierSet};
use paynotify_shared::secret::SecretRef;
use paynotify_shared::testing::vectors_dir;
use paynotify_shared::testpki::{generate, TestPkiOptions};
use paynotify_shared::PaymentStatus;
use paynotify_worker::query::{self, Gateways, Querier, QueryError};
use support::app::{spawn_app_with_pki, TestApp, MERCHANT};
use support::Kind;
use time::OffsetDateTime;

on_both_backends!(
    a_lost_notification_becomes_paid_through_the_automatic_query_once,
    a_parked_refund_is_resolved_by_asking_about_its_payment,
    forged_unsigned_and_failed_answers_change_nothing,
);

/// The merchant's test key as UnionPay issues it (PKCS#12, password
/// `000000`), and its certificate for the simulated gateway.
fn gateway_config(url: &str, dir: &std::path::Path) -> GatewayConfig {
    let certs = vectors_dir().join("unionpay/certs");
    let password = dir.join("pfx-password");
    std::fs::write(&password, "000000\n").unwrap();
    GatewayConfig {
        signing_key: SecretRef::File(certs.join("acp_test_sign_2021-2026.pfx")),
        signing_cert: None,
        signing_key_password: Some(SecretRef::File(password)),
        url: url.to_owned(),
        file_url: url.to_owned(),
        biz_type: "000000".into(),
        auto_query: true,
        query_schedule_secs: vec![1, 2, 3, 4, 5, 6],
        timeout_ms: 2_000,
        retries: 1,
        max_requests_per_sec: 50,
    }
}

struct Setup {
    app: TestApp,
    gateway: GatewaySim,
    querier: Querier,
    _dir: tempfile::TempDir,
}

async fn setup(kind: Kind, auto: bool) -> Setup {
    let pki = generate(&TestPkiOptions::default()).unwrap();
    let merchant_cert =
        std::fs::read(vectors_dir().join("unionpay/certs/acp_test_sign_2021-2026.cert.pem"))
            .unwrap();
    let gateway = GatewaySim::start(pki.leaf_key_pem.as_bytes(), &pki.leaf_pem, &merchant_cert)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut gw = gateway_config(&gateway.url(), dir.path());
    gw.auto_query = auto;
    let app = spawn_app_with_pki(kind, AppOptions::all(), pki, |c| {
        c.worker.query_check_secs = 1;
        let up = c.sources.get_mut("unionpay").unwrap();
        up.unionpay.as_mut().unwrap().gateway = Some(gw);
    })
    .await;
    let querier = Querier {
        archive: app.app().backends.archive.clone(),
        ledger: app.app().backends.ledger.clone(),
        verifiers: Arc::new(VerifierSet::new(
            SourceVerifier::all(&app.config, None).await.unwrap(),
        )),
        gateways: Arc::new(Gateways::load(&app.config, None).await.unwrap()),
    };
    Setup {
        app,
        gateway,
        querier,
        _dir: dir,
    }
}

/// A purchase the simulated gateway knows, with the order and time of the
/// notification body UnionPay would have sent for it.
fn known_purchase(s: &Setup, query_id: &str, amount: u64) -> (Txn, String) {
    let body = s.app.sim.purchase(query_id, amount);
    let fields = parse_form(body.as_bytes()).unwrap();
    let txn = Txn {
        mer_id: MERCHANT.into(),
        order_id: fields.get("orderId").unwrap().into(),
        txn_time: fields.get("txnTime").unwrap().into(),
        query_id: query_id.into(),
        txn_type: "01".into(),
        amount,
        orig_query_id: None,
        state: TxnState::Succeeded,
        settle_date: OffsetDateTime::now_utc().date(),
    };
    s.gateway.add(txn.clone());
    (txn, body)
}

async fn expect(s: &Setup, txn: &Txn) -> bool {
    let gw = s.querier.gateways.get("unionpay").unwrap();
    query::watch(
        s.querier.ledger.as_ref(),
        gw,
        MERCHANT,
        QueryTarget::Order {
            order_id: txn.order_id.clone(),
            txn_time: txn.txn_time.clone(),
        },
        "expected",
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap()
}

async fn wait_for(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_lost_notification_becomes_paid_through_the_automatic_query_once(kind: Kind) {
    let s = setup(kind, true).await;
    let (txn, body) = known_purchase(&s, "Q100000001", 1500);
    // UnionPay is still processing when first asked.
    s.gateway.script("Q100000001", [Scripted::InProcess]);
    assert!(expect(&s, &txn).await, "a new watch");
    assert!(!expect(&s, &txn).await, "one watch per transaction");

    let paid = s
        .app
        .wait_for_status("Q100000001", PaymentStatus::Paid)
        .await;
    assert_eq!(paid.paid_minor, 1500);
    let id = Watch::id_for(
        "unionpay",
        MERCHANT,
        &QueryTarget::Order {
            order_id: txn.order_id.clone(),
            txn_time: txn.txn_time.clone(),
        },
    );
    let ledger = s.querier.ledger.clone();
    wait_for("the watch finished", async || {
        ledger
            .get_watch(&id)
            .await
            .unwrap()
            .is_some_and(|w| w.finished.is_some())
    })
    .await;
    let w = ledger.get_watch(&id).await.unwrap().unwrap();
    assert_eq!(w.finished.as_deref(), Some("succeeded"));
    assert_eq!(w.attempts, 2, "asked again after the in-process answer");
    // Asked exactly twice, and never again once final.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(s.gateway.queries(), 2);
    assert_eq!(s.gateway.rejected_requests(), 0);
    let keys = s
        .app
        .app()
        .backends
        .archive
        .list("outbound/source=unionpay/", None, None)
        .await
        .unwrap();
    assert_eq!(keys.len(), 4, "two requests and two answers: {keys:?}");
    assert_eq!(
        keys.iter()
            .filter(|k| k.ends_with(".response.json"))
            .count(),
        2
    );

    // The notification comes after all: the same event, a duplicate.
    assert!(matches!(
        s.app.sim.send(body).await,
        paynotify::simulate::Delivery::Accepted(_)
    ));
    s.app.wait_until_drained().await;
    let history = s
        .app
        .app()
        .backends
        .ledger
        .history(&paid.payment_key)
        .await
        .unwrap();
    assert_eq!(history.len(), 1, "applied once: {history:?}");
    let state = s.app.payment("Q100000001").await.unwrap();
    assert_eq!(
        (state.status, state.paid_minor),
        (PaymentStatus::Paid, 1500)
    );
}

async fn a_parked_refund_is_resolved_by_asking_about_its_payment(kind: Kind) {
    let s = setup(kind, true).await;
    known_purchase(&s, "Q200000001", 800);
    // The refund arrives; the payment's notification never does.
    let refund = s.app.sim.refund("Q200000001", "R200000001", 800);
    s.app.sim.send(refund).await;
    let refunded = s
        .app
        .wait_for_status("Q200000001", PaymentStatus::Refunded)
        .await;
    assert_eq!((refunded.paid_minor, refunded.refunded_minor), (800, 800));
    let id = Watch::id_for(
        "unionpay",
        MERCHANT,
        &QueryTarget::QueryId {
            query_id: "Q200000001".into(),
        },
    );
    let w = s.querier.ledger.get_watch(&id).await.unwrap().unwrap();
    assert_eq!(w.reason, "parked");
    assert_eq!(s.app.reconcile().await.parked, 0);
}

async fn forged_unsigned_and_failed_answers_change_nothing(kind: Kind) {
    let s = setup(kind, false).await;
    let (txn, _) = known_purchase(&s, "Q300000001", 300);
    let target = QueryTarget::Order {
        order_id: txn.order_id.clone(),
        txn_time: txn.txn_time.clone(),
    };
    s.gateway.script(
        "Q300000001",
        [
            Scripted::ForgedCertificate,
            Scripted::Unsigned,
            Scripted::ServerError,
            Scripted::ServerError,
        ],
    );
    let ask = || s.querier.query("unionpay", MERCHANT, &target);
    match ask().await {
        Err(QueryError::Rejected { step, .. }) => assert_eq!(step, "certificate"),
        other => panic!("forged certificate: {other:?}"),
    }
    match ask().await {
        Err(QueryError::Rejected { step, error }) => {
            assert_eq!(step, "fields", "{error}");
            assert!(error.contains("signature"), "{error}");
        }
        other => panic!("unsigned: {other:?}"),
    }
    // A 500 is retried once (retries = 1), then reported as transient.
    match ask().await {
        Err(e @ QueryError::Gateway(_)) => assert!(e.transient()),
        other => panic!("server error: {other:?}"),
    }
    assert!(s.app.payment("Q300000001").await.is_none());

    // A failure before the end of the schedule may still change: not applied.
    s.gateway.add(Txn {
        state: TxnState::Failed("12".into()),
        ..txn.clone()
    });
    let report = ask().await.unwrap();
    assert_eq!((report.answer, report.applied.as_deref()), ("failed", None));
    assert!(s.app.payment("Q300000001").await.is_none());

    // Unknown to UnionPay.
    let missing = QueryTarget::Order {
        order_id: "nosuchorder1".into(),
        txn_time: txn.txn_time.clone(),
    };
    let report = s
        .querier
        .query("unionpay", MERCHANT, &missing)
        .await
        .unwrap();
    assert_eq!(report.answer, "not_found");

    // Then it succeeds: applied once, whatever asks again.
    s.gateway.add(txn.clone());
    for _ in 0..2 {
        let report = ask().await.unwrap();
        assert_eq!(report.answer, "succeeded");
    }
    let history = s
        .querier
        .ledger
        .history(&s.app.payment("Q300000001").await.unwrap().payment_key)
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(s.gateway.rejected_requests(), 0);
}
