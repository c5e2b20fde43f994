//! The ingest answers 200 only after archive and queue both succeeded, 503
//! when either fails, and cuts off slow clients.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paynotify_ingest::{IngestMetrics, IngestState};
use paynotify_shared::backend::local::{LocalArchive, LocalQueue};
use paynotify_shared::config::IngestConfig;
use paynotify_shared::faults::{Faults, FaultyArchive, FaultyQueue};
use paynotify_shared::ports::{Archive, Queue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

struct Ingest {
    addr: SocketAddr,
    admin: SocketAddr,
    queue: LocalQueue,
    archive: LocalArchive,
    _dir: tempfile::TempDir,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn start(archive_down: bool, queue_down: bool, read_timeout_ms: u64) -> Ingest {
    let dir = tempfile::tempdir().unwrap();
    let archive = LocalArchive::open(dir.path().join("archive")).unwrap();
    let queue = LocalQueue::open(&dir.path().join("q.sqlite3"), 30, 5).unwrap();
    let down = |on: bool| {
        let f = Faults::new();
        f.set_down(on);
        f
    };
    let queue_port: Arc<dyn Queue> = Arc::new(FaultyQueue {
        inner: Arc::new(queue.clone()),
        faults: down(queue_down),
    });
    let state = IngestState {
        archive: Arc::new(FaultyArchive {
            inner: Arc::new(archive.clone()),
            faults: down(archive_down),
        }),
        queue: queue_port,
        ledger: None,
        parked_alert_secs: 86_400,
        sources: Arc::new(BTreeMap::from([("unionpay".to_owned(), "ok".to_owned())])),
        metrics: Arc::new(IngestMetrics::default()),
        api_calls: None,
    };
    let config = IngestConfig {
        read_timeout_ms,
        ..IngestConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(
        async move { paynotify_ingest::run(listener, admin, state, &config, token).await },
    );
    Ingest {
        addr,
        admin: admin_addr,
        queue,
        archive,
        _dir: dir,
        _shutdown: shutdown.drop_guard(),
    }
}

async fn post(addr: SocketAddr, body: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/notify/unionpay"))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn answers_200_with_the_success_body_after_archive_and_queue() {
    let i = start(false, false, 10_000).await;
    assert_eq!(post(i.addr, "a=1").await, (200, "ok".to_owned()));
    assert_eq!(i.queue.depth().await.unwrap(), 1);
    let keys = i
        .archive
        .list("raw/source=unionpay/", None, None)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    let archived = i.archive.get(&keys[0]).await.unwrap();
    let queued = i.queue.receive(1, Duration::ZERO).await.unwrap();
    assert_eq!(
        archived, queued[0].body,
        "the archived object is the enqueued message"
    );
}

#[tokio::test]
async fn answers_503_when_the_archive_or_the_queue_fails() {
    let i = start(true, false, 10_000).await;
    assert_eq!(post(i.addr, "a=1").await.0, 503);
    assert_eq!(
        i.queue.depth().await.unwrap(),
        0,
        "nothing enqueued without an archived copy"
    );
    let i = start(false, true, 10_000).await;
    assert_eq!(post(i.addr, "a=1").await.0, 503);
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let i = start(false, false, 300).await;
    let mut s = tokio::net::TcpStream::connect(i.addr).await.unwrap();
    s.write_all(b"POST /notify/unionpay HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = vec![0; 128];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    let status_line = String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    assert!(!status_line.contains(" 200 "), "{status_line}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(i.queue.depth().await.unwrap(), 0);
}

#[tokio::test]
async fn readyz_fails_when_a_store_writer_has_stopped() {
    let i = start(false, false, 10_000).await;
    let admin = i.admin;
    let ready = || async move {
        reqwest::get(format!("http://{admin}/readyz"))
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(ready().await, 200);
    i.queue.stop_writer();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ready().await != 503 {
        assert!(Instant::now() < deadline, "readyz never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Not a stuck ingest: every notification gets a 503 at once.
    assert_eq!(post(i.addr, "a=1").await.0, 503);
}
