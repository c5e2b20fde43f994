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
use paynotify::settlement;
use paynotify_shared::config::GatewayConfig;
use paynotify_shared::envelope::Envelope;
use paynotify_shared::ports::{LedgerExt, Watch};
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
    the_settlement_file_lists_lost_changed_and_unsettled_transactions,
    many_runners_ask_once_and_a_lost_answer_write_is_asked_again,
    a_gateway_that_does_not_answer_times_out,
    the_cli_queries_fetches_and_reconciles,
    a_watch_ends_when_its_notification_is_applied,
    a_failure_answer_without_a_query_id_is_recorded,
);

/// UnionPay's answer about a failed purchase names no `queryId`: after an
/// in-process notification (which named it) the failure is recorded on the
/// payment, and a purchase known only by its order is recorded under the
/// order. Both were refused (`MissingField queryId`), the watch gave up and
/// the failure was never recorded.
async fn a_failure_answer_without_a_query_id_is_recorded(kind: Kind) {
    let s = setup_with(kind, true, AppOptions::all(), |g| {
        g.query_schedule_secs = vec![1, 2, 3];
    })
    .await;
    // Older than the schedule: a failure is final at once.
    let old = [("txnTime", "20261201100000")];
    let (txn, _) = known_purchase_with(&s, "Q700000001", 700, &old);
    s.gateway.add(Txn {
        state: TxnState::Failed("12".into()),
        ..txn.clone()
    });
    let in_process = s
        .app
        .sim
        .purchase_with("Q700000001", 700, &[old[0], ("respCode", "05")]);
    s.app.sim.send(in_process).await;
    s.app
        .wait_for_status("Q700000001", PaymentStatus::Failed)
        .await;
    let w = finished_watch(&s, &txn).await;
    assert_eq!(w.finished.as_deref(), Some("failed"), "{w:?}");
    let history = s
        .querier
        .ledger
        .history(&s.app.payment("Q700000001").await.unwrap().payment_key)
        .await
        .unwrap();
    assert_eq!(history.len(), 2, "in process, then failed: {history:?}");

    // Known only by its order (the merchant asks from the CLI).
    let (txn, _) = known_purchase_with(&s, "Q700000002", 700, &old);
    s.gateway.add(Txn {
        state: TxnState::Failed("12".into()),
        ..txn.clone()
    });
    let target = QueryTarget::Order {
        order_id: txn.order_id.clone(),
        txn_time: txn.txn_time.clone(),
    };
    let report = s
        .querier
        .query("unionpay", MERCHANT, &target)
        .await
        .unwrap();
    assert_eq!(
        (report.answer, report.applied.as_deref()),
        ("failed", Some("applied")),
        "{report:?}"
    );
    let key = report.event.unwrap().payment_key;
    assert_eq!(
        key.as_str(),
        format!(
            "unionpay#{MERCHANT}#order:{}:{}",
            txn.order_id, txn.txn_time
        )
    );
    let state = s.querier.ledger.get_payment(&key).await.unwrap().unwrap();
    assert_eq!(state.status, PaymentStatus::Failed);
}

/// An order the merchant expects a notification for, and the notification
/// comes at once: the watch ends with it, and UnionPay is never asked (each
/// query counts against `max_requests_per_sec`; it was asked at the first
/// step before, the answer applied as a duplicate).
async fn a_watch_ends_when_its_notification_is_applied(kind: Kind) {
    let s = setup_with(kind, true, AppOptions::all(), |g| {
        g.query_schedule_secs = vec![3, 6];
    })
    .await;
    let (txn, body) = known_purchase(&s, "Q100000009", 800);
    assert!(expect(&s, &txn).await, "a new watch");
    s.app.sim.send(body).await;
    s.app
        .wait_for_status("Q100000009", PaymentStatus::Paid)
        .await;
    let w = finished_watch(&s, &txn).await;
    assert_eq!(w.finished.as_deref(), Some("notified"), "{w:?}");
    assert_eq!(w.due_at, None);
    // Past the first step: nothing was asked.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(s.gateway.queries(), 0);
}

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
        // Generous: a timeout on a loaded CI machine would be a transient
        // error and an extra query, which the counts below would misread.
        timeout_ms: 5_000,
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
    setup_with(kind, auto, AppOptions::all(), |_| {}).await
}

