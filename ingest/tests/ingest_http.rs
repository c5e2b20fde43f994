//! The ingest answers 200 only after archive and queue both succeeded, 503
//! when either fails, cuts off slow and idle clients, caps connections, and
//! shuts down within its drain bound whatever clients do.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use paynotify_ingest::segmenter::{SegmentSettings, Segmenter};
use paynotify_ingest::IngestState;
use paynotify_shared::admin::Admin;
use paynotify_shared::backend::local::{LocalArchive, LocalLedger, LocalQueue};
use paynotify_shared::backend::Backends;
use paynotify_shared::config::IngestConfig;
use paynotify_shared::envelope::QueuedBody;
use paynotify_shared::faults::{Faults, FaultyArchive, FaultyQueue};
use paynotify_shared::metrics::Metrics;
use paynotify_shared::ports::{Archive, ArchiveError, Queue};
use paynotify_shared::segment::Location;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

struct Ingest {
    addr: SocketAddr,
    admin: SocketAddr,
    queue: LocalQueue,
    archive: LocalArchive,
    _dir: tempfile::TempDir,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(archive_down: bool, queue_down: bool, read_timeout_ms: u64) -> Ingest {
    start_with(archive_down, queue_down, |c| {
        c.read_timeout_ms = read_timeout_ms
    })
    .await
}

async fn start_with(
    archive_down: bool,
    queue_down: bool,
    tweak: impl FnOnce(&mut IngestConfig),
) -> Ingest {
    let (archive_faults, queue_faults) = (Faults::new(), Faults::new());
    archive_faults.set_down(archive_down);
    queue_faults.set_down(queue_down);
    start_on(archive_faults, queue_faults, |a, _| a, tweak).await
}

/// An ingest on a local archive and queue with `faults`, its archive port
/// wrapped by `wrap` (given the queue).
async fn start_on(
    archive_faults: Arc<Faults>,
    queue_faults: Arc<Faults>,
    wrap: impl FnOnce(Arc<dyn Archive>, LocalQueue) -> Arc<dyn Archive>,
    tweak: impl FnOnce(&mut IngestConfig),
) -> Ingest {
    let dir = tempfile::tempdir().unwrap();
    let archive = LocalArchive::open(dir.path().join("archive")).unwrap();
    let queue = LocalQueue::open(&dir.path().join("q.sqlite3"), 30, 5).unwrap();
    let queue_port: Arc<dyn Queue> = Arc::new(FaultyQueue {
        inner: Arc::new(queue.clone()),
        faults: queue_faults,
    });
    let archive_port: Arc<dyn Archive> = Arc::new(FaultyArchive {
        inner: Arc::new(archive.clone()),
        faults: archive_faults,
    });
    let ledger = Arc::new(LocalLedger::open(&dir.path().join("l.sqlite3")).unwrap());
    let backends = Backends {
        archive: wrap(archive_port, queue.clone()),
        queue: queue_port,
        dead_letters: Arc::new(queue.clone()),
        ledger: ledger.clone(),
        watches: ledger,
        deliveries: None,
        webhooks: None,
        api_calls: None,
        secrets: None,
    };
    let metrics = Metrics::new(None);
    let mut config = IngestConfig::default();
    tweak(&mut config);
    let state = IngestState {
        segmenter: Segmenter::new(
            backends.archive.clone(),
            SegmentSettings {
                window: Duration::from_millis(5),
                seal_when_idle: false,
                max_records: 1_000,
                max_bytes: 8 << 20,
                writers: 16,
            },
        ),
        queue: backends.queue.clone(),
        sources: Arc::new(BTreeMap::from([("unionpay".to_owned(), "ok".to_owned())])),
        metrics: metrics.clone(),
        admin: Admin {
            metrics,
            backends,
            parked_alert_secs: 86_400,
            sample_ledger: true,
        },
        store_deadline: Duration::from_millis(config.store_deadline_ms),
        budget: paynotify_ingest::budget::Budget::new(
            config.max_inflight_bytes,
            config.max_body_bytes,
        ),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let server =
        tokio::spawn(
            async move { paynotify_ingest::run(listener, admin, state, &config, token).await },
        );
    Ingest {
        addr,
        admin: admin_addr,
        queue,
        archive,
        _dir: dir,
        shutdown,
        server,
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
    assert!(keys[0].ends_with("-1.ndjson"), "{keys:?}");
    let archived = i.archive.get(&keys[0]).await.unwrap();
    let queued = i.queue.receive(1, Duration::ZERO).await.unwrap();
    let QueuedBody::Envelope(mut envelope) = QueuedBody::parse(&queued[0].body).unwrap() else {
        panic!("an envelope, not a pointer")
    };
    let at = envelope
        .at
        .take()
        .expect("the queued envelope says where it is archived");
    assert_eq!(
        at,
        Location::span(keys[0].clone(), 0, archived.len() as u64 - 1)
    );
    assert_eq!(
        archived,
        [envelope.to_json(), b"\n".to_vec()].concat(),
        "the archived segment is the enqueued envelope, one line"
    );
}

#[tokio::test]
async fn answers_503_when_the_archive_or_the_queue_fails() {
    let i = start(true, false, 10_000).await;
    assert_eq!(post(i.addr, "a=1").await.0, 503);
    // The message went out while the segment was being written: it holds
    // the whole envelope, so it is applied from its own bytes (the PSP's
    // retry of the 503 is then a duplicate).
    let queued = i.queue.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(queued.len(), 1);
    let QueuedBody::Envelope(envelope) = QueuedBody::parse(&queued[0].body).unwrap() else {
        panic!("an envelope, not a pointer to a segment that failed")
    };
    assert_eq!(envelope.body.as_deref(), Some("a=1"));
    let i = start(false, true, 10_000).await;
    assert_eq!(post(i.addr, "a=1").await.0, 503);
}

/// A store that never answers (a reply lost with no SDK timeout to end the
/// wait) holds no request past `store_deadline_ms`: 503, and the PSP
/// retries; a store that answers in time still gets 200.
#[tokio::test]
async fn a_store_that_never_answers_is_answered_503_at_the_deadline() {
    for hung in ["archive", "queue"] {
        let (archive_faults, queue_faults) = (Faults::new(), Faults::new());
        let f = if hung == "archive" {
            &archive_faults
        } else {
            &queue_faults
        };
        f.set_latency(Duration::from_secs(3600));
        let i = start_on(
            archive_faults.clone(),
            queue_faults.clone(),
            |a, _| a,
            |c| c.store_deadline_ms = 300,
        )
        .await;
        let started = Instant::now();
        let (status, body) = post(i.addr, "a=1").await;
        assert_eq!(
            (status, body.as_str()),
            (503, "store deadline passed\n"),
            "{hung}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{hung}: held {:?}",
            started.elapsed()
        );
        f.set_latency(Duration::ZERO);
        assert_eq!(
            post(i.addr, "a=2").await.0,
            200,
            "{hung}: after it answers again"
        );
    }
}

/// Puts a segment only once the queue holds a message: a put that had to
/// come before the queue send would wait here in vain.
struct PutsOnceSent {
    inner: Arc<dyn Archive>,
    queue: LocalQueue,
}

#[async_trait::async_trait]
impl Archive for PutsOnceSent {
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.queue.depth().await.unwrap() == 0 {
            if Instant::now() > deadline {
                return Err(ArchiveError::Unavailable(
                    "no message was sent while the segment was written".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.inner.put(key, bytes).await
    }
    async fn get(&self, key: &str) -> Result<Vec<u8>, ArchiveError> {
        self.inner.get(key).await
    }
    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, ArchiveError> {
        self.inner.get_range(key, offset, length).await
    }
    async fn list(
        &self,
        prefix: &str,
        from: Option<time::OffsetDateTime>,
        to: Option<time::OffsetDateTime>,
    ) -> Result<Vec<String>, ArchiveError> {
        self.inner.list(prefix, from, to).await
    }
}

#[tokio::test]
async fn the_queue_send_runs_while_the_segment_is_written() {
    let wrap = |inner, queue| -> Arc<dyn Archive> { Arc::new(PutsOnceSent { inner, queue }) };
    let i = start_on(Faults::new(), Faults::new(), wrap, |_| {}).await;
    assert_eq!(post(i.addr, "a=1").await, (200, "ok".to_owned()));
    let keys = i.archive.list("raw/", None, None).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(i.queue.depth().await.unwrap(), 1);
}

#[tokio::test]
async fn an_envelope_too_large_for_the_queue_is_sent_as_a_pointer_only_once_archived() {
    let (archive_faults, queue_faults) = (Faults::new(), Faults::new());
    queue_faults.set_max_message_bytes(Some(100));
    let i = start_on(archive_faults.clone(), queue_faults, |a, _| a, |_| {}).await;
    archive_faults.set_down(true);
    assert_eq!(post(i.addr, "a=1").await.0, 503);
    assert_eq!(
        i.queue.depth().await.unwrap(),
        0,
        "no pointer to a segment that failed"
    );
    archive_faults.set_down(false);
    assert_eq!(post(i.addr, "a=1").await, (200, "ok".to_owned()));
    let queued = i.queue.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(queued.len(), 1);
    let QueuedBody::Pointer { location, .. } = QueuedBody::parse(&queued[0].body).unwrap() else {
        panic!("a pointer")
    };
    let envelope = paynotify_shared::segment::read_envelope(&i.archive, &location, None)
        .await
        .unwrap();
    assert_eq!(envelope.body.as_deref(), Some("a=1"));
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
    assert!(status_line.contains(" 408 "), "{status_line}");
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

/// Reads until the server closes the connection (or `within` passes).
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

const HALF_A_HEAD: &[u8] = b"POST /notify/unionpay HTTP/1.1\r\nHost: x\r\nContent-Le";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_headers_are_cut_off_and_never_starve_other_clients() {
    let i = start_with(false, false, |c| {
        c.header_read_timeout_ms = 500;
        c.max_connections = 400;
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(i.addr).await.unwrap();
        s.write_all(HALF_A_HEAD).await.unwrap();
        slow.push(s);
    }
    let started = Instant::now();
    assert_eq!(post(i.addr, "a=1").await, (200, "ok".to_owned()));
    assert!(started.elapsed() < Duration::from_secs(2));
    for s in &mut slow {
        assert!(
            closed_within(s, Duration::from_secs(3)).await,
            "a slow client was kept open"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let i = start_with(false, false, |c| c.header_read_timeout_ms = 300).await;
    let mut s = tokio::net::TcpStream::connect(i.addr).await.unwrap();
    s.write_all(b"POST /notify/unionpay HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\na=1")
        .await
        .unwrap();
    let mut buf = vec![0; 256];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_once() {
    let i = start_with(false, false, |c| c.max_connections = 5).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(tokio::net::TcpStream::connect(i.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = tokio::net::TcpStream::connect(i.addr).await.unwrap();
    assert!(closed_within(&mut extra, Duration::from_secs(2)).await);
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(post(i.addr, "a=1").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_within_the_drain_bound_whatever_clients_do() {
    let mut i = start_with(false, false, |c| {
        c.header_read_timeout_ms = 60_000;
        c.drain_secs = 1;
    })
    .await;
    // One client mid-head, one idle keep-alive connection after a request.
    let mut slow = tokio::net::TcpStream::connect(i.addr).await.unwrap();
    slow.write_all(HALF_A_HEAD).await.unwrap();
    let mut idle = tokio::net::TcpStream::connect(i.addr).await.unwrap();
    idle.write_all(b"POST /notify/unionpay HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\na=1")
        .await
        .unwrap();
    let mut buf = vec![0; 256];
    let _ = idle.read(&mut buf).await.unwrap();
    let started = Instant::now();
    i.shutdown.cancel();
    // The idle connection closes at once.
    assert!(closed_within(&mut idle, Duration::from_millis(500)).await);
    let server = &mut i.server;
    tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .expect("ingest stopped within the drain bound")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(closed_within(&mut slow, Duration::from_millis(500)).await);
}
