//! `paynotify-ingest` and `paynotify-worker` as two processes on one data
//! directory, under load, each killed with SIGKILL in turn and restarted:
//! every notification that got a 200 ends applied once, and `reconcile` is
//! clean. The binaries are the workspace's own (`cargo build --workspace
//! --bins`, which scripts/test.sh runs first).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paynotify::receiver::Receiver;
use paynotify::simulate::{Delivery, Simulator};
use paynotify_shared::config::Config;
use paynotify_shared::ports::{wait_drained, LedgerExt};
use paynotify_shared::testpki::{generate, TestPkiOptions};
use paynotify_shared::{backend, PaymentKey, PaymentStatus};
use support::app::{config_in, MERCHANT};

#[macro_use]
mod support;

use support::{binary, free_port};

/// Writes the test configuration into `dir` with the ingest on two free
/// ports (public, admin) and `ingest` added to its table; returns the
/// file and the ports.
fn listening_config(
    dir: &Path,
    pki: &paynotify_shared::testpki::TestPki,
    ingest: &str,
) -> (std::path::PathBuf, u16, u16) {
    config_in(dir, pki);
    let path = dir.join("paynotify.toml");
    let (port, admin) = (free_port(), free_port());
    let text = std::fs::read_to_string(&path)
        .unwrap()
        // The ingest's admin listener (the first); the worker's stays on port 0.
        .replacen(
            "admin_listen = \"127.0.0.1:0\"",
            &format!("admin_listen = \"127.0.0.1:{admin}\"\n{ingest}"),
            1,
        )
        .replace(
            "\nlisten = \"127.0.0.1:0\"",
            &format!("\nlisten = \"127.0.0.1:{port}\""),
        );
    std::fs::write(&path, text).unwrap();
    (path, port, admin)
}