async fn setup_with(
    kind: Kind,
    auto: bool,
    options: AppOptions,
    tweak: impl FnOnce(&mut GatewayConfig),
) -> Setup {
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
    tweak(&mut gw);
    let app = spawn_app_with_pki(kind, options, pki, |c| {
        c.worker.query_check_secs = 1;
        let up = c.sources.get_mut("unionpay").unwrap();
        up.unionpay.as_mut().unwrap().gateway = Some(gw);
    })
    .await;
    let querier = Querier {
        archive: app.app().backends.archive.clone(),
        ledger: app.app().backends.ledger.clone(),
        watches: app.app().backends.watches.clone(),
        verifiers: Arc::new(VerifierSet::new(
            SourceVerifier::all(&app.config, None).await.unwrap(),
        )),
        gateways: Arc::new(Gateways::load(&app.config, None).await.unwrap()),
        metrics: Some(app.app().metrics.clone()),
        known: Arc::default(),
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
    known_purchase_with(s, query_id, amount, &[])
}

fn known_purchase_with(
    s: &Setup,
    query_id: &str,
    amount: u64,
    extra: &[(&str, &str)],
) -> (Txn, String) {
    let body = s.app.sim.purchase_with(query_id, amount, extra);
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
    expect_since(s, txn, OffsetDateTime::now_utc()).await
}

async fn expect_since(s: &Setup, txn: &Txn, since: OffsetDateTime) -> bool {
    let gw = s.querier.gateways.get("unionpay").unwrap();
    query::watch(
        s.querier.watches.as_ref(),
        gw,
        MERCHANT,
        QueryTarget::Order {
            order_id: txn.order_id.clone(),
            txn_time: txn.txn_time.clone(),
        },
        "expected",
        since,
    )
    .await
    .unwrap()
}

/// The watch of `txn`'s order, once it has finished.
async fn finished_watch(s: &Setup, txn: &Txn) -> Watch {
    let id = Watch::id_for(
        "unionpay",
        MERCHANT,
        &QueryTarget::Order {
            order_id: txn.order_id.clone(),
            txn_time: txn.txn_time.clone(),
        },
    );
    let watches = s.querier.watches.clone();
    let done = async || {
        watches
            .get_watch(&id)
            .await
            .ok()
            .flatten()
            .filter(|w| w.finished.is_some())
    };
    wait_for("the watch finished", async || done().await.is_some()).await;
    done().await.unwrap()
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
    let w = finished_watch(&s, &txn).await;
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
    let w = s.querier.watches.get_watch(&id).await.unwrap().unwrap();
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
    // A 500 is retried once (retries = 1), then reported as transient; the
    // answer is archived beside its request, status and body as they came.
    let outbound = || s.querier.archive.list("outbound/", None, None);
    let before = outbound().await.unwrap();
    match ask().await {
        Err(e @ QueryError::Gateway(_)) => assert!(e.transient()),
        other => panic!("server error: {other:?}"),
    }
    let after = outbound().await.unwrap();
    let new: Vec<_> = after.iter().filter(|k| !before.contains(k)).collect();
    assert_eq!(new.len(), 2, "{new:?}");
    let answer = new.iter().find(|k| k.ends_with(".response.json")).unwrap();
    let answer = Envelope::from_json(&s.querier.archive.get(answer).await.unwrap()).unwrap();
    assert_eq!(answer.status, Some(500));
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
    let metrics = s.app.app().metrics.render(None).await;
    for line in [
        r#"paynotify_worker_status_queries_total{source="unionpay",answer="rejected"} 2"#,
        r#"paynotify_worker_status_queries_total{source="unionpay",answer="error"} 1"#,
        r#"paynotify_worker_status_queries_total{source="unionpay",answer="succeeded"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
}

/// Today in Beijing: the settlement day of what is sent now, as UnionPay's
/// notification says it (`settleDate`).
fn settle_day() -> (time::Date, String) {
    let d = OffsetDateTime::now_utc()
        .to_offset(time::macros::offset!(+8))
        .date();
    (d, format!("{:02}{:02}", u8::from(d.month()), d.day()))
}

async fn the_settlement_file_lists_lost_changed_and_unsettled_transactions(kind: Kind) {
    let s = setup(kind, false).await;
    let (day, mmdd) = settle_day();
    let settle = [("settleDate", mmdd.as_str())];
    let mut sent = Vec::new();
    // Settled and notified: matches.
    let (mut t1, b1) = known_purchase_with(&s, "Q400000001", 1000, &settle);
    // Settled, its notification lost.
    let (mut t2, _) = known_purchase_with(&s, "Q400000002", 500, &settle);
    // Notified at 700, settled at 750.
    let (mut t3, b3) = known_purchase_with(&s, "Q400000003", 700, &settle);
    // Notified, not in the file.
    let (_, b4) = known_purchase_with(&s, "Q400000004", 300, &settle);
    for t in [&mut t1, &mut t2, &mut t3] {
        t.settle_date = day;
    }
    t3.amount = 750;
    for t in [t1, t2, t3] {
        s.gateway.add(t);
    }
    s.gateway.add(Txn {
        state: TxnState::Failed("12".into()),
        ..known_purchase(&s, "Q400000004", 300).0
    });
    for b in [b1, b3, b4] {
        sent.push(s.app.sim.send(b).await);
    }
    s.app.wait_until_drained().await;
    for q in ["Q400000001", "Q400000003", "Q400000004"] {
        s.app.wait_for_status(q, PaymentStatus::Paid).await;
    }

    let fetched = settlement::fetch(&s.querier, "unionpay", MERCHANT, day)
        .await
        .unwrap();
    assert_eq!(fetched.records, 3);
    assert_eq!(s.gateway.files(), 1);
    let file = settlement::archived_file(s.querier.archive.as_ref(), "unionpay", day)
        .await
        .unwrap();
    let reconcile = async || {
        settlement::reconcile(s.querier.ledger.as_ref(), "unionpay", MERCHANT, day, &file)
            .await
            .unwrap()
    };
    let classes = |r: &settlement::Report| {
        let mut v: Vec<_> = r
            .mismatches
            .iter()
            .map(|m| (m.class, m.query_id.clone()))
            .collect();
        v.sort();
        v
    };
    let report = reconcile().await;
    assert_eq!(
        classes(&report),
        vec![
            ("amount_differs", "Q400000003".to_owned()),
            ("in_file_not_in_ledger", "Q400000002".to_owned()),
            ("in_ledger_not_in_file", "Q400000004".to_owned()),
        ],
        "{report:#?}"
    );
    assert_eq!(report.matched, 1);
    let differs = report
        .mismatches
        .iter()
        .find(|m| m.class == "amount_differs")
        .unwrap();
    assert_eq!(
        (differs.file_amount, differs.ledger_amount),
        (Some(750), Some(700))
    );

    // A status query by the file's queryId finds the lost one.
    let fixed = s
        .querier
        .query(
            "unionpay",
            MERCHANT,
            &QueryTarget::QueryId {
                query_id: "Q400000002".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(fixed.applied.as_deref(), Some("applied"));
    let report = reconcile().await;
    assert_eq!(
        classes(&report),
        vec![
            ("amount_differs", "Q400000003".to_owned()),
            ("in_ledger_not_in_file", "Q400000004".to_owned()),
        ]
    );
    assert_eq!(report.matched, 2);
}

/// The CLI against the same data directory as a running app: `unionpay
/// settlement fetch` and `reconcile` (exit 1 on mismatches, `--file`),
/// `unionpay query` (exit 0 with an answer, 1 without), `watch` and
/// `watches`. On AWS, as the operator's role (its calls are checked against
/// `OperatorPolicy` by `infra/tests/test_iam.py`).
async fn the_cli_queries_fetches_and_reconciles(kind: Kind) {
    let s = setup(kind, false).await;
    let (day, mmdd) = settle_day();
    let (mut lost, _) =
        known_purchase_with(&s, "Q500000001", 900, &[("settleDate", mmdd.as_str())]);
    lost.settle_date = day;
    s.gateway.add(lost.clone());
    // The gateway table, as an operator writes it.
    let config = s.app.dir.path().join("paynotify.toml");
    let gw = gateway_config(&s.gateway.url(), s.app.dir.path());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[sources.unionpay.unionpay.gateway]\nsigning_key = \"{}\"\nsigning_key_password = \"{}\"\n\
         url = \"{}\"\nfile_url = \"{}\"\nquery_schedule_secs = [60, 120]\n",
        gw.signing_key,
        gw.signing_key_password.unwrap(),
        gw.url,
        gw.file_url
    ));
    std::fs::write(&config, text).unwrap();
    let cfg = config.to_str().unwrap().to_owned();
    let env = support::deployed::backend_env(&s.app.config.backend, "operator");
    let run = |args: Vec<String>| {
        let env = env.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            support::cli::paynotify(&args, &env)
        })
    };
    let argv = |a: &[&str]| {
        let mut v: Vec<String> = a.iter().map(|s| (*s).to_owned()).collect();
        v.extend(["--config".into(), cfg.clone()]);
        v
    };
    let date = day.to_string();
    let out = run(argv(&[
        "unionpay",
        "settlement",
        "fetch",
        "--source",
        "unionpay",
        "--date",
        &date,
    ]))
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reconcile = argv(&[
        "unionpay",
        "settlement",
        "reconcile",
        "--source",
        "unionpay",
        "--date",
        &date,
        "--json",
    ]);
    let out = run(reconcile.clone()).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["mismatches"][0]["class"], "in_file_not_in_ledger");
    assert_eq!(report["mismatches"].as_array().unwrap().len(), 1);

    let out = run(argv(&[
        "unionpay",
        "query",
        "--source",
        "unionpay",
        "--query-id",
        "Q500000001",
        "--json",
    ]))
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (answer["answer"].as_str(), answer["applied"].as_str()),
        (Some("succeeded"), Some("applied"))
    );
    let out = run(reconcile.clone()).await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A file given on the command line: a bare ZM file with one more record.
    let mut records = settlement::archived_file(s.querier.archive.as_ref(), "unionpay", day)
        .await
        .unwrap()
        .records;
    let mut extra = records[0].clone();
    extra.query_id = "Q500000009".into();
    extra.line = 2;
    records.push(extra);
    let zm = s.app.dir.path().join("INN_ZM_file");
    std::fs::write(&zm, paynotify_shared::scheme::unionpay::write_zm(&records)).unwrap();
    let mut with_file = reconcile.clone();
    with_file.extend(["--file".into(), zm.to_str().unwrap().into()]);
    let out = run(with_file).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["mismatches"][0]["query_id"], "Q500000009");

    // A ZIP whose ZME file holds a correction of the first transaction
    // (a chargeback, say): money moved without a notification, exit 1,
    // named with the transaction it corrects. It was never read.
    use paynotify_shared::scheme::unionpay::{
        encode_file_content, inflate_file_content, write_zm, write_zme, ZmeRecord,
    };
    let first = &records[0];
    let correction = ZmeRecord {
        line: 1,
        trade_code: "E74".into(),
        trace_no: "900001".into(),
        trace_time: first.trace_time.clone(),
        amount_minor: first.amount_minor,
        orig_trace_no: first.trace_no.clone(),
        orig_trace_time: first.trace_time.clone(),
        orig_settle_date: first.trace_time[..4].to_owned(),
        orig_amount_minor: Some(first.amount_minor),
        merchant_fee: "C000000000000".into(),
        settle_amount: format!("D{:012}", first.amount_minor),
        mer_id: MERCHANT.into(),
    };
    let zip = inflate_file_content(
        &encode_file_content(&[
            ("INN_ZM_x".into(), write_zm(&records[..1])),
            ("INN_ZME_x".into(), write_zme(&[correction])),
        ])
        .unwrap(),
    )
    .unwrap();
    let zip_path = s.app.dir.path().join("settlement.zip");
    std::fs::write(&zip_path, zip).unwrap();
    let mut with_zip = reconcile.clone();
    with_zip.extend(["--file".into(), zip_path.to_str().unwrap().into()]);
    let out = run(with_zip).await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["mismatches"].as_array().unwrap().len(),
        0,
        "{report}"
    );
    assert_eq!(
        report["corrections"][0]["query_id"],
        first.query_id.as_str(),
        "{report}"
    );
    assert_eq!(report["corrections"][0]["trade_code"], "E74");

    // An answer the ledger refuses (a refund larger than what was paid, a
    // transition the state machine does not take): exit 1 with the reason,
    // not 0 as though it were applied.
    let (paid, body) = known_purchase(&s, "Q500000003", 700);
    s.app.sim.send(body).await;
    s.app
        .wait_for_status("Q500000003", PaymentStatus::Paid)
        .await;
    s.gateway.add(Txn {
        query_id: "R500000003".into(),
        order_id: "r500000003".into(),
        txn_type: "04".into(),
        amount: 900,
        orig_query_id: Some("Q500000003".into()),
        ..paid
    });
    let out = run(argv(&[
        "unionpay",
        "query",
        "--source",
        "unionpay",
        "--query-id",
        "R500000003",
    ]))
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exceed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // No answer to act on: exit 1, the step named.
    s.gateway
        .script("Q500000001", [Scripted::ForgedCertificate]);
    let out = run(argv(&[
        "unionpay",
        "query",
        "--source",
        "unionpay",
        "--query-id",
        "Q500000001",
    ]))
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("step certificate"));

    // A watch for an order; listed until it is answered.
    let out = run(argv(&[
        "unionpay",
        "watch",
        "--source",
        "unionpay",
        "--order-id",
        "order20261126",
        "--txn-time",
        "20261126100000",
    ]))
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(argv(&["unionpay", "watches", "--json"])).await.unwrap();
    let watches: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(watches[0]["reason"], "expected");
    assert_eq!(watches[0]["target"]["order_id"], "order20261126");
    let bad = run(argv(&[
        "unionpay",
        "watch",
        "--source",
        "unionpay",
        "--order-id",
        "x",
        "--txn-time",
        "1",
    ]))
    .await
    .unwrap();
    assert_eq!(bad.status.code(), Some(2), "a malformed order is refused");
}

