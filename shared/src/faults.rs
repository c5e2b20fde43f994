//! Fault-injecting wrappers for the three ports, for tests and chaos runs:
//! a backend that is down, fails at a rate, fails its Nth call, is slow, or
//! does the work and then loses the reply. Each wrapper delegates to a real
//! backend; one [`Faults`] switchboard, changed while running, decides what
//! goes wrong and for which operations.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::event::{EventKey, PaymentKey};
use crate::ports::{
    ApplyOutcome, Archive, ArchiveError, Attempt, DeadLetter, Deliveries, Delivery, DeliveryFilter,
    EndpointStatus, EventRecord, Freshness, Ledger, LedgerError, LedgerWrite, Loaded, OutboxRecord,
    ParkedEntry, PaymentEntry, Progress, Queue, QueueError, QueueMessage, QueueStats, Receipt,
    Watch, WatchStore,
};

const MILLION: f64 = 1_000_000.0;

/// What goes wrong, shared by the wrappers that use it.
#[derive(Debug, Default)]
pub struct Faults {
    down: AtomicBool,
    error_ppm: AtomicU32,
    lost_reply_ppm: AtomicU32,
    latency_us: AtomicU64,
    reply_latency_us: AtomicU64,
    fail_nth: AtomicU64,
    calls: AtomicU64,
    injected: AtomicU64,
    rng: AtomicU64,
    only: Mutex<Option<Vec<&'static str>>>,
    payment: Mutex<Option<PaymentKey>>,
    fatal: Mutex<Option<String>>,
    repeat: AtomicBool,
    depth_misses: AtomicU64,
    /// 0: the wrapped queue's own limit.
    max_message_bytes: AtomicU64,
}

