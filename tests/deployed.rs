//! The stack's processes on the emulator, each as its role runs it:
//! `paynotify-ingest` and `paynotify-worker` started as the task
//! definitions start them (the image's baked configuration, the stack's
//! environment, certificates from Secrets Manager), and the operator's CLI
//! commands. Notifications of every path a deployment sees go through them:
//! a purchase and its refund, a refund before its purchase (parked, then
//! applied with it), a PSP retry, a tampered body (dead-lettered), a body
//! too large for an SQS message (a pointer into its segment), a refund
//! whose segment was never written, parked until its purchase, and a
//! message pointing at an archive object that does not exist.
//!
//! What each process calls is written down (`support::deployed`) and
//! checked against its role's policies by `infra/tests/test_iam.py`; this
//! test checks that the deployment works.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use paynotify::simulate::{tamper, Delivery, Simulator};
use paynotify_shared::envelope::QueuedBody;
use paynotify_shared::ports::LedgerExt;
use paynotify_shared::segment::Location;
use paynotify_shared::{backend, PaymentKey, PaymentStatus};
use support::app::MERCHANT;
use support::deployed::Deployed;
use support::{binary, free_port};

#[macro_use]
mod support;

/// A process of the stack, killed when dropped.
struct Process(Child);

impl Process {
    fn start(name: &str, env: Vec<(String, String)>, extra: &[(&str, String)]) -> Self {
        let baked = concat!(env!("CARGO_MANIFEST_DIR"), "/infra/docker/paynotify.toml");
        let child = Command::new(binary(name))
            .args(["--config", baked])
            .env_clear()
            .envs(env)
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }

