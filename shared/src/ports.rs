//! The three ports (DESIGN §3): archive, queue and ledger. Each is a small
//! async trait with a contract, our own types in and out, and an error enum
//! that says whether a failure is transient.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::event::{EventKey, PaymentEvent, PaymentKey};
use crate::state::{PaymentState, PaymentStatus};

/// Archive failures.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// `put` of a key that exists: the object was not overwritten.
    #[error("archive object {0} already exists")]
    AlreadyExists(String),
    #[error("archive object {0} not found")]
    NotFound(String),
    #[error("invalid archive key {0:?}")]
    InvalidKey(String),
    /// The store could not be reached or written; retry later.
    #[error("archive unavailable: {0}")]
    Unavailable(String),
}

/// The raw archive, the source of truth for replay.
///
/// # Contract
/// - `put` is create-only: a second `put` of a key returns `AlreadyExists` and
///   leaves the first object untouched. When `put` returns `Ok`, the bytes are
///   durable (they survive a crash of the process and of the machine).
/// - `get` returns exactly the bytes put; `get_range` the `length` bytes at
///   `offset` of them (`NotFound` for a range past the end, as for a key
///   that is not there).
/// - `list` returns every key under `prefix` whose hour partition lies in
///   `[from, to]` (both optional), sorted.
#[async_trait]
pub trait Archive: Send + Sync {
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), ArchiveError>;
    async fn get(&self, key: &str) -> Result<Vec<u8>, ArchiveError>;
    async fn get_range(&self, key: &str, offset: u64, length: u64)
        -> Result<Vec<u8>, ArchiveError>;
    async fn list(
        &self,
        prefix: &str,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    ) -> Result<Vec<String>, ArchiveError>;
    /// Why this store can no longer work in this process (a writer thread
    /// that ended), if so: readiness fails and the process stops.
    fn fatal(&self) -> Option<String> {
        None
    }
}

/// Queue failures.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    #[error("batch of {0} messages exceeds the limit of 10")]
    BatchTooLarge(usize),
}

/// Handle for one delivery of a message; stale after the message is received again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Receipt(pub String);

/// One delivery of a message.
#[derive(Debug, Clone)]
pub struct QueueMessage {
    pub id: String,
    pub receipt: Receipt,
    pub body: Vec<u8>,
    /// How many times this message has been received, this delivery included.
    pub receive_count: u32,
    /// When this message was first received (SQS
    /// `ApproximateFirstReceiveTimestamp`).
    pub first_received_at: Option<OffsetDateTime>,
}

/// A message in the dead-letter queue.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub id: String,
    pub reason: String,
    pub error: String,
    pub receive_count: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub dead_at: OffsetDateTime,
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// Called with the number of messages handled so far.
pub type Progress<'a> = &'a (dyn Fn(usize) + Send + Sync);

/// A sample of the queue, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Ready to be received.
    pub visible: u64,
    /// Received and not yet deleted, delayed or dead-lettered.
    pub in_flight: u64,
    /// Sent with a delay, or made invisible for a retry, not yet visible.
    pub delayed: u64,
    pub dead_letters: u64,
    /// Since the oldest message in the queue was sent, when the backend
    /// can tell (on SQS it is CloudWatch's `ApproximateAgeOfOldestMessage`).
    pub oldest_age: Option<Duration>,
}

/// SQS's largest message body, which every queue keeps: a larger envelope
/// travels as an archive pointer, on every backend alike.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// SQS's longest delay (`DelaySeconds`, `ChangeMessageVisibility` up to
/// this for a send's delay), which every queue keeps: a longer one is this.
pub const MAX_DELAY_SECS: u32 = 900;

/// Refuses a body larger than [`MAX_MESSAGE_BYTES`], as SQS does.
///
/// # Errors
/// `Unavailable` naming the size.
pub fn check_message_size(body: &[u8]) -> Result<(), QueueError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(QueueError::Unavailable(format!(
            "message of {} bytes exceeds the limit of {MAX_MESSAGE_BYTES} (SQS's)",
            body.len()
        )));
    }
    Ok(())
}

