//! A whole paynotify process for end-to-end tests: ingest and workers on
//! port 0, a fresh data directory (or emulator resources) and a test PKI,
//! driven by the simulator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use paynotify::app::{App, AppOptions};
use paynotify::simulate::Simulator;
use paynotify_shared::config::{Config, UNIONPAY_IDENTITY};
use paynotify_shared::ports::{wait_drained, LedgerExt};
use paynotify_shared::testpki::{generate, TestPki, TestPkiOptions};
use paynotify_shared::{PaymentKey, PaymentState, PaymentStatus};

use super::Kind;

pub const MERCHANT: &str = "777290058167151";

pub struct TestApp {
    pub app: Option<App>,
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub pki: TestPki,
    pub sim: Arc<Simulator>,
    pub url: String,
}

pub fn config_in(dir: &std::path::Path, pki: &TestPki) -> Config {
    pki.write(&dir.join("pki"), UNIONPAY_IDENTITY, &[MERCHANT.into()])
        .unwrap();
    let text = format!(
        "[backend]\ndata_dir = \"data\"\nvisibility_timeout_secs = 1\nmax_receives = 20\n\
         [ingest]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmax_body_bytes = 1048576\n\
         [worker]\nadmin_listen = \"127.0.0.1:0\"\nconcurrency = 4\nreceive_wait_ms = 200\nretry_min_delay_ms = 100\nretry_max_delay_secs = 1\n{}",
        pki.config_snippet(UNIONPAY_IDENTITY, &[MERCHANT.into()])
            .replace("file:root.pem", "file:pki/root.pem")
            .replace("file:middle.pem", "file:pki/middle.pem")
    );
    let path = dir.join("paynotify.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

pub async fn spawn_app_with(kind: Kind, options: AppOptions) -> TestApp {
    spawn_app_tweaked(kind, options, |_| {}).await
}

pub async fn spawn_app_tweaked(
    kind: Kind,
    options: AppOptions,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    let pki = generate(&TestPkiOptions::default()).unwrap();
    spawn_app_with_pki(kind, options, pki, tweak).await
}

/// As [`spawn_app_tweaked`], with a test PKI the caller made (to give
/// UnionPay's side of it to a simulated gateway first).
pub async fn spawn_app_with_pki(
    kind: Kind,
    options: AppOptions,
    pki: TestPki,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(dir.path(), &pki);
    super::prepare(kind, &mut config.backend, dir.path()).await;
    // After `prepare`, so a test may also choose where the data lives.
    tweak(&mut config);
    let app = App::start(&config, options).await.unwrap();
    let url = format!("http://{}/notify/unionpay", app.addr.unwrap());
    let sim = Simulator::new(pki.leaf_key_pem.as_bytes(), &pki.leaf_pem, MERCHANT, &url).unwrap();
    TestApp {
        app: Some(app),
        dir,
        config,
        pki,
        sim,
        url,
    }
}

pub async fn spawn_app(kind: Kind) -> TestApp {
    spawn_app_with(kind, AppOptions::all()).await
}

impl TestApp {
    /// Reconciles the whole archive (with no faults injected).
    pub async fn reconcile(&self) -> paynotify::reconcile::Report {
        if let Some(f) = &self.app().faults {
            for s in [&f.archive, &f.queue, &f.ledger] {
                s.set_down(false);
                s.set_error_rate(0.0);
                s.set_lost_reply_rate(0.0);
            }
        }
        paynotify::reconcile::reconcile(&self.config, &self.app().backends, None, None, |_, _| {})
            .await
            .unwrap()
    }

    /// POSTs `body` to `/notify/{source}`; the status, or 0 when the
    /// connection failed (the server may close it on an oversized body).
    pub async fn post_to(&self, source: &str, body: impl Into<reqwest::Body>) -> u16 {
        let url = self
            .url
            .replace("/notify/unionpay", &format!("/notify/{source}"));
        reqwest::Client::new()
            .post(url)
            .body(body)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }

    /// POSTs `body` to the UnionPay source, once (no PSP retries).
    pub async fn post(&self, body: impl Into<reqwest::Body>) -> u16 {
        self.post_to("unionpay", body).await
    }

    /// The fault switchboards (the app must be started with `faults`).
    pub fn faults(&self) -> &paynotify_shared::faults::FaultyBackends {
        self.app().faults.as_ref().expect("started with faults")
    }

    /// A simulator that signs with an untrusted test PKI, posting here.
    pub fn forger(&self) -> Arc<Simulator> {
        let forged = generate(&TestPkiOptions::default()).unwrap();
        Simulator::new(
            forged.leaf_key_pem.as_bytes(),
            &forged.leaf_pem,
            MERCHANT,
            &self.url,
        )
        .unwrap()
    }

    pub fn app(&self) -> &App {
        self.app.as_ref().unwrap()
    }

    pub async fn payment(&self, query_id: &str) -> Option<PaymentState> {
        self.payment_of(&PaymentKey::new("unionpay", MERCHANT, query_id))
            .await
    }

    /// The payment `key`, read through the app's ledger.
    pub async fn payment_of(&self, key: &PaymentKey) -> Option<PaymentState> {
        // Through the app's ledger, which may be injecting faults: try again.
        for _ in 0..50 {
            if let Ok(p) = self.app().backends.ledger.get_payment(key).await {
                return p;
            }
        }
        panic!("reading {key} failed 50 times")
    }

    /// Waits up to a minute: the chaos tests' payments converge through
    /// retries with backoff, and a loaded CI machine stretches that.
    pub async fn wait_for_status(&self, query_id: &str, status: PaymentStatus) -> PaymentState {
        self.wait_for_status_of(&PaymentKey::new("unionpay", MERCHANT, query_id), status)
            .await
    }

    /// [`TestApp::wait_for_status`] of payment `key`.
    pub async fn wait_for_status_of(
        &self,
        key: &PaymentKey,
        status: PaymentStatus,
    ) -> PaymentState {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.payment_of(key).await {
                if s.status == status {
                    return s;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{key} never became {status:?}: {:?}",
                self.payment_of(key).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every key in the archive, sorted.
    pub async fn archive_keys(&self) -> Vec<String> {
        self.keys_under("raw/").await
    }

    /// The archive's keys under `prefix` (e.g. the audit records'), sorted.
    pub async fn keys_under(&self, prefix: &str) -> Vec<String> {
        let archive = self.app().backends.archive.as_ref();
        archive.list(prefix, None, None).await.unwrap()
    }

    /// Waits until the workers have retried at least `at_least` messages
    /// in all, for at most `within`.
    pub async fn wait_for_retried(&self, at_least: u64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.app().stats.snapshot().retried < at_least {
            assert!(
                Instant::now() < deadline,
                "{} retried, never {at_least}",
                self.app().stats.snapshot().retried
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_until_drained(&self) {
        let queue = self.app().backends.queue.as_ref();
        let drained = wait_drained(queue, Duration::from_secs(60), Duration::from_millis(20));
        assert!(drained.await.unwrap(), "queue never drained");
    }

    /// What is parked now (at most 100).
    pub async fn parked_now(&self) -> Vec<paynotify_shared::ports::ParkedEntry> {
        self.app()
            .backends
            .ledger
            .parked_before(time::OffsetDateTime::now_utc(), 100)
            .await
            .unwrap()
    }

    pub async fn dlq_reasons(&self) -> Vec<String> {
        super::dlq_reasons(self.app().backends.dead_letters.as_ref()).await
    }
}