    /// SIGTERM, and its exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: a signal to our own child.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        self.0.wait().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The operator's `paynotify` with `args`: its output, its exit code one of
/// `codes`.
fn operator(d: &Deployed, args: &[&str], codes: &[i32]) -> String {
    let baked = concat!(env!("CARGO_MANIFEST_DIR"), "/infra/docker/paynotify.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_paynotify"))
        .args(args)
        .args(["--config", baked])
        .env_clear()
        .envs(d.env_as("operator"))
        .output()
        .unwrap();
    assert!(
        out.status.code().is_some_and(|c| codes.contains(&c)),
        "paynotify {args:?} exited {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn wait_for(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok().await {
        assert!(Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_s_processes_apply_what_a_deployment_receives() {
    let d = Deployed::new().await;
    let (port, admin, worker_admin) = (free_port(), free_port(), free_port());
    let ingest = Process::start(
        "paynotify-ingest",
        d.env_as("ingest"),
        &[
            ("PAYNOTIFY__INGEST__LISTEN", format!("127.0.0.1:{port}")),
            (
                "PAYNOTIFY__INGEST__ADMIN_LISTEN",
                format!("127.0.0.1:{admin}"),
            ),
        ],
    );
    let worker = Process::start(
        "paynotify-worker",
        d.env_as("worker"),
        &[
            (
                "PAYNOTIFY__WORKER__ADMIN_LISTEN",
                format!("127.0.0.1:{worker_admin}"),
            ),
            ("PAYNOTIFY__WORKER__CONCURRENCY", "2".into()),
            // The baked 20 s long poll would hold SIGTERM that long.
            ("PAYNOTIFY__WORKER__RECEIVE_WAIT_MS", "1000".into()),
            ("PAYNOTIFY__WORKER__RETRY_MIN_DELAY_MS", "100".into()),
            ("PAYNOTIFY__WORKER__RETRY_MAX_DELAY_SECS", "1".into()),
        ],
    );
    let url = format!("http://127.0.0.1:{port}/notify/unionpay");
    let sim = Simulator::new(
        d.pki.leaf_key_pem.as_bytes(),
        &d.pki.leaf_pem,
        MERCHANT,
        &url,
    )
    .unwrap();
    let http = reqwest::Client::new();
    wait_for("ingest listening", async || {
        http.get(format!("http://127.0.0.1:{admin}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;

    let purchase = sim.purchase("dep-1", 5000);
    for body in [
        purchase.clone(),
        sim.refund("dep-1", "dep-1-r", 1200),
        sim.refund("dep-2", "dep-2-r", 300),
        sim.purchase("dep-2", 900),
        purchase.clone(),
    ] {
        assert!(matches!(sim.send(body).await, Delivery::Accepted(1)));
    }
    assert!(matches!(
        sim.send(tamper(&sim.purchase("dep-3", 100))).await,
        Delivery::Accepted(1)
    ));
    // Over SQS's 256 KiB: archived, then sent as a pointer into its segment.
    let large = sim.purchase_with("dep-4", 700, &[("reqReserved", &"x".repeat(300 << 10))]);
    assert!(matches!(sim.send(large).await, Delivery::Accepted(1)));
    // A message whose archive object is not there (a bucket emptied by
    // hand): the worker must see "missing", not "denied".
    let backends = backend::build(&d.config.backend).await.unwrap();
    // A message whose segment was never written (ingest's put failed after
    // the send and answered 503), a refund parked until its purchase: it is
    // applied from the message's own bytes.
    let lone = support::envelope(sim.refund("dep-5", "dep-5-r", 100).as_bytes());
    let (_, _, at) = lone.to_segment();
    backends
        .queue
        .send(&QueuedBody::inline(lone.to_json(), &at, usize::MAX).unwrap())
        .await
        .unwrap();
    wait_for("the lone refund parked", async || {
        let parked = backends
            .ledger
            .parked_before(time::OffsetDateTime::now_utc(), 10)
            .await;
        parked.is_ok_and(|p| !p.is_empty())
    })
    .await;
    assert!(matches!(
        sim.send(sim.purchase("dep-5", 300)).await,
        Delivery::Accepted(1)
    ));
    let missing = Location {
        key: "raw/source=unionpay/date=2026-01-01/hour=00/01JMISSING-1.ndjson".into(),
        span: Some([0, 100]),
    };
    backends
        .queue
        .send(&QueuedBody::pointer(
            &missing,
            Some("01JMISSING"),
            None,
            None,
        ))
        .await
        .unwrap();

    let ledger = backends.ledger.clone();
    let status = |id: &str| {
        let (ledger, key) = (ledger.clone(), PaymentKey::new("unionpay", MERCHANT, id));
        async move { ledger.get_payment(&key).await.unwrap() }
    };
    wait_for("every notification settled", async || {
        let dlq = backends.dead_letters.dlq_list(10).await.unwrap();
        let settled = backends
            .queue
            .stats()
            .await
            .is_ok_and(|s| s.visible + s.in_flight == 0);
        settled
            && dlq.len() >= 2
            && status("dep-4").await.is_some()
            && status("dep-5")
                .await
                .is_some_and(|p| p.refunded_minor == 100)
    })
    .await;
    let one = status("dep-1").await.unwrap();
    assert_eq!(
        (one.status, one.paid_minor, one.refunded_minor),
        (PaymentStatus::PartiallyRefunded, 5000, 1200)
    );
    let two = status("dep-2").await.unwrap();
    assert_eq!((two.paid_minor, two.refunded_minor), (900, 300));
    assert_eq!(status("dep-4").await.unwrap().status, PaymentStatus::Paid);
    let five = status("dep-5").await.unwrap();
    assert_eq!((five.paid_minor, five.refunded_minor), (300, 100));
    let mut reasons = support::dlq_reasons(backends.dead_letters.as_ref()).await;
    reasons.dedup();
    assert_eq!(reasons, ["bad_signature", "missing_archive_object"]);

    // What an operator does with it.
    let got = operator(
        &d,
        &["txn", "get", "unionpay", MERCHANT, "dep-1", "--json"],
        &[0],
    );
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["state"]["status"], "PARTIALLY_REFUNDED", "{got}");
    // By the merchant's order id, through the table's orders index.
    let found = operator(&d, &["txn", "find", "odep-1", "--json"], &[0]);
    let found: serde_json::Value = serde_json::from_str(&found).unwrap();
    assert_eq!(found["payments"], serde_json::json!([got]), "{found}");
    operator(&d, &["txn", "history", "unionpay", MERCHANT, "dep-2"], &[0]);
    let listed = operator(&d, &["dlq", "list", "--json"], &[0]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    operator(&d, &["dlq", "show", &id], &[0]);
    operator(&d, &["parked", "list"], &[0]);
    operator(&d, &["archive", "ls"], &[0]);
    operator(
        &d,
        &["dlq", "redrive", "--reason", "bad_signature", "--dry-run"],
        &[0],
    );
    operator(
        &d,
        &["dlq", "redrive", "--reason", "missing_archive_object"],
        &[0],
    );
    operator(
        &d,
        &["dlq", "purge", "--reason", "bad_signature", "--yes"],
        &[0],
    );
    // Clean or not (a dead letter is still being redriven), but an answer.
    operator(&d, &["reconcile"], &[0, 1]);
    let rfc3339 = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let now = time::OffsetDateTime::now_utc();
    operator(
        &d,
        &[
            "replay",
            "--from",
            &rfc3339(now - time::Duration::hours(1)),
            "--to",
            &rfc3339(now),
        ],
        &[0],
    );

    assert!(ingest.stop().success());
    assert!(worker.stop().success());
}

/// `paynotify-api` as the console's task runs it, behind the load
/// balancer's OIDC sign-in (a key server on loopback plays AWS's): an
/// operator's every page and two actions, so that the console role's
/// calls are written down for `infra/tests/test_iam.py`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_task_serves_an_operator_the_load_balancer_signed_in() {
    use paynotify::api::oidc::minted::Signer;
    use paynotify_shared::ports::{Incoming, LedgerWrite, ParkedEvent};

    let d = Deployed::new().await;
    let aws = &d.config.backend.aws;
    let clients = paynotify_shared::backend::aws::Clients::new(aws).await;
    // The stack's generated form secret, under the name it gives it.
    let form_secret = clients
        .secrets
        .create_secret()
        .name(format!("{}/console/form-secret", aws.queue))
        .secret_string("f".repeat(64))
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    // A service's key for the read API, under the prefix the role reads.
    let api_key = "k".repeat(40);
    let api_key_secret = clients
        .secrets
        .create_secret()
        .name(format!("{}/api/orders-service", aws.queue))
        .secret_string(&api_key)
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    let alb = Signer::new();
    let keys_url = paynotify::api::oidc::minted::key_server(vec![("k1", alb.public_pem())])
        .await
        .0;

    // Something on the pages: a parked refund and a dead letter.
    let backends = backend::build(&d.config.backend).await.unwrap();
    let park = async |reference: &str, notification_id: &str| {
        let refund = support::event(
            reference,
            &format!("{reference}-r"),
            paynotify_shared::EventKind::Refund,
            300,
        );
        backends
            .ledger
            .write(&LedgerWrite {
                key: refund.payment_key.clone(),
                expected_version: 0,
                incoming: Incoming::Park(ParkedEvent {
                    event: refund,
                    notification_id: notification_id.into(),
                    parked_at: time::OffsetDateTime::now_utc(),
                    conflict: None,
                }),
                state: None,
                unparked: vec![],
                conflicts: vec![],
                aliases: vec![],
            })
            .await
            .unwrap();
    };
    park("con-1", "01JCONSOLE00000000000000000").await;
    // A second parked refund, its notification archived: to set aside.
    let archived = support::envelope(b"a refund notification's bytes");
    let (segment, bytes, _) = archived.to_segment();
    backends.archive.put(&segment, &bytes).await.unwrap();
    park("con-2", &archived.id).await;
    backends.queue.send(b"{}").await.unwrap();
    let [message] = <[_; 1]>::try_from(
        backends
            .queue
            .receive(1, Duration::from_secs(2))
            .await
            .unwrap(),
    )
    .unwrap();
    backends
        .queue
        .dead_letter(&message, "bad_signature", "a test's dead letter")
        .await
        .unwrap();

    let arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/paynotify/50dc6c495c0c9188";
    let (port, admin) = (free_port(), free_port());
    let api = Process::start(
        "paynotify-api",
        d.env_as("console"),
        &[
            ("PAYNOTIFY__API__LISTEN", format!("127.0.0.1:{port}")),
            ("PAYNOTIFY__API__ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
            ("PAYNOTIFY__API__OIDC__LOAD_BALANCER_ARN", arn.to_owned()),
            (
                "PAYNOTIFY__API__OIDC__ISSUER",
                "https://idp.example.com".into(),
            ),
            ("PAYNOTIFY__API__OIDC__PUBLIC_KEYS_URL", keys_url),
            (
                "PAYNOTIFY__API__OIDC__OPERATORS",
                "[\"ops@example.com\"]".into(),
            ),
            (
                "PAYNOTIFY__API__OIDC__FORM_SECRET",
                format!("secretsmanager:{form_secret}"),
            ),
            (
                "PAYNOTIFY__API__KEYS",
                format!(
                    "[{{name=\"orders-service\",scope=\"read\",secret=\"secretsmanager:{api_key_secret}\"}}]"
                ),
            ),
        ],
    );
    let http = reqwest::Client::new();
    wait_for("the console's task ready", async || {
        http.get(format!("http://127.0.0.1:{admin}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 300;
    let token = alb.token(
        &serde_json::json!({"alg": "ES256", "kid": "k1", "signer": arn,
                            "iss": "https://idp.example.com", "exp": exp}),
        &serde_json::json!({"sub": "s-1", "email": "ops@example.com", "exp": exp}),
    );
    let base = format!("http://127.0.0.1:{port}");
    let get = async |path: &str| {
        let r = http
            .get(format!("{base}{path}"))
            .header("x-amzn-oidc-data", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::OK, "{path}");
        r.text().await.unwrap()
    };
    let dead = backends.dead_letters.dlq_list(10).await.unwrap();
    for path in [
        "/console/".to_owned(),
        "/console/payments?order_id=odep-1".to_owned(),
        "/console/payments?source=u&merchant=m&reference=con-1".to_owned(),
        "/console/search?status=PAID".to_owned(),
        "/console/dead-letters".to_owned(),
        format!("/console/dead-letters/{}", dead[0].id),
        "/console/deliveries".to_owned(),
        "/console/reconcile".to_owned(),
    ] {
        get(&path).await;
    }
    // A service, with its key and no sign-in: the API.
    let r = http
        .get(format!("{base}/api/v1/parked"))
        .bearer_auth(&api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let parked = get("/console/parked").await;
    let form_token = support::form_field(&parked, "token");
    let post = async |path: &str, form: &[(&str, String)]| {
        let r = http
            .post(format!("{base}{path}"))
            .header("x-amzn-oidc-data", &token)
            .form(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::OK, "{path}");
    };
    for (payment, event, path) in [
        ("u#m#con-1", "con-1-r", "/console/parked/resolve"),
        ("u#m#con-2", "con-2-r", "/console/parked/dead-letter"),
    ] {
        assert!(
            parked.contains(payment) && parked.contains(event),
            "{parked:.3000}"
        );
        post(
            path,
            &[
                ("token", form_token.clone()),
                ("payment_key", payment.to_owned()),
                ("event_key", event.to_owned()),
                ("note", "a test".into()),
                ("confirm", "yes".into()),
            ],
        )
        .await;
    }
    // Set aside: a dead letter of its own.
    let dead_now = backends.dead_letters.dlq_list(10).await.unwrap();
    assert!(
        dead_now
            .iter()
            .any(|d| d.id == archived.id && d.reason == "set_aside"),
        "{dead_now:?}"
    );
    post(
        "/console/dead-letters/redrive",
        &[
            ("token", form_token),
            ("id", dead[0].id.clone()),
            ("confirm", "yes".into()),
        ],
    )
    .await;
    assert!(backends
        .ledger
        .parked_before(time::OffsetDateTime::now_utc(), 10)
        .await
        .unwrap()
        .is_empty());
    let left = backends.dead_letters.dlq_list(10).await.unwrap();
    assert_eq!(
        left.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        [archived.id.as_str()],
        "the redriven one gone, the one set aside there"
    );
    assert!(api.stop().success());
}