/// The notification queue, with SQS semantics.
///
/// # Contract
/// - At-least-once: a message is delivered until it is deleted or dead-lettered.
/// - `receive` returns at most `max` (≤ 10) visible messages, waiting up to
///   `wait` for one to arrive; each becomes invisible for the visibility
///   timeout and its `receive_count` increases by one. A message received more
///   than `max_receives` times moves to the dead-letter queue instead.
/// - `delete` and `delay` act on the delivery named by the receipt; a stale
///   receipt is a no-op.
/// - `delay` makes the message invisible for `seconds` from now.
/// - `send_delayed` sends a message that becomes visible after `seconds`
///   (at most `max_delay_secs`).
/// - `dead_letter` moves the message to the DLQ with a reason, atomically.
/// - `redrive` moves dead letters (all, or those with `reason`) back with a
///   receive count of zero and returns how many moved. `dlq_list` and
///   `redrive` may not reach every dead letter on a backend that cannot list
///   without receiving (SQS: messages in flight elsewhere are skipped);
///   callers compare with `dlq_depth` and say so. `redrive_with` reports
///   each message moved to `progress`.
/// - `purge_dead_letters` deletes dead letters (all, or those with
///   `reason`) and returns them; their notifications stay in the archive.
/// - `stats` samples the queue for `/metrics`: approximate on SQS, where the
///   age of the oldest message is CloudWatch's, not the queue's (`None`).
#[async_trait]
pub trait Queue: Send + Sync {
    async fn send(&self, body: &[u8]) -> Result<String, QueueError>;
    async fn send_batch(&self, bodies: &[Vec<u8>]) -> Result<Vec<String>, QueueError>;
    async fn send_delayed(&self, body: &[u8], seconds: u32) -> Result<String, QueueError>;
    /// The longest delay `send_delayed` takes.
    fn max_delay_secs(&self) -> u32 {
        u32::MAX
    }
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<QueueMessage>, QueueError>;
    async fn delete(&self, receipt: &Receipt) -> Result<(), QueueError>;
    /// Deletes several deliveries; as `delete` for each, in as few calls as
    /// the backend allows.
    async fn delete_batch(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        for r in receipts {
            self.delete(r).await?;
        }
        Ok(())
    }
    async fn delay(&self, receipt: &Receipt, seconds: u32) -> Result<(), QueueError>;
    async fn dead_letter(
        &self,
        message: &QueueMessage,
        reason: &str,
        error: &str,
    ) -> Result<(), QueueError>;
    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;
    async fn redrive(&self, reason: Option<&str>) -> Result<usize, QueueError> {
        self.redrive_with(reason, &|_| {}).await
    }
    async fn redrive_with(
        &self,
        reason: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<usize, QueueError>;
    async fn purge_dead_letters(
        &self,
        reason: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<Vec<DeadLetter>, QueueError>;
    async fn stats(&self) -> Result<QueueStats, QueueError>;
    /// Messages not yet deleted or dead-lettered (visible or in flight).
    /// Not a snapshot: on SQS one whose visibility timeout ends during the
    /// read can be counted neither visible nor in flight, and a sharded
    /// local queue counts its shards one after another, missing a message
    /// a retry or a split sends to a shard already counted before deleting
    /// it from one not yet counted. A single 0 does not prove the queue
    /// empty (see [`wait_drained`]).
    async fn depth(&self) -> Result<u64, QueueError>;
    /// Messages in the dead-letter queue (approximate on SQS).
    async fn dlq_depth(&self) -> Result<u64, QueueError>;
    /// The largest message body `send` accepts; larger envelopes travel as
    /// an archive pointer.
    fn max_message_bytes(&self) -> usize {
        usize::MAX
    }
    /// Why this store can no longer work in this process (a writer thread
    /// that ended), if so: readiness fails and the process stops.
    fn fatal(&self) -> Option<String> {
        None
    }
}

/// Waits until `queue` reads empty twice in a row, `poll` apart, or until
/// `timeout` has passed; true when it was drained.
///
/// Twice, because a depth of 0 can be read while a message is still there
/// (see [`Queue::depth`]): moto reads the visible count before the
/// in-flight one, so a message whose visibility timeout ends between the
/// two is in neither, and a local queue's shards are counted one by one.
/// The moment that hides a message does not fall into two reads `poll`
/// apart.
///
/// # Errors
/// The queue's, from reading its depth.
pub async fn wait_drained(
    queue: &dyn Queue,
    timeout: Duration,
    poll: Duration,
) -> Result<bool, QueueError> {
    zero_twice(|| queue.depth(), timeout, poll).await
}

/// [`wait_drained`] over any reading of a depth.
async fn zero_twice<F, Fut>(
    mut depth: F,
    timeout: Duration,
    poll: Duration,
) -> Result<bool, QueueError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, QueueError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut zeros = 0;
    loop {
        if depth().await? == 0 {
            zeros += 1;
            if zeros == 2 {
                return Ok(true);
            }
        } else {
            zeros = 0;
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(poll).await;
    }
}

/// Ledger failures (all transient: the message is retried).
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
}

/// What `write` (or `apply`) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Everything in the write is durable.
    Applied,
    /// The incoming event key is already recorded or parked: nothing changed.
    Duplicate,
    /// A version is not the expected one: re-read and decide again.
    VersionConflict,
}

