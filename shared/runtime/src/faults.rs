//! Fault-injecting wrappers for the three ports, for tests and chaos runs:
//! a backend that is down, fails at a rate, fails its Nth call, is slow, or
//! does the work and then loses the reply. Each wrapper delegates to a real
//! backend; one [`Faults`] switchboard, changed while running, decides what
//! goes wrong and for which operations. The wrappers' methods are
//! generated with the meter's from one list (`crate::decorated`).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::event::PaymentKey;
use crate::ports::{Archive, DeadLetters, Deliveries, Ledger, Queue, WatchStore};

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
    pub(crate) max_message_bytes: AtomicU64,
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

    pub(crate) fn spares(&self, key: &PaymentKey) -> bool {
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

    pub(crate) fn repeats(&self, op: &str) -> bool {
        self.repeat.load(Ordering::SeqCst) && self.affects(op)
    }

    /// The next `n` depth reads of a queue answer 0 whatever it holds, as an
    /// approximate count (SQS's) that missed its messages.
    pub fn miss_depth(&self, n: u64) {
        self.depth_misses.store(n, Ordering::SeqCst);
    }

    pub(crate) fn misses_depth(&self) -> bool {
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

    pub(crate) fn fatal(&self) -> Option<String> {
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
    pub(crate) async fn before(&self, op: &str) -> Result<(), String> {
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
    pub(crate) async fn after(&self, op: &str) -> Result<(), String> {
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

/// An archive with faults.
pub struct FaultyArchive {
    pub inner: Arc<dyn Archive>,
    pub faults: Arc<Faults>,
}

/// A queue with faults.
pub struct FaultyQueue {
    pub inner: Arc<dyn Queue>,
    pub faults: Arc<Faults>,
}

/// The queue's dead letters with faults (the queue's switchboard: they are
/// the queue's store).
pub struct FaultyDeadLetters {
    pub inner: Arc<dyn DeadLetters>,
    pub faults: Arc<Faults>,
}

/// A ledger with faults.
pub struct FaultyLedger {
    pub inner: Arc<dyn Ledger>,
    pub faults: Arc<Faults>,
}

/// A watch store with faults (the ledger's switchboard: watches live in
/// the ledger's database or table).
pub struct FaultyWatches {
    pub inner: Arc<dyn WatchStore>,
    pub faults: Arc<Faults>,
}

/// The deliveries store with faults (its own switchboard): what the
/// deliverer does when the outbox or a delivery's record cannot be read or
/// written, or was written and the reply lost.
pub struct FaultyDeliveries {
    pub inner: Arc<dyn Deliveries>,
    pub faults: Arc<Faults>,
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
    pub fn wrap(backends: &mut crate::ports::Backends) -> Self {
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
        backends.dead_letters = Arc::new(FaultyDeadLetters {
            inner: backends.dead_letters.clone(),
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