async fn many_runners_ask_once_and_a_lost_answer_write_is_asked_again(kind: Kind) {
    let options = AppOptions {
        faults: true,
        ..AppOptions::all()
    };
    // A short timeout keeps the claim's lease (and the test) short: 9 s.
    let s = setup_with(kind, true, options, |g| g.timeout_ms = 1_500).await;
    // Four passes at once beside the app's own worker: one claim wins.
    let (txn, _) = known_purchase(&s, "Q600000001", 100);
    let now = OffsetDateTime::now_utc();
    assert!(expect_since(&s, &txn, now - time::Duration::seconds(10)).await);
    let passes: Vec<_> = (0..4)
        .map(|_| {
            let q = s.querier.clone();
            tokio::spawn(async move { query::run_due(&q, now).await.unwrap() })
        })
        .collect();
    for p in passes {
        p.await.unwrap();
    }
    s.app
        .wait_for_status("Q600000001", PaymentStatus::Paid)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.gateway.queries(), 1, "asked once");

    // The answer is applied, then writing the watch fails (as if the worker
    // died there): the claim expires, UnionPay is asked again, and the
    // second answer is a duplicate.
    let (txn, _) = known_purchase(&s, "Q600000002", 200);
    let faults = &s.app.faults().ledger;
    faults.only(Some(&["put_watch"]));
    faults.fail_nth(3); // create, claim, then the answer's write
    assert!(
        expect_since(
            &s,
            &txn,
            OffsetDateTime::now_utc() - time::Duration::seconds(10)
        )
        .await
    );
    let paid = s
        .app
        .wait_for_status("Q600000002", PaymentStatus::Paid)
        .await;
    finished_watch(&s, &txn).await;
    let ledger = s.querier.ledger.clone();
    assert_eq!(faults.injected(), 1);
    assert_eq!(s.gateway.queries(), 3, "the lost one was asked twice");
    let history = ledger.history(&paid.payment_key).await.unwrap();
    assert_eq!(history.len(), 1, "applied once");
}

