//! Wrappers that time every call to the ports and count the ones that
//! fail, by port and operation (`paynotify_backend_call_duration_seconds`,
//! `paynotify_backend_errors_total`). An archive's `AlreadyExists` or
//! `NotFound` is an answer, not a failure of the store, and is not counted.
//! Their methods are generated with the fault injector's from one list
//! (`crate::decorated`).

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::ports::{
    Archive, ArchiveError, Backends, DeadLetters, Deliveries, Ledger, LedgerError, Queue,
    QueueError, WatchStore,
};

/// Wraps the ports of `backends` in place so that `metrics` sees every call.
pub fn meter(backends: &mut Backends, metrics: &Arc<Metrics>) {
    backends.archive = Arc::new(MeteredArchive {
        inner: backends.archive.clone(),
        metrics: metrics.clone(),
    });
    backends.queue = Arc::new(MeteredQueue {
        inner: backends.queue.clone(),
        metrics: metrics.clone(),
    });
    backends.dead_letters = Arc::new(MeteredDeadLetters {
        inner: backends.dead_letters.clone(),
        metrics: metrics.clone(),
    });
    backends.ledger = Arc::new(MeteredLedger {
        inner: backends.ledger.clone(),
        metrics: metrics.clone(),
    });
    backends.watches = Arc::new(MeteredWatches {
        inner: backends.watches.clone(),
        metrics: metrics.clone(),
    });
    backends.deliveries = backends.deliveries.take().map(|inner| {
        Arc::new(MeteredDeliveries {
            inner,
            metrics: metrics.clone(),
        }) as Arc<dyn Deliveries>
    });
}

pub(crate) struct MeteredArchive {
    pub(crate) inner: Arc<dyn Archive>,
    pub(crate) metrics: Arc<Metrics>,
}

impl MeteredArchive {
    pub(crate) const PORT: &'static str = "archive";
    pub(crate) fn failed(e: &ArchiveError) -> bool {
        matches!(e, ArchiveError::Unavailable(_))
    }
}

pub(crate) struct MeteredQueue {
    pub(crate) inner: Arc<dyn Queue>,
    pub(crate) metrics: Arc<Metrics>,
}

impl MeteredQueue {
    pub(crate) const PORT: &'static str = "queue";
    pub(crate) fn failed(_: &QueueError) -> bool {
        true
    }
}

/// The dead letters are the queue's store: their calls are the queue's in
/// the metrics (`port="queue"`), as before they had a port of their own.
pub(crate) struct MeteredDeadLetters {
    pub(crate) inner: Arc<dyn DeadLetters>,
    pub(crate) metrics: Arc<Metrics>,
}

impl MeteredDeadLetters {
    pub(crate) const PORT: &'static str = "queue";
    pub(crate) fn failed(_: &QueueError) -> bool {
        true
    }
}

pub(crate) struct MeteredLedger {
    pub(crate) inner: Arc<dyn Ledger>,
    pub(crate) metrics: Arc<Metrics>,
}

impl MeteredLedger {
    pub(crate) const PORT: &'static str = "ledger";
    pub(crate) fn failed(_: &LedgerError) -> bool {
        true
    }
}

pub(crate) struct MeteredWatches {
    pub(crate) inner: Arc<dyn WatchStore>,
    pub(crate) metrics: Arc<Metrics>,
}

impl MeteredWatches {
    /// Watches live in the ledger's database or table.
    pub(crate) const PORT: &'static str = "ledger";
    pub(crate) fn failed(_: &LedgerError) -> bool {
        true
    }
}

pub(crate) struct MeteredDeliveries {
    pub(crate) inner: Arc<dyn Deliveries>,
    pub(crate) metrics: Arc<Metrics>,
}

impl MeteredDeliveries {
    /// The outbox and deliveries live in the ledger's database.
    pub(crate) const PORT: &'static str = "deliveries";
    pub(crate) fn failed(_: &LedgerError) -> bool {
        true
    }
}