impl Faults {
    /// A switchboard with nothing going wrong.
    pub fn new() -> Arc<Self> {
        let f = Self::default();
        f.rng.store(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        Arc::new(f)
    }

    /// Every affected call fails at once (`true`) or none does.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Each affected call fails before reaching the backend with probability `p`.
    pub fn set_error_rate(&self, p: f64) {
        self.error_ppm
            .store((p.clamp(0.0, 1.0) * MILLION) as u32, Ordering::SeqCst);
    }

    /// Each affected call that succeeds has its reply replaced by an error
    /// with probability `p`: the effect happened, the caller cannot know.
    pub fn set_lost_reply_rate(&self, p: f64) {
        self.lost_reply_ppm
            .store((p.clamp(0.0, 1.0) * MILLION) as u32, Ordering::SeqCst);
    }

    /// Every affected call waits this long first.
    pub fn set_latency(&self, d: Duration) {
        self.latency_us
            .store(d.as_micros() as u64, Ordering::SeqCst);
    }

    /// Every affected call's reply comes this much after the backend
    /// answered (what it did is done; a caller that gives up meanwhile
    /// never sees it).
    pub fn set_reply_latency(&self, d: Duration) {
        self.reply_latency_us
            .store(d.as_micros() as u64, Ordering::SeqCst);
    }

    /// The `n`th affected call from now (1-based) fails; 0 turns it off.
    pub fn fail_nth(&self, n: u64) {
        self.calls.store(0, Ordering::SeqCst);
        self.fail_nth.store(n, Ordering::SeqCst);
    }

    /// Only these operations (`put`, `send`, `write`, `load`, …) are
    /// affected; all of them when `None`.
    pub fn only(&self, ops: Option<&[&'static str]>) {
        if let Ok(mut o) = self.only.lock() {
            *o = ops.map(<[_]>::to_vec);
        }
    }

    /// Only ledger calls about this payment are affected (all of them when
    /// `None`): one record of a batch fails while the others go through.
    pub fn only_payment(&self, key: Option<PaymentKey>) {
        if let Ok(mut p) = self.payment.lock() {
            *p = key;
        }
    }

    fn spares(&self, key: &PaymentKey) -> bool {
        self.payment
            .lock()
            .map(|p| p.as_ref().is_some_and(|only| only != key))
            .unwrap_or(false)
    }

    /// Every affected call is made twice and the second answer returned, as
    /// an SDK does when the first attempt's reply was lost.
    pub fn set_repeat(&self, on: bool) {
        self.repeat.store(on, Ordering::SeqCst);
    }

    fn repeats(&self, op: &str) -> bool {
        self.repeat.load(Ordering::SeqCst) && self.affects(op)
    }

    /// The next `n` depth reads of a queue answer 0 whatever it holds, as an
    /// approximate count (SQS's) that missed its messages.
    pub fn miss_depth(&self, n: u64) {
        self.depth_misses.store(n, Ordering::SeqCst);
    }

    fn misses_depth(&self) -> bool {
        self.depth_misses
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// A wrapped queue takes messages of at most `n` bytes (`None`: its own
    /// limit), so a local queue can stand in for SQS's 256 KiB.
    pub fn set_max_message_bytes(&self, n: Option<usize>) {
        self.max_message_bytes
            .store(n.map_or(0, |n| n.max(1) as u64), Ordering::SeqCst);
    }

    /// The wrapped store reports `why` as fatal (a stopped writer).
    pub fn set_fatal(&self, why: Option<&str>) {
        if let Ok(mut f) = self.fatal.lock() {
            *f = why.map(str::to_owned);
        }
    }

    fn fatal(&self) -> Option<String> {
        self.fatal.lock().ok().and_then(|f| f.clone())
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    fn affects(&self, op: &str) -> bool {
        self.only
            .lock()
            .map(|o| o.as_ref().is_none_or(|ops| ops.contains(&op)))
            .unwrap_or(true)
    }

    /// A uniform draw in [0, 1e6) (xorshift; reproducible, no dependency).
    fn draw(&self) -> u32 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x % 1_000_000) as u32
    }

    fn inject(&self, op: &str, what: &str) -> String {
        self.injected.fetch_add(1, Ordering::SeqCst);
        format!("injected fault: {op} {what}")
    }

    /// Before the backend sees the call.
    async fn before(&self, op: &str) -> Result<(), String> {
        if !self.affects(op) {
            return Ok(());
        }
        let latency = self.latency_us.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_micros(latency)).await;
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.down.load(Ordering::SeqCst) {
            return Err(self.inject(op, "backend down"));
        }
        if self.fail_nth.load(Ordering::SeqCst) == n {
            return Err(self.inject(op, &format!("call {n} failed")));
        }
        if self.draw() < self.error_ppm.load(Ordering::SeqCst) {
            return Err(self.inject(op, "throttled"));
        }
        Ok(())
    }

    /// After the backend succeeded: maybe the reply is slow, or lost.
    async fn after(&self, op: &str) -> Result<(), String> {
        let latency = self.reply_latency_us.load(Ordering::SeqCst);
        if latency > 0 && self.affects(op) {
            tokio::time::sleep(Duration::from_micros(latency)).await;
        }
        if self.affects(op) && self.draw() < self.lost_reply_ppm.load(Ordering::SeqCst) {
            return Err(self.inject(op, "done, but the reply was lost"));
        }
        Ok(())
    }
}

/// Runs `call` on the inner port between the fault checks, mapping an
/// injected fault to the port's transient error.
macro_rules! faulty {
    // A call about one payment: spared when faults target another.
    ($self:ident, $op:literal, $err:path, $call:expr, about $key:expr) => {{
        if $self.faults.spares($key) {
            return $call.await;
        }
        faulty!($self, $op, $err, $call)
    }};
    ($self:ident, $op:literal, $err:path, $call:expr) => {{
        $self.faults.before($op).await.map_err($err)?;
        if $self.faults.repeats($op) {
            let _ = $call.await;
        }
        let out = $call.await?;
        $self.faults.after($op).await.map_err($err)?;
        Ok(out)
    }};
}

/// An archive with faults.
pub struct FaultyArchive {
    pub inner: Arc<dyn Archive>,
    pub faults: Arc<Faults>,
}

#[async_trait]
impl Archive for FaultyArchive {
    fn fatal(&self) -> Option<String> {
        self.faults.fatal().or_else(|| self.inner.fatal())
    }

    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        faulty!(
            self,
            "put",
            ArchiveError::Unavailable,
            self.inner.put(key, bytes)
        )
    }
    async fn get(&self, key: &str) -> Result<Vec<u8>, ArchiveError> {
        faulty!(self, "get", ArchiveError::Unavailable, self.inner.get(key))
    }
    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, ArchiveError> {
        faulty!(
            self,
            "get",
            ArchiveError::Unavailable,
            self.inner.get_range(key, offset, length)
        )
    }
    async fn list(
        &self,
        prefix: &str,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    ) -> Result<Vec<String>, ArchiveError> {
        faulty!(
            self,
            "list",
            ArchiveError::Unavailable,
            self.inner.list(prefix, from, to)
        )
    }
}

