//! Wrappers that time every call to the three ports and count the ones that
//! fail, by port and operation (`paynotify_backend_call_duration_seconds`,
//! `paynotify_backend_errors_total`). An archive's `AlreadyExists` or
//! `NotFound` is an answer, not a failure of the store, and is not counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::backend::Backends;
use crate::event::{EventKey, PaymentKey};
use crate::metrics::Metrics;
use crate::ports::{
    ApplyOutcome, Archive, ArchiveError, DeadLetter, EventRecord, Freshness, Ledger, LedgerError,
    LedgerWrite, Loaded, ParkedEntry, PaymentEntry, Progress, Queue, QueueError, QueueMessage,
    QueueStats, Receipt, Watch, WatchStore,
};

/// Runs `call`, then records its duration and whether it failed.
macro_rules! timed {
    ($self:ident, $op:literal, $call:expr) => {{
        let started = Instant::now();
        let out = $call.await;
        $self.metrics.backend_call(
            Self::PORT,
            $op,
            started.elapsed(),
            out.as_ref().map_or_else(|e| !Self::failed(e), |_| true),
        );
        out
    }};
}

/// Opens the backends of `config` with every call metered into a new
/// [`Metrics`] (which also counts AWS API calls on that backend).
///
/// # Errors
/// As [`crate::backend::build`].
pub async fn build(
    config: &crate::config::BackendConfig,
) -> Result<(Backends, Arc<Metrics>), crate::backend::BackendError> {
    let mut backends = crate::backend::build(config).await?;
    let metrics = Metrics::new(backends.api_calls.clone());
    backends.metered(&metrics);
    Ok((backends, metrics))
}

impl Backends {
    /// Wraps the three ports so that `metrics` sees every call.
    pub fn metered(&mut self, metrics: &Arc<Metrics>) {
        self.archive = Arc::new(MeteredArchive {
            inner: self.archive.clone(),
            metrics: metrics.clone(),
        });
        self.queue = Arc::new(MeteredQueue {
            inner: self.queue.clone(),
            metrics: metrics.clone(),
        });
        self.ledger = Arc::new(MeteredLedger {
            inner: self.ledger.clone(),
            metrics: metrics.clone(),
        });
        self.watches = Arc::new(MeteredWatches {
            inner: self.watches.clone(),
            metrics: metrics.clone(),
        });
    }
}

struct MeteredArchive {
    inner: Arc<dyn Archive>,
    metrics: Arc<Metrics>,
}

impl MeteredArchive {
    const PORT: &'static str = "archive";
    fn failed(e: &ArchiveError) -> bool {
        matches!(e, ArchiveError::Unavailable(_))
    }
}

#[async_trait]
impl Archive for MeteredArchive {
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        timed!(self, "put", self.inner.put(key, bytes))
    }
    async fn get(&self, key: &str) -> Result<Vec<u8>, ArchiveError> {
        timed!(self, "get", self.inner.get(key))
    }
    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, ArchiveError> {
        timed!(self, "get_range", self.inner.get_range(key, offset, length))
    }
    async fn list(
        &self,
        prefix: &str,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    ) -> Result<Vec<String>, ArchiveError> {
        timed!(self, "list", self.inner.list(prefix, from, to))
    }
    fn fatal(&self) -> Option<String> {
        self.inner.fatal()
    }
}

struct MeteredQueue {
    inner: Arc<dyn Queue>,
    metrics: Arc<Metrics>,
}

impl MeteredQueue {
    const PORT: &'static str = "queue";
    fn failed(_: &QueueError) -> bool {
        true
    }
}

