//! The queue port and the dead letters' port: the notification queue, and
//! the administration of what it dead-lettered.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use time::OffsetDateTime;

/// Queue failures.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue unavailable: {0}")]
    Unavailable(#[source] crate::Cause),
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
        return Err(QueueError::Unavailable(
            format!(
                "message of {} bytes exceeds the limit of {MAX_MESSAGE_BYTES} (SQS's)",
                body.len()
            )
            .into(),
        ));
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
/// - `dead_letter` moves the message to the DLQ with a reason, atomically
///   (what is there afterwards is [`DeadLetters`]' to administer).
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
    async fn stats(&self) -> Result<QueueStats, QueueError>;
    /// Messages not yet deleted or dead-lettered (visible or in flight).
    /// Not a snapshot: on SQS one whose visibility timeout ends during the
    /// read can be counted neither visible nor in flight, and a sharded
    /// local queue counts its shards one after another, missing a message
    /// a retry or a split sends to a shard already counted before deleting
    /// it from one not yet counted. A single 0 does not prove the queue
    /// empty (see [`wait_drained`]).
    async fn depth(&self) -> Result<u64, QueueError>;
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

/// The dead-letter queue's administration: what an operator lists,
/// redrives and purges (`paynotify dlq`, reconcile). Messages arrive here
/// through [`Queue::dead_letter`].
///
/// # Contract
/// - `redrive_with` moves dead letters (all, or those with `reason`) back to
///   the queue with a receive count of zero, reports each one moved to
///   `progress` and returns how many moved. `redrive_one` moves the one
///   dead letter whose id (as `dlq_list` gives it) is `id`: true when it
///   moved, false when there is none (moved before, or never there).
/// - `dlq_list` and `redrive_with` may not reach every dead letter on a
///   backend that cannot list without receiving (SQS: messages in flight
///   elsewhere are skipped); callers compare with `dlq_depth` and say so.
/// - `purge_dead_letters` deletes dead letters (all, or those with
///   `reason`) and returns them; their notifications stay in the archive.
/// - `dlq_depth` counts them (approximate on SQS).
/// - `put_dead_letter` adds a dead letter no delivery carried (an
///   operator's: a parked event set aside), listed under `id` with a
///   receive count of zero, its `body` a queue message's. Putting one whose
///   id is already a dead letter replaces it where the store can (SQLite);
///   SQS lists both, and redriving both applies the notification once
///   (the second is a duplicate).
#[async_trait]
pub trait DeadLetters: Send + Sync {
    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;
    async fn redrive_with(
        &self,
        reason: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<usize, QueueError>;
    async fn redrive_one(&self, id: &str) -> Result<bool, QueueError>;
    async fn purge_dead_letters(
        &self,
        reason: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<Vec<DeadLetter>, QueueError>;
    async fn dlq_depth(&self) -> Result<u64, QueueError>;
    async fn put_dead_letter(
        &self,
        id: &str,
        body: &[u8],
        reason: &str,
        error: &str,
    ) -> Result<(), QueueError>;
}

/// Conveniences over [`DeadLetters`], written once for every store.
#[async_trait]
pub trait DeadLettersExt: DeadLetters {
    /// As `redrive_with`, reporting to no one.
    async fn redrive(&self, reason: Option<&str>) -> Result<usize, QueueError> {
        self.redrive_with(reason, &|_| {}).await
    }
}

impl<D: DeadLetters + ?Sized> DeadLettersExt for D {}

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