/// A queue with faults.
pub struct FaultyQueue {
    pub inner: Arc<dyn Queue>,
    pub faults: Arc<Faults>,
}

#[async_trait]
impl Queue for FaultyQueue {
    fn fatal(&self) -> Option<String> {
        self.faults.fatal().or_else(|| self.inner.fatal())
    }

    async fn send(&self, body: &[u8]) -> Result<String, QueueError> {
        faulty!(self, "send", QueueError::Unavailable, self.inner.send(body))
    }
    async fn send_batch(&self, bodies: &[Vec<u8>]) -> Result<Vec<String>, QueueError> {
        faulty!(
            self,
            "send",
            QueueError::Unavailable,
            self.inner.send_batch(bodies)
        )
    }
    async fn send_delayed(&self, body: &[u8], seconds: u32) -> Result<String, QueueError> {
        faulty!(
            self,
            "send",
            QueueError::Unavailable,
            self.inner.send_delayed(body, seconds)
        )
    }
    fn max_delay_secs(&self) -> u32 {
        self.inner.max_delay_secs()
    }
    fn max_message_bytes(&self) -> usize {
        match self.faults.max_message_bytes.load(Ordering::SeqCst) {
            0 => self.inner.max_message_bytes(),
            n => self.inner.max_message_bytes().min(n as usize),
        }
    }
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<QueueMessage>, QueueError> {
        faulty!(
            self,
            "receive",
            QueueError::Unavailable,
            self.inner.receive(max, wait)
        )
    }
    async fn delete(&self, receipt: &Receipt) -> Result<(), QueueError> {
        faulty!(
            self,
            "delete",
            QueueError::Unavailable,
            self.inner.delete(receipt)
        )
    }
    async fn delete_batch(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        faulty!(
            self,
            "delete",
            QueueError::Unavailable,
            self.inner.delete_batch(receipts)
        )
    }
    async fn delay(&self, receipt: &Receipt, seconds: u32) -> Result<(), QueueError> {
        faulty!(
            self,
            "delay",
            QueueError::Unavailable,
            self.inner.delay(receipt, seconds)
        )
    }
    async fn dead_letter(
        &self,
        message: &QueueMessage,
        reason: &str,
        error: &str,
    ) -> Result<(), QueueError> {
        faulty!(
            self,
            "dead_letter",
            QueueError::Unavailable,
            self.inner.dead_letter(message, reason, error)
        )
    }
    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        faulty!(
            self,
            "dlq_list",
            QueueError::Unavailable,
            self.inner.dlq_list(limit)
        )
    }
    async fn redrive_with(
        &self,
        reason: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<usize, QueueError> {
        faulty!(
            self,
            "redrive",
            QueueError::Unavailable,
            self.inner.redrive_with(reason, progress)
        )
    }
    async fn purge_dead_letters(
        &self,
        reason: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        faulty!(
            self,
            "purge",
            QueueError::Unavailable,
            self.inner.purge_dead_letters(reason, progress)
        )
    }
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        faulty!(self, "stats", QueueError::Unavailable, self.inner.stats())
    }
    async fn depth(&self) -> Result<u64, QueueError> {
        let depth: Result<u64, QueueError> =
            faulty!(self, "depth", QueueError::Unavailable, self.inner.depth());
        match depth {
            Ok(_) if self.faults.misses_depth() => Ok(0),
            other => other,
        }
    }
    async fn dlq_depth(&self) -> Result<u64, QueueError> {
        faulty!(
            self,
            "dlq_depth",
            QueueError::Unavailable,
            self.inner.dlq_depth()
        )
    }
}