/// An event that arrived before the payment it refers to, kept in the ledger
/// until that payment arrives (DESIGN §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedEvent {
    pub event: PaymentEvent,
    pub notification_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub parked_at: OffsetDateTime,
    /// Set when the payment arrived and this event contradicted it: it stays
    /// here, unapplied, for `reconcile` and an operator.
    pub conflict: Option<String>,
}

impl ParkedEvent {
    /// Parked for longer than `alert_secs` at `now`: its payment is overdue.
    pub fn is_overdue(&self, now: OffsetDateTime, alert_secs: u64) -> bool {
        self.parked_at < now - time::Duration::seconds(alert_secs as i64)
    }
}

/// Parked events read at most for one report, gauge or check.
pub const PARKED_SCAN_LIMIT: usize = 10_000;

/// How many parked events need a person: waiting longer than the alert
/// bound, and contradicting the payment that arrived.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParkedCounts {
    pub overdue: usize,
    pub conflicted: usize,
}

impl ParkedCounts {
    /// The counts of `parked` at `now`.
    pub fn of(parked: &[ParkedEntry], now: OffsetDateTime, alert_secs: u64) -> Self {
        Self {
            overdue: parked
                .iter()
                .filter(|p| p.parked.is_overdue(now, alert_secs))
                .count(),
            conflicted: parked
                .iter()
                .filter(|p| p.parked.conflict.is_some())
                .count(),
        }
    }
}

/// What the ledger holds under one payment key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentEntry {
    /// The payment; `None` before the payment itself has arrived.
    pub state: Option<PaymentState>,
    /// Guards every write under this key; 0 when nothing is stored.
    pub version: u64,
    /// Events waiting for the payment (and ones that conflicted with it).
    pub parked: Vec<ParkedEvent>,
    /// This key is a pre-authorization completion's own id: its events
    /// belong to that payment.
    pub alias_of: Option<PaymentKey>,
}

/// What [`Ledger::load_to_apply`] read: the entry under a payment key and
/// whether the event about to be applied is already recorded or parked there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    pub entry: PaymentEntry,
    /// The event key is recorded or parked under the key. Never wrongly
    /// true: a recorded or parked key is never removed (an unparked event is
    /// recorded).
    pub seen: bool,
}

