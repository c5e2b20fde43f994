//! Counters and latency samples of one worker process, for the demo summary
//! and `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::AckKind;

/// Samples kept for percentiles; older ones are dropped.
const MAX_SAMPLES: usize = 1 << 20;

/// Live counters.
#[derive(Debug, Default)]
pub struct Stats {
    applied: AtomicU64,
    recorded: AtomicU64,
    duplicates: AtomicU64,
    parked: AtomicU64,
    ignored: AtomicU64,
    split: AtomicU64,
    retried: AtomicU64,
    dead: Mutex<BTreeMap<String, u64>>,
    latencies_us: Mutex<Vec<u64>>,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StatsSnapshot {
    pub applied: u64,
    pub recorded: u64,
    pub duplicates: u64,
    /// Events parked until their payment arrives.
    pub parked: u64,
    /// Authentic notifications that are not payment events.
    pub ignored: u64,
    /// Notifications of several items, queued one message per item.
    pub split: u64,
    pub retried: u64,
    pub dead_lettered: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Stats {
    fn counter(&self, kind: AckKind) -> &AtomicU64 {
        match kind {
            AckKind::Applied => &self.applied,
            AckKind::Recorded => &self.recorded,
            AckKind::Duplicate => &self.duplicates,
            AckKind::Parked => &self.parked,
            AckKind::Ignored => &self.ignored,
            AckKind::Split => &self.split,
        }
    }

    /// Counts an acknowledged message. The worker counts it before its
    /// delete, so that whoever sees the message gone from the queue sees it
    /// counted, and takes it back with [`Stats::unack`] when the delete fails.
    pub(crate) fn ack(&self, kind: AckKind) {
        self.counter(kind).fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn unack(&self, kind: AckKind) {
        self.counter(kind).fetch_sub(1, Ordering::SeqCst);
    }

    pub(crate) fn retry(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a dead letter (before the move, as [`Stats::ack`]).
    pub(crate) fn dead_letter(&self, reason: &str) {
        if let Ok(mut d) = self.dead.lock() {
            *d.entry(reason.to_owned()).or_default() += 1;
        }
    }

    pub(crate) fn undo_dead_letter(&self, reason: &str) {
        if let Ok(mut d) = self.dead.lock() {
            if let Some(n) = d.get_mut(reason) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    d.remove(reason);
                }
            }
        }
    }

    pub(crate) fn record_latency(&self, micros: u64) {
        if let Ok(mut l) = self.latencies_us.lock() {
            if l.len() < MAX_SAMPLES {
                l.push(micros);
            }
        }
    }

    /// The counters now, with receipt-to-applied percentiles.
    pub fn snapshot(&self) -> StatsSnapshot {
        let mut lat = self
            .latencies_us
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        lat.sort_unstable();
        let pct = |p: f64| {
            if lat.is_empty() {
                0.0
            } else {
                lat[((lat.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
            }
        };
        StatsSnapshot {
            applied: self.applied.load(Ordering::Relaxed),
            recorded: self.recorded.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            parked: self.parked.load(Ordering::Relaxed),
            ignored: self.ignored.load(Ordering::Relaxed),
            split: self.split.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead.lock().map(|d| d.clone()).unwrap_or_default(),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
        }
    }
}
