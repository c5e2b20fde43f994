//! The ledger, the watch store and the deliveries store with faults.

use super::*;

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