/// How recent a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Every write acknowledged before the read began is in it.
    Latest,
    /// It may miss the most recent writes (a replica that lags; on DynamoDB
    /// an eventually consistent read, half the read units). For reads that
    /// lead to a write conditioned on the version read, which refuses a
    /// write planned on a stale entry.
    MayLag,
}

/// One event recorded by a write.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    pub event: PaymentEvent,
    pub notification_id: String,
    /// The payment's status after this event, when it changed it.
    pub status_after: Option<PaymentStatus>,
    /// Where the event was parked, when it was.
    pub unparked_from: Option<PaymentKey>,
}

/// A completion's id made an alias of the payment, in the same write.
#[derive(Debug, Clone)]
pub struct AliasWrite {
    pub key: PaymentKey,
    pub expected_version: u64,
}

/// One atomic change under one payment key (and the alias keys it creates).
#[derive(Debug, Clone)]
pub struct LedgerWrite {
    pub key: PaymentKey,
    pub expected_version: u64,
    /// The incoming notification's event: recorded (with its status) or parked.
    pub incoming: Incoming,
    /// The new state, when it changes.
    pub state: Option<PaymentState>,
    /// Parked events applied in this write, in order, after the incoming one.
    pub unparked: Vec<RecordedEvent>,
    /// Parked events (under `key` or an alias key) that contradict the
    /// payment: kept parked, with the reason.
    pub conflicts: Vec<ParkedEntry>,
    pub aliases: Vec<AliasWrite>,
}

impl LedgerWrite {
    /// Whether this write raises the version under `key`: every write does,
    /// except one that only records the incoming event.
    pub fn bumps_version(&self) -> bool {
        self.state.is_some()
            || matches!(self.incoming, Incoming::Park(_))
            || !self.unparked.is_empty()
            || !self.conflicts.is_empty()
            || !self.aliases.is_empty()
    }
}

/// What happens to the incoming event.
#[derive(Debug, Clone)]
pub enum Incoming {
    Record(RecordedEvent),
    Park(ParkedEvent),
    /// No incoming event: the write applies events still parked for a
    /// payment whose last write moved as many as one write takes
    /// ([`MAX_MOVES_PER_WRITE`]).
    Nothing,
}

impl Incoming {
    /// The incoming event, if there is one.
    pub fn event(&self) -> Option<&PaymentEvent> {
        match self {
            Self::Record(r) => Some(&r.event),
            Self::Park(p) => Some(&p.event),
            Self::Nothing => None,
        }
    }
}

/// The most parked events one ledger write moves (unparks, or keeps parked
/// with a conflict) plus the completion aliases it writes. DynamoDB takes
/// 100 items in a transaction (the payment's item, an overflow item and
/// one per event moved or alias written) and 400 KB in the overflow item
/// that holds the records of one write; the rest of a payment's parked
/// events apply in the writes that follow.
pub const MAX_MOVES_PER_WRITE: usize = 64;

/// One recorded event of a payment, for `txn get`.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    pub event_key: String,
    pub notification_id: String,
    pub kind: String,
    pub outcome: String,
    pub amount_minor: u64,
    pub currency: String,
    /// The payment's status after this event, when it changed it.
    pub status_after: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
    /// The full event as recorded, for `reconcile`.
    #[serde(skip)]
    pub event: Option<PaymentEvent>,
}

/// A parked event with its payment key, as listed for reports.
#[derive(Debug, Clone, Serialize)]
pub struct ParkedEntry {
    pub payment_key: PaymentKey,
    #[serde(flatten)]
    pub parked: ParkedEvent,
}

