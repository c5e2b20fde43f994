//! The two decorators of every port, the fault injector ([`crate::faults`])
//! and the meter ([`crate::metered`]), generated from one list of each
//! port's methods: a method added to a port is named here once (its name,
//! arguments and answer; the operation name the faults' `only` filter and
//! the metrics use, when it is not the method's; the payment it is about,
//! when faults may target one payment), not written again in each wrapper.
//! What a wrapper does beyond delegating (a fault switchboard's `fatal`,
//! a queue's message size limit, a depth read that misses) is written out
//! beside the list.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::event::{EventKey, PaymentKey};
use crate::faults::{
    FaultyArchive, FaultyDeadLetters, FaultyDeliveries, FaultyLedger, FaultyQueue, FaultyWatches,
};
use crate::metered::{
    MeteredArchive, MeteredDeadLetters, MeteredDeliveries, MeteredLedger, MeteredQueue,
    MeteredWatches,
};
use crate::ports::{
    ApplyOutcome, Archive, ArchiveError, Attempt, DeadLetter, DeadLetters, Deliveries, Delivery,
    DeliveryFilter, EndpointStatus, EventRecord, Freshness, Ledger, LedgerError, LedgerWrite,
    Loaded, OutboxRecord, ParkedEntry, ParkedEvent, PaymentEntry, PaymentPage, PaymentSearch,
    Progress, Queue, QueueError, QueueMessage, QueueStats, Receipt, Watch, WatchStore,
};

/// Runs `call` on the inner port between the fault checks, mapping an
/// injected fault to the port's transient error.
macro_rules! faulty {
    // A call about one payment: spared when faults target another.
    ($self:ident, $op:expr, $err:path, $call:expr, about $key:expr) => {{
        if $self.faults.spares($key) {
            return $call.await;
        }
        faulty!($self, $op, $err, $call)
    }};
    ($self:ident, $op:expr, $err:path, $call:expr) => {{
        $self.faults.before($op).await.map_err(|e| $err(e.into()))?;
        if $self.faults.repeats($op) {
            let _ = $call.await;
        }
        let out = $call.await?;
        $self.faults.after($op).await.map_err(|e| $err(e.into()))?;
        Ok(out)
    }};
}

