//! `paynotify-ingest` and `paynotify-worker` as two processes on one data
//! directory, under load, each killed with SIGKILL in turn and restarted:
//! every notification that got a 200 ends applied once, and `reconcile` is
//! clean. The binaries are the workspace's own (`cargo build --workspace
//! --bins`, which scripts/test.sh runs first).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paynotify::simulate::{Delivery, Simulator};
use paynotify_shared::config::Config;
use paynotify_shared::testpki::{generate, TestPkiOptions};
use paynotify_shared::{backend, PaymentKey, PaymentStatus};
use support::app::{config_in, MERCHANT};

#[macro_use]
mod support;

/// A workspace binary beside this test's executable (`target/debug/`).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .unwrap();
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    config_in(dir.path(), &pki);
    let path = dir.path().join("paynotify.toml");
    let (port, admin) = (free_port(), free_port());
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "admin_listen = \"127.0.0.1:0\"",
            &format!("admin_listen = \"127.0.0.1:{admin}\""),
        )
        .replace(
            "\nlisten = \"127.0.0.1:0\"",
            &format!("\nlisten = \"127.0.0.1:{port}\""),
        );
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
    let deadline = Instant::now() + Duration::from_secs(60);
    while backends.queue.depth().await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "queue never drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    assert!(backends.queue.dlq_list(10).await.unwrap().is_empty());

    assert!(sigterm(&mut ingest).success());
    assert!(sigterm(&mut worker).success());
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