/// A question paynotify owes a PSP about one transaction whose result is
/// late (UnionPay's status query), kept in the ledger so that any worker
/// may ask it and only one does at a time: a worker claims a due watch by
/// writing it with the next version and a `due_at` in the near future (a
/// lease), asks, and writes the answer with the version after that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// `{source}#{merchant}#{target}`: one watch per transaction.
    pub id: String,
    pub source: String,
    pub merchant: String,
    pub target: crate::scheme::unionpay::QueryTarget,
    /// UnionPay's id of the transaction, when a notification named it: an
    /// answer about the order that names none (a failure) is about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_id: Option<String>,
    /// Why it is asked: `expected` (a payment the merchant started),
    /// `in_process` (UnionPay said 03/04/05), `parked` (a refund or void
    /// waits for it), `settlement` (in the settlement file, not the ledger).
    pub reason: String,
    /// Since when its schedule counts.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// Queries made so far.
    pub attempts: u32,
    /// Queries in a row that got no answer (network, archive or ledger
    /// failures): retried with a backoff, without using a step.
    #[serde(default)]
    pub failures: u32,
    /// When it is next due; `None` once finished.
    #[serde(with = "time::serde::rfc3339::option")]
    pub due_at: Option<OffsetDateTime>,
    /// The last answer, in words.
    pub last_answer: Option<String>,
    /// The final answer, once there is one (or the schedule ran out).
    pub finished: Option<String>,
    /// Guards every write; the first write has version 1.
    pub version: u64,
}

impl Watch {
    /// The id of the watch of `target` of `merchant` at `source`.
    pub fn id_for(
        source: &str,
        merchant: &str,
        target: &crate::scheme::unionpay::QueryTarget,
    ) -> String {
        use crate::scheme::unionpay::QueryTarget;
        match target {
            QueryTarget::Order { order_id, txn_time } => {
                format!("{source}#{merchant}#order:{order_id}@{txn_time}")
            }
            QueryTarget::QueryId { query_id } => format!("{source}#{merchant}#query:{query_id}"),
        }
    }
}

/// Watches read at most for one pass of the scheduler or one listing.
pub const WATCH_SCAN_LIMIT: usize = 1_000;