fn start(name: &str, config: &Path) -> Child {
    Command::new(binary(name))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: sending a signal to our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn wait_ready(admin: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("http://127.0.0.1:{admin}/readyz"))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(Instant::now() < deadline, "ingest never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_worker_processes_survive_sigkill_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let pki = generate(&TestPkiOptions::default()).unwrap();
    let (path, port, admin) = listening_config(dir.path(), &pki, "");
    // The worker process delivers every transition to a merchant receiver
    // that takes 20 ms an answer, so the kill finds deliveries in flight.
    let secret = format!("whsec_{}", base64_of(b"processes-test-delivery-secret!!"));
    std::fs::write(dir.path().join("receiver.whsec"), &secret).unwrap();
    let receiver = Receiver::start(&secret, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    receiver.set(|b| {
        b.slow = u32::MAX;
        b.slow_for = Duration::from_millis(20);
    });
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "\n[deliveries]\npoll_ms = 50\nretry_schedule_secs = [1, 1, 1, 1, 1, 1, 1, 1]\n\
         [[deliveries.endpoints]]\nname = \"merchant\"\nurl = \"http://{}/events\"\n\
         secrets = [\"file:receiver.whsec\"]\ntimeout_ms = 1000\nmax_requests_per_sec = 10000\n\
         allow_insecure_http = true\nallow_private_addresses = true\n",
        receiver.addr
    ));
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();

    let mut ingest = start("paynotify-ingest", &path);
    let mut worker = start("paynotify-worker", &path);
    wait_ready(admin).await;

    let url = format!("http://127.0.0.1:{port}/notify/unionpay");
    let sim = Simulator::new(pki.leaf_key_pem.as_bytes(), &pki.leaf_pem, MERCHANT, &url).unwrap();
    let n = 600;
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let (sim, sent) = (sim.clone(), sent.clone());
        tokio::spawn(async move { send_all(sim, n, sent).await })
    };
    let reach = |part: usize| {
        let sent = sent.clone();
        async move {
            while sent.load(Ordering::SeqCst) < part {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };

    // Kill each process with SIGKILL in turn while the load runs.
    reach(n / 4).await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker = start("paynotify-worker", &path);
    reach(n * 3 / 5).await;
    assert!(
        !load.is_finished(),
        "the load ended before the ingest was killed"
    );
    ingest.kill().unwrap();
    ingest.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    ingest = start("paynotify-ingest", &path);
    let accepted = load.await.unwrap();

    // This process opens the same data directory to check.
    let backends = backend::build(&config.backend).await.unwrap();
    let drained = wait_drained(
        backends.queue.as_ref(),
        Duration::from_secs(60),
        Duration::from_millis(100),
    );
    assert!(drained.await.unwrap(), "queue never drained");
    for (i, refunded) in &accepted {
        let key = PaymentKey::new("unionpay", MERCHANT, &format!("p{i}"));
        let state = backends.ledger.get_payment(&key).await.unwrap();
        let state = state.unwrap_or_else(|| panic!("accepted payment p{i} is not in the ledger"));
        let expected = if *refunded {
            (PaymentStatus::PartiallyRefunded, 30)
        } else {
            (PaymentStatus::Paid, 0)
        };
        assert_eq!((state.status, state.refunded_minor), expected, "p{i}");
    }
    assert!(accepted.len() > n / 2, "only {} accepted", accepted.len());
    let report = paynotify::reconcile::reconcile(&config, &backends, None, None, |_, _| {})
        .await
        .unwrap();
    assert!(report.is_clean(), "{:#?}", report.discrepancies);
    assert!(backends.dead_letters.dlq_list(10).await.unwrap().is_empty());

    // Every transition reached the receiver once in effect, in order, the
    // deliverer's SIGKILL notwithstanding (its leases ran out).
    let store = backends.deliveries.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !store.caught_up("merchant").await.unwrap() {
        let status = store.endpoint_status("merchant").await.unwrap();
        assert!(Instant::now() < deadline, "not delivered: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outbox = store.outbox_after(0, 1 << 20).await.unwrap();
    let view = receiver.view();
    assert_eq!(view.order_violations, Vec::<String>::new());
    assert_eq!(view.rejected, Vec::<String>::new());
    assert_eq!(view.events.len(), outbox.len());
    for (i, refunded) in &accepted {
        let key = PaymentKey::new("unionpay", MERCHANT, &format!("p{i}"));
        let heard: Vec<_> = view.by_payment[key.as_str()]
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        let expected: &[&str] = if *refunded {
            &["payment.paid", "payment.partially_refunded"]
        } else {
            &["payment.paid"]
        };
        assert_eq!(heard, expected, "p{i}");
    }

    assert!(sigterm(&mut ingest).success());
    assert!(sigterm(&mut worker).success());
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Sends `n` purchases, a third of them followed by a refund, eight at a
/// time; returns the payments whose notifications all got a 200, with
/// whether they were refunded.
async fn send_all(sim: Arc<Simulator>, n: usize, sent: Arc<AtomicUsize>) -> Vec<(usize, bool)> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut accepted = Vec::new();
    for i in 0..n {
        sent.store(i, Ordering::SeqCst);
        let sim = sim.clone();
        tasks.spawn(async move {
            let q = format!("p{i}");
            let paid = matches!(sim.send(sim.purchase(&q, 100)).await, Delivery::Accepted(_));
            let refund = i % 3 == 0;
            let refunded = refund
                && matches!(
                    sim.send(sim.refund(&q, &format!("{q}-r"), 30)).await,
                    Delivery::Accepted(_)
                );
            (i, paid && (!refund || refunded), refund)
        });
        if tasks.len() >= 8 {
            if let Some(Ok((i, ok, refund))) = tasks.join_next().await {
                if ok {
                    accepted.push((i, refund));
                }
            }
        }
    }
    while let Some(Ok((i, ok, refund))) = tasks.join_next().await {
        if ok {
            accepted.push((i, refund));
        }
    }
    accepted
}

/// Starts `name` logging JSON at `info` into `log`.
fn start_logging(name: &str, config: &Path, log: &Path) -> Child {
    Command::new(binary(name))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .env("PAYNOTIFY_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// The samples of `/metrics` at `admin` that are not comments.
async fn samples(admin: u16) -> Vec<String> {
    reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_of_a_notification_carries_its_fields_and_no_card_number() {
    const CARD: &str = "6216261000000000018";
    let dir = tempfile::tempdir().unwrap();
    let pki = generate(&TestPkiOptions::default()).unwrap();
    config_in(dir.path(), &pki);
    let path = dir.path().join("paynotify.toml");
    let (port, admin, worker_admin) = (free_port(), free_port(), free_port());
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replacen(
            "admin_listen = \"127.0.0.1:0\"",
            &format!("admin_listen = \"127.0.0.1:{admin}\""),
            1,
        )
        .replacen(
            "admin_listen = \"127.0.0.1:0\"",
            &format!("admin_listen = \"127.0.0.1:{worker_admin}\""),
            1,
        )
        .replace(
            "\nlisten = \"127.0.0.1:0\"",
            &format!("\nlisten = \"127.0.0.1:{port}\""),
        )
        .replace(
            "[worker]\n",
            "[worker]\nparked_alert_secs = 1\nparked_check_secs = 1\n",
        );
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let (ingest_log, worker_log) = (dir.path().join("ingest.log"), dir.path().join("worker.log"));
    let mut ingest = start_logging("paynotify-ingest", &path, &ingest_log);
    let mut worker = start_logging("paynotify-worker", &path, &worker_log);
    wait_ready(admin).await;
    wait_ready(worker_admin).await;

    let url = format!("http://127.0.0.1:{port}/notify/unionpay");
    let sim = Simulator::new(pki.leaf_key_pem.as_bytes(), &pki.leaf_pem, MERCHANT, &url).unwrap();
    let good = sim.purchase_with("logq1", 100, &[("accNo", CARD)]);
    let bad = paynotify::simulate::tamper(&sim.purchase_with("logq2", 100, &[("accNo", CARD)]));
    assert_eq!(sim.send(good).await, Delivery::Accepted(1));
    assert_eq!(sim.send(bad).await, Delivery::Accepted(1));
    // A refund whose payment never comes: parked, then overdue.
    let orphan = sim.refund("logq3", "logq3r", 100);
    assert_eq!(sim.send(orphan).await, Delivery::Accepted(1));
    let backends = backend::build(&config.backend).await.unwrap();
    let drained = wait_drained(
        backends.queue.as_ref(),
        Duration::from_secs(30),
        Duration::from_millis(50),
    );
    assert!(drained.await.unwrap(), "queue never drained");
    // Each process exports what it does, and only that.
    let (ingest_samples, worker_samples) = (samples(admin).await, samples(worker_admin).await);
    let has = |s: &[String], prefix: &str| s.iter().any(|l| l.starts_with(prefix));
    assert!(has(
        &ingest_samples,
        "paynotify_ingest_enqueued_total{source=\"unionpay\"} 3"
    ));
    assert!(!has(&ingest_samples, "paynotify_worker_"));
    assert!(has(
        &worker_samples,
        "paynotify_worker_acknowledged_total{source=\"unionpay\",outcome=\"applied\"} 1"
    ));
    assert!(has(
        &worker_samples,
        "paynotify_worker_dead_lettered_total{source=\"unionpay\",reason=\"bad_signature\"} 1"
    ));
    assert!(!has(&worker_samples, "paynotify_ingest_"));
    // The worker says so in its log, which the stack's alarm counts.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&worker_log)
        .unwrap()
        .lines()
        .any(|l| {
            l.contains("\"message\":\"parked events need attention\"")
                && l.contains("\"overdue\":1")
        })
    {
        assert!(Instant::now() < deadline, "no parked-events warning");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sigterm(&mut ingest).success());
    assert!(sigterm(&mut worker).success());

    let logs = std::fs::read_to_string(&ingest_log).unwrap()
        + &std::fs::read_to_string(&worker_log).unwrap();
    assert!(!logs.contains(CARD), "a card number reached a log");
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for (query_id, stages) in [
        ("logq1", &["ingest", "apply"][..]),
        ("logq2", &["ingest", "verify", "dead_letter"][..]),
    ] {
        // Ingest cannot read the body; its line carries the notification id.
        let story: Vec<_> = lines
            .iter()
            .filter(|l| l["unionpay_txn_id"] == query_id)
            .collect();
        let id = story
            .first()
            .unwrap_or_else(|| panic!("no line names {query_id}:\n{logs}"))["notification_id"]
            .clone();
        let story: Vec<_> = lines
            .iter()
            .filter(|l| l["notification_id"] == id)
            .collect();
        let seen: Vec<_> = story.iter().map(|l| l["stage"].as_str().unwrap()).collect();
        for stage in stages {
            assert!(
                seen.contains(stage),
                "{query_id}: no {stage} line in {seen:?}"
            );
        }
        for line in &story {
            for field in [
                "notification_id",
                "source",
                "stage",
                "direction",
                "timestamp",
            ] {
                assert!(line[field].is_string(), "{field} missing: {line}");
            }
            assert_eq!(line["source"], "unionpay");
            assert_eq!(line["direction"], "inbound");
            if line["stage"] != "ingest" {
                assert_eq!(line["unionpay_txn_id"], query_id, "{line}");
                assert_eq!(line["psp_txn_id"], query_id, "{line}");
            }
        }
    }
}

/// The peak resident memory of process `pid` (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap();
    kib * 1024
}

/// What an outsider can make ingest hold: 200 connections at once, each
/// posting 1 MiB bodies of control bytes three times, as fast as ingest
/// answers. Ingest holds at most `ingest.max_inflight_bytes` of bodies
/// (32 MiB here), reads and drops the others as they come and answers them
/// 503, so its peak memory stays under 256 MiB (77 to 112 MiB measured;
/// `PAYNOTIFY_TEST_RSS_REPORT=1` prints it); every request gets an answer,
/// some 200; a genuine notification sent meanwhile is accepted at its first
/// attempt, from the quarter of the budget large bodies cannot take. Before
/// the budget the peak was 1,206 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_bodies_keep_ingest_within_its_memory_budget() {
    const BUDGET: usize = 32 << 20;
    const PEAK: u64 = 256 << 20;
    let dir = tempfile::tempdir().unwrap();
    let pki = generate(&TestPkiOptions::default()).unwrap();
    let (path, port, admin) =
        listening_config(dir.path(), &pki, &format!("max_inflight_bytes = {BUDGET}"));
    let mut ingest = start("paynotify-ingest", &path);
    wait_ready(admin).await;
    let base = peak_rss(ingest.id());

    let url = format!("http://127.0.0.1:{port}/notify/unionpay");
    let hostile = vec![1u8; 1 << 20];
    let client = reqwest::Client::new();
    let mut attack = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (client, url, body) = (client.clone(), url.clone(), hostile.clone());
        attack.spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..3 {
                let sent = client.post(&url).body(body.clone()).send().await;
                statuses.push(sent.map_or(0, |r| r.status().as_u16()));
            }
            statuses
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sim = Simulator::new(pki.leaf_key_pem.as_bytes(), &pki.leaf_pem, MERCHANT, &url).unwrap();
    let genuine = sim.send(sim.purchase("g1", 100)).await;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    while let Some(s) = attack.join_next().await {
        for status in s.unwrap() {
            *statuses.entry(status).or_default() += 1;
        }
    }
    let peak = peak_rss(ingest.id());
    if std::env::var_os("PAYNOTIFY_TEST_RSS_REPORT").is_some() {
        eprintln!(
            "ingest peak RSS {} MiB (at start {} MiB); hostile answers {statuses:?}",
            peak >> 20,
            base >> 20
        );
    }
    assert!(
        matches!(genuine, Delivery::Accepted(1)),
        "genuine: {genuine:?}"
    );
    assert!(
        peak < PEAK,
        "peak RSS {} MiB, answers {statuses:?}",
        peak >> 20
    );
    // Every hostile body was answered (none reset), some accepted: the
    // budget sheds load, it does not refuse all of it.
    assert_eq!(statuses.get(&0), None, "{statuses:?}");
    assert!(statuses.get(&200).copied().unwrap_or(0) > 0, "{statuses:?}");
    assert!(sigterm(&mut ingest).success());
}