async fn a_gateway_that_does_not_answer_times_out(kind: Kind) {
    // Nothing listens on the port: connection refused, retried, transient.
    let s = setup_with(kind, false, AppOptions::all(), |g| {
        g.url = "http://127.0.0.1:9".into();
        g.timeout_ms = 300;
    })
    .await;
    let started = Instant::now();
    let err = s
        .querier
        .query(
            "unionpay",
            MERCHANT,
            &QueryTarget::QueryId {
                query_id: "Q700000001".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, QueryError::Gateway(_)) && err.transient(),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The request was archived before it was sent (its retries send the
    // same bytes), and beside it, under the same id, what came back: no
    // answer, the error (docs/unionpay.md: every exchange is archived).
    let mut keys = s
        .querier
        .archive
        .list("outbound/", None, None)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys[0].ends_with(".request.json") && keys[1].ends_with(".response.json"));
    let id = |k: &str| {
        k.rsplit('/')
            .next()
            .unwrap()
            .split('.')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(id(&keys[0]), id(&keys[1]));
    let response = Envelope::from_json(&s.querier.archive.get(&keys[1]).await.unwrap()).unwrap();
    assert_eq!(response.status, None);
    let error = response
        .headers
        .iter()
        .find(|(k, _)| k == "x-paynotify-error");
    assert!(
        error.is_some_and(|(_, v)| v.contains("network error")),
        "{:?}",
        response.headers
    );
}