#[async_trait]
impl Queue for MeteredQueue {
    async fn send(&self, body: &[u8]) -> Result<String, QueueError> {
        timed!(self, "send", self.inner.send(body))
    }
    async fn send_batch(&self, bodies: &[Vec<u8>]) -> Result<Vec<String>, QueueError> {
        timed!(self, "send_batch", self.inner.send_batch(bodies))
    }
    async fn send_delayed(&self, body: &[u8], seconds: u32) -> Result<String, QueueError> {
        timed!(self, "send_delayed", self.inner.send_delayed(body, seconds))
    }
    fn max_delay_secs(&self) -> u32 {
        self.inner.max_delay_secs()
    }
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<QueueMessage>, QueueError> {
        timed!(self, "receive", self.inner.receive(max, wait))
    }
    async fn delete(&self, receipt: &Receipt) -> Result<(), QueueError> {
        timed!(self, "delete", self.inner.delete(receipt))
    }
    async fn delete_batch(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        timed!(self, "delete_batch", self.inner.delete_batch(receipts))
    }
    async fn delay(&self, receipt: &Receipt, seconds: u32) -> Result<(), QueueError> {
        timed!(self, "delay", self.inner.delay(receipt, seconds))
    }
    async fn dead_letter(
        &self,
        message: &QueueMessage,
        reason: &str,
        error: &str,
    ) -> Result<(), QueueError> {
        timed!(
            self,
            "dead_letter",
            self.inner.dead_letter(message, reason, error)
        )
    }
    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        timed!(self, "dlq_list", self.inner.dlq_list(limit))
    }
    async fn redrive_with(
        &self,
        reason: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<usize, QueueError> {
        timed!(self, "redrive", self.inner.redrive_with(reason, progress))
    }
    async fn purge_dead_letters(
        &self,
        reason: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        timed!(
            self,
            "purge_dead_letters",
            self.inner.purge_dead_letters(reason, progress)
        )
    }
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        timed!(self, "stats", self.inner.stats())
    }
    async fn depth(&self) -> Result<u64, QueueError> {
        timed!(self, "depth", self.inner.depth())
    }
    async fn dlq_depth(&self) -> Result<u64, QueueError> {
        timed!(self, "dlq_depth", self.inner.dlq_depth())
    }
    fn max_message_bytes(&self) -> usize {
        self.inner.max_message_bytes()
    }
    fn fatal(&self) -> Option<String> {
        self.inner.fatal()
    }
}

struct MeteredLedger {
    inner: Arc<dyn Ledger>,
    metrics: Arc<Metrics>,
}

impl MeteredLedger {
    const PORT: &'static str = "ledger";
    fn failed(_: &LedgerError) -> bool {
        true
    }
}

#[async_trait]
impl Ledger for MeteredLedger {
    async fn load(&self, key: &PaymentKey) -> Result<PaymentEntry, LedgerError> {
        timed!(self, "load", self.inner.load(key))
    }
    async fn write(&self, write: &LedgerWrite) -> Result<ApplyOutcome, LedgerError> {
        timed!(self, "write", self.inner.write(write))
    }
    async fn history(&self, key: &PaymentKey) -> Result<Vec<EventRecord>, LedgerError> {
        timed!(self, "history", self.inner.history(key))
    }
    async fn load_to_apply(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
        freshness: Freshness,
    ) -> Result<Loaded, LedgerError> {
        timed!(
            self,
            "load_to_apply",
            self.inner.load_to_apply(key, event_key, freshness)
        )
    }
    async fn contains_event(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
    ) -> Result<bool, LedgerError> {
        timed!(
            self,
            "contains_event",
            self.inner.contains_event(key, event_key)
        )
    }
    async fn parked_before(
        &self,
        t: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<ParkedEntry>, LedgerError> {
        timed!(self, "parked_before", self.inner.parked_before(t, limit))
    }
    async fn events_between(
        &self,
        source: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<EventRecord>, LedgerError> {
        timed!(
            self,
            "events_between",
            self.inner.events_between(source, from, to)
        )
    }
    fn fatal(&self) -> Option<String> {
        self.inner.fatal()
    }
}

struct MeteredWatches {
    inner: Arc<dyn WatchStore>,
    metrics: Arc<Metrics>,
}

impl MeteredWatches {
    /// Watches live in the ledger's database or table.
    const PORT: &'static str = "ledger";
    fn failed(_: &LedgerError) -> bool {
        true
    }
}

#[async_trait]
impl WatchStore for MeteredWatches {
    async fn put_watch(&self, watch: &Watch) -> Result<ApplyOutcome, LedgerError> {
        timed!(self, "put_watch", self.inner.put_watch(watch))
    }
    async fn get_watch(&self, id: &str) -> Result<Option<Watch>, LedgerError> {
        timed!(self, "get_watch", self.inner.get_watch(id))
    }
    async fn due_watches(
        &self,
        t: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Watch>, LedgerError> {
        timed!(self, "due_watches", self.inner.due_watches(t, limit))
    }
}