/// A ledger with faults.
pub struct FaultyLedger {
    pub inner: Arc<dyn Ledger>,
    pub faults: Arc<Faults>,
}

#[async_trait]
impl Ledger for FaultyLedger {
    fn fatal(&self) -> Option<String> {
        self.faults.fatal().or_else(|| self.inner.fatal())
    }

    async fn load(&self, key: &PaymentKey) -> Result<PaymentEntry, LedgerError> {
        faulty!(
            self,
            "load",
            LedgerError::Unavailable,
            self.inner.load(key),
            about key
        )
    }
    async fn write(&self, write: &LedgerWrite) -> Result<ApplyOutcome, LedgerError> {
        faulty!(
            self,
            "write",
            LedgerError::Unavailable,
            self.inner.write(write),
            about & write.key
        )
    }
    async fn history(&self, key: &PaymentKey) -> Result<Vec<EventRecord>, LedgerError> {
        faulty!(
            self,
            "history",
            LedgerError::Unavailable,
            self.inner.history(key),
            about key
        )
    }
    async fn load_to_apply(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
        freshness: Freshness,
    ) -> Result<Loaded, LedgerError> {
        faulty!(
            self,
            "load_to_apply",
            LedgerError::Unavailable,
            self.inner.load_to_apply(key, event_key, freshness),
            about key
        )
    }
    async fn contains_event(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
    ) -> Result<bool, LedgerError> {
        faulty!(
            self,
            "contains_event",
            LedgerError::Unavailable,
            self.inner.contains_event(key, event_key),
            about key
        )
    }
    async fn parked_before(
        &self,
        t: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<ParkedEntry>, LedgerError> {
        faulty!(
            self,
            "parked_before",
            LedgerError::Unavailable,
            self.inner.parked_before(t, limit)
        )
    }
    async fn events_between(
        &self,
        source: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<EventRecord>, LedgerError> {
        faulty!(
            self,
            "events_between",
            LedgerError::Unavailable,
            self.inner.events_between(source, from, to)
        )
    }
}

/// A watch store with faults (the ledger's switchboard: watches live in
/// the ledger's database or table).
pub struct FaultyWatches {
    pub inner: Arc<dyn WatchStore>,
    pub faults: Arc<Faults>,
}

#[async_trait]
impl WatchStore for FaultyWatches {
    async fn put_watch(&self, watch: &Watch) -> Result<ApplyOutcome, LedgerError> {
        faulty!(
            self,
            "put_watch",
            LedgerError::Unavailable,
            self.inner.put_watch(watch)
        )
    }
    async fn get_watch(&self, id: &str) -> Result<Option<Watch>, LedgerError> {
        faulty!(
            self,
            "get_watch",
            LedgerError::Unavailable,
            self.inner.get_watch(id)
        )
    }
    async fn due_watches(
        &self,
        t: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Watch>, LedgerError> {
        faulty!(
            self,
            "due_watches",
            LedgerError::Unavailable,
            self.inner.due_watches(t, limit)
        )
    }
}

/// The deliveries store with faults (its own switchboard): what the
/// deliverer does when the outbox or a delivery's record cannot be read or
/// written, or was written and the reply lost.
pub struct FaultyDeliveries {
    pub inner: Arc<dyn Deliveries>,
    pub faults: Arc<Faults>,
}

#[async_trait]
impl Deliveries for FaultyDeliveries {
    async fn outbox_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, LedgerError> {
        faulty!(
            self,
            "outbox_after",
            LedgerError::Unavailable,
            self.inner.outbox_after(after, limit)
        )
    }
    async fn outbox_for(&self, payment_key: &str) -> Result<Vec<OutboxRecord>, LedgerError> {
        faulty!(
            self,
            "outbox_for",
            LedgerError::Unavailable,
            self.inner.outbox_for(payment_key)
        )
    }
    async fn outbox_since(&self) -> Result<Option<OffsetDateTime>, LedgerError> {
        faulty!(
            self,
            "outbox_since",
            LedgerError::Unavailable,
            self.inner.outbox_since()
        )
    }
    async fn enqueue(
        &self,
        endpoint: &str,
        seqs: &[u64],
        cursor: u64,
        now: OffsetDateTime,
    ) -> Result<(), LedgerError> {
        faulty!(
            self,
            "enqueue",
            LedgerError::Unavailable,
            self.inner.enqueue(endpoint, seqs, cursor, now)
        )
    }
    async fn claim(
        &self,
        endpoint: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Delivery>, LedgerError> {
        faulty!(
            self,
            "claim",
            LedgerError::Unavailable,
            self.inner.claim(endpoint, now, lease_until, limit)
        )
    }
    async fn settle(
        &self,
        endpoint: &str,
        seq: u64,
        attempt: &Attempt,
        now: OffsetDateTime,
    ) -> Result<(), LedgerError> {
        faulty!(
            self,
            "settle",
            LedgerError::Unavailable,
            self.inner.settle(endpoint, seq, attempt, now)
        )
    }
    async fn resend(
        &self,
        endpoint: &str,
        event_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, LedgerError> {
        faulty!(
            self,
            "resend",
            LedgerError::Unavailable,
            self.inner.resend(endpoint, event_id, now)
        )
    }
    async fn list(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>, LedgerError> {
        faulty!(
            self,
            "list",
            LedgerError::Unavailable,
            self.inner.list(filter)
        )
    }
    async fn endpoint_status(&self, endpoint: &str) -> Result<EndpointStatus, LedgerError> {
        faulty!(
            self,
            "endpoint_status",
            LedgerError::Unavailable,
            self.inner.endpoint_status(endpoint)
        )
    }
    async fn set_disabled(&self, endpoint: &str, reason: Option<&str>) -> Result<(), LedgerError> {
        faulty!(
            self,
            "set_disabled",
            LedgerError::Unavailable,
            self.inner.set_disabled(endpoint, reason)
        )
    }
}

/// The three ports of `backends` behind one switchboard each.
pub struct FaultyBackends {
    pub archive: Arc<Faults>,
    pub queue: Arc<Faults>,
    pub ledger: Arc<Faults>,
    /// The outbox and deliveries (when the backend keeps them).
    pub deliveries: Arc<Faults>,
}

impl FaultyBackends {
    /// Wraps the ports of `backends` in place and returns their switchboards.
    pub fn wrap(backends: &mut crate::backend::Backends) -> Self {
        let f = Self {
            archive: Faults::new(),
            queue: Faults::new(),
            ledger: Faults::new(),
            deliveries: Faults::new(),
        };
        backends.archive = Arc::new(FaultyArchive {
            inner: backends.archive.clone(),
            faults: f.archive.clone(),
        });
        backends.queue = Arc::new(FaultyQueue {
            inner: backends.queue.clone(),
            faults: f.queue.clone(),
        });
        backends.ledger = Arc::new(FaultyLedger {
            inner: backends.ledger.clone(),
            faults: f.ledger.clone(),
        });
        backends.watches = Arc::new(FaultyWatches {
            inner: backends.watches.clone(),
            faults: f.ledger.clone(),
        });
        backends.deliveries = backends.deliveries.take().map(|inner| {
            Arc::new(FaultyDeliveries {
                inner,
                faults: f.deliveries.clone(),
            }) as Arc<dyn Deliveries>
        });
        f
    }
}
