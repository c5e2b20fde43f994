//! The three ports (DESIGN §3): archive, queue and ledger. Each is a small
//! async trait with a contract, our own types in and out, and an error enum
//! that says whether a failure is transient.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use time::OffsetDateTime;

use crate::event::{EventKey, PaymentEvent, PaymentKey};
use crate::state::PaymentState;

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
/// - `get` returns exactly the bytes put.
/// - `list` returns every key under `prefix` whose hour partition lies in
///   `[from, to]` (both optional), sorted.
#[async_trait]
pub trait Archive: Send + Sync {
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), ArchiveError>;
    async fn get(&self, key: &str) -> Result<Vec<u8>, ArchiveError>;
    async fn list(
        &self,
        prefix: &str,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    ) -> Result<Vec<String>, ArchiveError>;
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
/// - `dead_letter` moves the message to the DLQ with a reason, atomically.
/// - `redrive` moves dead letters (all, or those with `reason`) back with a
///   receive count of zero and returns how many moved.
#[async_trait]
pub trait Queue: Send + Sync {
    async fn send(&self, body: &[u8]) -> Result<String, QueueError>;
    async fn send_batch(&self, bodies: &[Vec<u8>]) -> Result<Vec<String>, QueueError>;
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
    async fn redrive(&self, reason: Option<&str>) -> Result<usize, QueueError>;
    /// Messages not yet deleted or dead-lettered (visible or in flight).
    async fn depth(&self) -> Result<u64, QueueError>;
    /// The largest message body `send` accepts; larger envelopes travel as
    /// an archive pointer.
    fn max_message_bytes(&self) -> usize {
        usize::MAX
    }
}

/// Ledger failures (all transient: the message is retried).
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
}

/// What `apply` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The event is recorded (and the new state stored, if any).
    Applied,
    /// This event key is already recorded: nothing changed.
    Duplicate,
    /// The payment's version is not the expected one: re-read and decide again.
    VersionConflict,
}

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
}

/// The payment ledger.
///
/// # Contract
/// - `apply` records `event` and, when given, stores `new_state`, in one
///   atomic step, only if the event key is new for this payment (else
///   `Duplicate`, checked first) and the stored version equals
///   `expected_version` (0 for no payment yet; else `VersionConflict`).
/// - `history` lists a payment's recorded events in the order they were applied.
/// - `contains_event` is true once `apply` returned `Applied` for that event key.
#[async_trait]
pub trait Ledger: Send + Sync {
    async fn get_payment(&self, key: &PaymentKey) -> Result<Option<PaymentState>, LedgerError>;
    async fn apply(
        &self,
        event: &PaymentEvent,
        notification_id: &str,
        new_state: Option<&PaymentState>,
        expected_version: u64,
    ) -> Result<ApplyOutcome, LedgerError>;
    async fn history(&self, key: &PaymentKey) -> Result<Vec<EventRecord>, LedgerError>;
    /// Whether the event key is already recorded for this payment.
    async fn contains_event(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
    ) -> Result<bool, LedgerError>;
}