/// The payment ledger.
///
/// # Contract
/// - `write` is atomic: all of it or nothing. It is refused as `Duplicate`
///   when the incoming event key is already recorded (an incoming record) or
///   parked (an incoming park) under `key` (checked first; a caller that
///   loaded the entry sees the other kind in it, guarded by the version), and as `VersionConflict` unless the version stored
///   under `key` (0 when nothing is) and under each alias key equals the
///   expected one. Every write raises the version under `key` by one, except
///   one that only records an event; an alias key's version is raised too.
/// - A parked event is stored under `key` until a write names it in
///   `unparked` (recorded as an event, removed from the parked ones) or in
///   `conflicts` (kept parked with the reason). A write that names an event
///   no longer parked there (planned on a view of the parked events older
///   than the version it read) is refused as `VersionConflict`.
/// - `load` returns the state, version, parked events and alias of a key as
///   of one point in time.
/// - `history` lists a payment's recorded events in the order they were applied.
/// - `contains_event` is true once an event key is recorded or parked.
/// - `load_to_apply` is `load` and `contains_event` for one event; with
///   [`Freshness::MayLag`] its entry may be older than the latest write (a
///   version conflict then refuses any write planned on it) and `seen` may
///   be false for an event recorded by one of the latest writes; with
///   [`Freshness::Latest`] it is as fresh as `load`.
/// - `parked_before` lists parked events parked before `t` (conflicted ones
///   included), oldest first, at most `limit`.
/// - `put_watch` stores a watch when the version stored under its id is
///   `watch.version - 1` (none stored counts as 0), else it is a
///   `VersionConflict` and nothing changes; `get_watch` reads one back;
///   `due_watches` lists unfinished watches due at or before `t`, soonest
///   first, at most `limit`.
/// - `events_between` lists the recorded events of `source` whose PSP time
///   lies in `[from, to)`, oldest first (events without a PSP time are not
///   listed).
#[async_trait]
pub trait Ledger: Send + Sync {
    async fn load(&self, key: &PaymentKey) -> Result<PaymentEntry, LedgerError>;
    async fn write(&self, write: &LedgerWrite) -> Result<ApplyOutcome, LedgerError>;
    async fn history(&self, key: &PaymentKey) -> Result<Vec<EventRecord>, LedgerError>;
    /// Whether the event key is already recorded (or parked) for this payment.
    async fn contains_event(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
    ) -> Result<bool, LedgerError>;
    async fn parked_before(
        &self,
        t: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<ParkedEntry>, LedgerError>;
    async fn put_watch(&self, watch: &Watch) -> Result<ApplyOutcome, LedgerError>;
    async fn get_watch(&self, id: &str) -> Result<Option<Watch>, LedgerError>;
    async fn due_watches(&self, t: OffsetDateTime, limit: usize)
        -> Result<Vec<Watch>, LedgerError>;
    async fn events_between(
        &self,
        source: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<EventRecord>, LedgerError>;
    /// Why this store can no longer work in this process (a writer thread
    /// that ended), if so: readiness fails and the process stops.
    fn fatal(&self) -> Option<String> {
        None
    }

    /// What a worker reads before applying `event_key` under `key`: one
    /// read where the store can (two here).
    async fn load_to_apply(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
        _freshness: Freshness,
    ) -> Result<Loaded, LedgerError> {
        let entry = self.load(key).await?;
        let seen = self.contains_event(key, event_key).await?;
        Ok(Loaded { entry, seen })
    }

    /// The payment's state, if it has arrived.
    async fn get_payment(&self, key: &PaymentKey) -> Result<Option<PaymentState>, LedgerError> {
        Ok(self.load(key).await?.state)
    }

    /// Records `event` and, when given, stores `new_state` (whose version
    /// must be `expected_version + 1`): a write with nothing parked.
    async fn apply(
        &self,
        event: &PaymentEvent,
        notification_id: &str,
        new_state: Option<&PaymentState>,
        expected_version: u64,
    ) -> Result<ApplyOutcome, LedgerError> {
        self.write(&LedgerWrite {
            key: event.payment_key.clone(),
            expected_version,
            incoming: Incoming::Record(RecordedEvent {
                event: event.clone(),
                notification_id: notification_id.to_owned(),
                status_after: new_state.map(|s| s.status),
                unparked_from: None,
            }),
            state: new_state.cloned(),
            unparked: Vec::new(),
            conflicts: Vec::new(),
            aliases: Vec::new(),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// Reads `depths` in turn (the last one forever), counting the reads.
    async fn drained(depths: &[u64], timeout: Duration) -> (Result<bool, QueueError>, usize) {
        let reads = Cell::new(0);
        let out = zero_twice(
            || {
                let i = reads.get();
                reads.set(i + 1);
                let d = depths[i.min(depths.len() - 1)];
                async move { Ok(d) }
            },
            timeout,
            Duration::from_millis(1),
        )
        .await;
        (out, reads.get())
    }

    #[tokio::test]
    async fn a_lone_zero_between_messages_is_not_drained() {
        // The 0 read while a message changed from in flight to visible.
        let (out, reads) = drained(&[1, 0, 1, 1, 0, 0], Duration::from_secs(10)).await;
        assert!(out.unwrap());
        assert_eq!(reads, 6);
    }

    #[tokio::test]
    async fn a_queue_that_never_empties_times_out() {
        let (out, reads) = drained(&[3, 0, 2], Duration::from_millis(30)).await;
        assert!(!out.unwrap());
        assert!(reads >= 3);
    }

    #[tokio::test]
    async fn a_failed_read_is_the_queues_error() {
        let out = zero_twice(
            || async { Err(QueueError::Unavailable("down".into())) },
            Duration::from_secs(1),
            Duration::from_millis(1),
        );
        assert!(matches!(out.await, Err(QueueError::Unavailable(_))));
    }
}