/// Runs `call`, then records its duration and whether it failed.
macro_rules! timed {
    ($self:ident, $op:expr, $call:expr) => {{
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

/// The operation's name: the one given, else the method's.
macro_rules! op {
    ($m:ident) => {
        stringify!($m)
    };
    ($m:ident $op:literal) => {
        $op
    };
}

/// Implements `$port` for the fault wrapper and the meter from one method
/// list. Each method: `async fn name(&self, arg: Type, …) -> Answer;`,
/// then optionally `fault "op"` (the faults' operation name), `metric "op"`
/// (the metric's), `about expr` (the payment a fault may target).
macro_rules! decorators {
    (
        $port:ident, $err:path;
        faulty $faulty:ident { $($faulty_own:item)* }
        metered $metered:ident { $($metered_own:item)* }
        $(
            async fn $m:ident(&self $(, $a:ident : $t:ty)* $(,)?) -> $ret:ty
                $(, fault $fop:literal)? $(, metric $mop:literal)? $(, about $key:expr)?;
        )*
    ) => {
        #[async_trait]
        impl $port for $faulty {
            $($faulty_own)*
            $(
                async fn $m(&self $(, $a: $t)*) -> $ret {
                    faulty!(self, op!($m $($fop)?), $err, self.inner.$m($($a),*) $(, about $key)?)
                }
            )*
        }

        #[async_trait]
        impl $port for $metered {
            $($metered_own)*
            $(
                async fn $m(&self $(, $a: $t)*) -> $ret {
                    timed!(self, op!($m $($mop)?), self.inner.$m($($a),*))
                }
            )*
        }
    };
}

decorators! {
    Archive, ArchiveError::Unavailable;
    faulty FaultyArchive {
        fn fatal(&self) -> Option<String> {
            self.faults.fatal().or_else(|| self.inner.fatal())
        }
    }
    metered MeteredArchive {
        fn fatal(&self) -> Option<String> {
            self.inner.fatal()
        }
    }
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), ArchiveError>;
    async fn get(&self, key: &str) -> Result<Vec<u8>, ArchiveError>;
    async fn get_range(&self, key: &str, offset: u64, length: u64) -> Result<Vec<u8>, ArchiveError>,
        fault "get";
    async fn list(
        &self,
        prefix: &str,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    ) -> Result<Vec<String>, ArchiveError>;
}

decorators! {
    Queue, QueueError::Unavailable;
    faulty FaultyQueue {
        fn fatal(&self) -> Option<String> {
            self.faults.fatal().or_else(|| self.inner.fatal())
        }
        fn max_delay_secs(&self) -> u32 {
            self.inner.max_delay_secs()
        }
        // A local queue can stand in for SQS's 256 KiB.
        fn max_message_bytes(&self) -> usize {
            match self.faults.max_message_bytes.load(Ordering::SeqCst) {
                0 => self.inner.max_message_bytes(),
                n => self.inner.max_message_bytes().min(n as usize),
            }
        }
        // An approximate count (SQS's) that missed its messages.
        async fn depth(&self) -> Result<u64, QueueError> {
            let depth: Result<u64, QueueError> =
                faulty!(self, "depth", QueueError::Unavailable, self.inner.depth());
            match depth {
                Ok(_) if self.faults.misses_depth() => Ok(0),
                other => other,
            }
        }
    }
    metered MeteredQueue {
        fn fatal(&self) -> Option<String> {
            self.inner.fatal()
        }
        fn max_delay_secs(&self) -> u32 {
            self.inner.max_delay_secs()
        }
        fn max_message_bytes(&self) -> usize {
            self.inner.max_message_bytes()
        }
        async fn depth(&self) -> Result<u64, QueueError> {
            timed!(self, "depth", self.inner.depth())
        }
    }
    async fn send(&self, body: &[u8]) -> Result<String, QueueError>;
    async fn send_batch(&self, bodies: &[Vec<u8>]) -> Result<Vec<String>, QueueError>,
        fault "send";
    async fn send_delayed(&self, body: &[u8], seconds: u32) -> Result<String, QueueError>,
        fault "send";
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<QueueMessage>, QueueError>;
    async fn delete(&self, receipt: &Receipt) -> Result<(), QueueError>;
    async fn delete_batch(&self, receipts: &[Receipt]) -> Result<(), QueueError>, fault "delete";
    async fn delay(&self, receipt: &Receipt, seconds: u32) -> Result<(), QueueError>;
    async fn dead_letter(
        &self,
        message: &QueueMessage,
        reason: &str,
        error: &str,
    ) -> Result<(), QueueError>;
    async fn stats(&self) -> Result<QueueStats, QueueError>;
}

decorators! {
    DeadLetters, QueueError::Unavailable;
    faulty FaultyDeadLetters {}
    metered MeteredDeadLetters {}
    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;
    async fn redrive_with(
        &self,
        reason: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<usize, QueueError>, fault "redrive", metric "redrive";
    async fn redrive_one(&self, id: &str) -> Result<bool, QueueError>, fault "redrive", metric "redrive";
    async fn purge_dead_letters(
        &self,
        reason: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<Vec<DeadLetter>, QueueError>, fault "purge";
    async fn dlq_depth(&self) -> Result<u64, QueueError>;
    async fn put_dead_letter(
        &self,
        id: &str,
        body: &[u8],
        reason: &str,
        error: &str,
    ) -> Result<(), QueueError>, fault "dead_letter", metric "dead_letter";
}

decorators! {
    Ledger, LedgerError::Unavailable;
    faulty FaultyLedger {
        fn fatal(&self) -> Option<String> {
            self.faults.fatal().or_else(|| self.inner.fatal())
        }
    }
    metered MeteredLedger {
        fn fatal(&self) -> Option<String> {
            self.inner.fatal()
        }
    }
    async fn load(&self, key: &PaymentKey) -> Result<PaymentEntry, LedgerError>, about key;
    async fn write(&self, write: &LedgerWrite) -> Result<ApplyOutcome, LedgerError>,
        about &write.key;
    async fn history(&self, key: &PaymentKey) -> Result<Vec<EventRecord>, LedgerError>,
        about key;
    async fn load_to_apply(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
        freshness: Freshness,
    ) -> Result<Loaded, LedgerError>, about key;
    async fn contains_event(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
    ) -> Result<bool, LedgerError>, about key;
    async fn parked_before(
        &self,
        t: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<ParkedEntry>, LedgerError>;
    async fn events_between(
        &self,
        source: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<EventRecord>, LedgerError>;
    async fn remove_parked(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
    ) -> Result<Option<ParkedEvent>, LedgerError>, about key;
    async fn payments_by_order(&self, order_id: &str, limit: usize) -> Result<Vec<PaymentKey>, LedgerError>;
    async fn search_payments(&self, search: &PaymentSearch) -> Result<PaymentPage, LedgerError>;
    async fn recorded_since(&self, since: OffsetDateTime) -> Result<Option<u64>, LedgerError>;
}

decorators! {
    WatchStore, LedgerError::Unavailable;
    faulty FaultyWatches {}
    metered MeteredWatches {}
    async fn put_watch(&self, watch: &Watch) -> Result<ApplyOutcome, LedgerError>;
    async fn get_watch(&self, id: &str) -> Result<Option<Watch>, LedgerError>;
    async fn due_watches(&self, t: OffsetDateTime, limit: usize) -> Result<Vec<Watch>, LedgerError>;
}

decorators! {
    Deliveries, LedgerError::Unavailable;
    faulty FaultyDeliveries {}
    metered MeteredDeliveries {}
    async fn outbox_after(&self, after: u64, limit: usize) -> Result<Vec<OutboxRecord>, LedgerError>;
    async fn outbox_for(&self, payment_key: &str) -> Result<Vec<OutboxRecord>, LedgerError>;
    async fn outbox_since(&self) -> Result<Option<OffsetDateTime>, LedgerError>;
    async fn enqueue(
        &self,
        endpoint: &str,
        seqs: &[u64],
        cursor: u64,
        now: OffsetDateTime,
    ) -> Result<(), LedgerError>;
    async fn claim(
        &self,
        endpoint: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Delivery>, LedgerError>;
    async fn settle(
        &self,
        endpoint: &str,
        seq: u64,
        attempt: &Attempt,
        now: OffsetDateTime,
    ) -> Result<(), LedgerError>;
    async fn resend(
        &self,
        endpoint: &str,
        event_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, LedgerError>;
    async fn list(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>, LedgerError>;
    async fn endpoint_status(&self, endpoint: &str) -> Result<EndpointStatus, LedgerError>;
    async fn set_disabled(&self, endpoint: &str, reason: Option<&str>) -> Result<(), LedgerError>;
}
