//! `[ingest]` and `[worker]`: the two servers' settings.

use super::*;

/// The HTTP ingest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Where PSPs POST notifications.
    pub listen: String,
    /// `/healthz`, `/readyz`, `/metrics`; keep it off the public network.
    pub admin_listen: String,
    /// Larger bodies get 413.
    pub max_body_bytes: usize,
    /// A client must send its whole body within this time (else 408).
    pub read_timeout_ms: u64,
    /// A notification must be archived and enqueued within this long after
    /// its body was read, else 503 (the PSP sends it again; what was
    /// stored meanwhile makes that a duplicate). Above the AWS backend's
    /// `operation_timeout_ms`, below the load balancer's idle timeout.
    pub store_deadline_ms: u64,
    /// A client must send a whole request head within this time, and a
    /// keep-alive connection is closed after this long without a request;
    /// the connection is closed without an answer.
    pub header_read_timeout_ms: u64,
    /// Connections open at once on the public listener; more are closed as
    /// they are accepted.
    pub max_connections: usize,
    /// Request bodies held at once, in bytes (declared by `Content-Length`,
    /// or `max_body_bytes` for a body without one), from before a body is
    /// read until it is stored: a request past it is answered 503 unread.
    /// Bodies over 64 KiB may take three quarters of it, so a flood of
    /// large bodies leaves room for notifications (a few KiB each). Each
    /// byte held costs up to about three in memory (the body, its envelope,
    /// the segment); size it to a third of what the task may use beyond
    /// its baseline.
    pub max_inflight_bytes: usize,
    /// After SIGTERM, requests in flight get this long to finish before
    /// their connections are closed (below ECS's 30 s stop timeout).
    pub drain_secs: u64,
    /// Archive segments: notifications of one source and hour received
    /// within this window are archived as one object (one `PutObject`).
    /// Every notification waits up to this long more for its 200; 0 groups
    /// only what arrives while the segment writers are busy. Unset: 1 ms on
    /// the local backend, 50 ms on AWS (where each object is a billed
    /// request and the put itself takes tens of milliseconds).
    pub segment_window_ms: Option<u64>,
    /// Whether a group skips the window when no segment is being written:
    /// nothing would be waited behind, and under load a put is always in
    /// flight, so the window still gathers the groups there. Unset: on for
    /// the local backend, off on AWS (where, at low rates, it would save
    /// the 50 ms window and cost a `PutObject` per notification).
    pub segment_seal_when_idle: Option<bool>,
    /// A segment is written once it holds this many notifications…
    pub segment_max_records: usize,
    /// …or this many bytes, whichever comes first.
    pub segment_max_bytes: usize,
    /// Segments being written at once; more wait (and keep filling).
    /// Unset: on the local backend one per core, 4 to 16 (each is an
    /// `fdatasync`); 16 on AWS.
    pub segment_writers: Option<usize>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            max_body_bytes: 1 << 20,
            read_timeout_ms: 10_000,
            store_deadline_ms: 5_000,
            header_read_timeout_ms: 10_000,
            max_connections: 10_000,
            max_inflight_bytes: 64 << 20,
            drain_secs: 20,
            segment_window_ms: None,
            segment_seal_when_idle: None,
            segment_max_records: 1_000,
            segment_max_bytes: 8 << 20,
            segment_writers: None,
        }
    }
}

/// The queue workers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Receive loops; each processes up to `receive_batch` messages at once.
    pub concurrency: usize,
    /// Messages taken per receive (1..=10).
    pub receive_batch: usize,
    /// Long-poll wait of one receive.
    pub receive_wait_ms: u64,
    /// First retry delay; later ones grow exponentially with jitter.
    pub retry_min_delay_ms: u64,
    pub retry_max_delay_secs: u64,
    /// How long a transient failure (backend error, throttling) is retried,
    /// however many receives that takes, before it is dead-lettered as
    /// `retries_exhausted`.
    pub retry_for_secs: u64,
    /// A parked event older than this is reported by `reconcile` and
    /// `/metrics` (`paynotify_parked_events_overdue`).
    pub parked_alert_secs: u64,
    /// How often the workers read the parked events and log a warning when
    /// some are overdue or conflicted (what the stack's alarm counts).
    pub parked_check_secs: u64,
    /// How often a worker looks for UnionPay status queries that are due
    /// (sources with a `gateway` and `auto_query`).
    pub query_check_secs: u64,
    /// `/healthz`, `/readyz`, `/metrics` of `paynotify-worker` (a process
    /// that runs ingest too serves them on `ingest.admin_listen`).
    pub admin_listen: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            receive_batch: 10,
            receive_wait_ms: 1000,
            retry_min_delay_ms: 1000,
            retry_max_delay_secs: 300,
            retry_for_secs: 6 * 3600,
            parked_alert_secs: 24 * 3600,
            parked_check_secs: 300,
            query_check_secs: 30,
            admin_listen: "127.0.0.1:9091".into(),
        }
    }
}
