//! The webhook line (AWS backend): outgoing events to the merchant's
//! endpoints through one FIFO queue, and the deliveries held after every
//! attempt failed (docs/events.md#webhooks-on-aws).
//!
//! The events function puts each event once per endpoint that wants it on
//! the line, in the payment's order; a payment's messages to one endpoint
//! form one message group, so none is received while an earlier one is
//! still being worked on. A sender receives them, signs and posts each,
//! retries by making it invisible until its next attempt, and moves a
//! delivery whose attempts are spent, and every later one of its payment to
//! that endpoint, to the held items, which wait for `deliveries resend`.

use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::{Delivery, DeliveryFilter, EndpointStatus, LedgerError, QueueError, Receipt};

/// What a message of the line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineItem {
    /// Deliver this event (`body` is the exact JSON sent and signed).
    Event { event_id: String, body: String },
    /// Deliver the payment's held events, in order, then let the line go on.
    Release,
}

/// One message of the line, as received.
#[derive(Debug, Clone)]
pub struct LineMessage {
    pub receipt: Receipt,
    pub endpoint: String,
    pub payment_key: String,
    pub item: LineItem,
}

/// A payment's line to one endpoint as stored: its held deliveries, in
/// order, and the failed attempts of the delivery at its head.
#[derive(Debug, Clone, Default)]
pub struct LineState {
    pub held: Vec<Delivery>,
    /// The event at the head whose attempts failed, how many, and the last
    /// error.
    pub failing: Option<Failing>,
}

/// The failed attempts of the delivery at a line's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failing {
    pub event_id: String,
    pub attempts: u32,
    pub error: String,
}

/// The queue of outgoing events to the merchant's endpoints and the
/// deliveries it held.
///
/// # Contract
/// - `receive` returns up to `max` messages, waiting up to `wait` for the
///   first: a payment's messages to one endpoint come in the order they
///   were put on the line, and none while an earlier one was received and
///   is neither done nor visible again. A received message not `done`
///   comes again after the line's visibility timeout.
/// - `later` makes a received message come again after `delay` (at most
///   twelve hours); `done_many` removes received messages, with each one's
///   outcome in order (a stale receipt is done).
/// - `ready` says whether the line can be used, and how long a received
///   message stays invisible (the line's visibility timeout): a sender
///   starts no post that could end after it, or the message would be
///   handed out again while it still works on it.
/// - `release` puts a [`LineItem::Release`] at the end of the payment's
///   line to the endpoint.
/// - `line` reads the payment's line strongly: what `hold`, `unhold` and
///   `fail` wrote before it is in it.
/// - `hold` stores a delivery as held (status dead-lettered), keyed by its
///   record's `seq`: holding it again replaces it. `unhold` removes one.
/// - `fail` records a failed attempt of the head's delivery (`None`
///   forgets it).
/// - `list_held` lists held deliveries, oldest hold first.
/// - `endpoint_status` reads the endpoint's last success, failing time and
///   whether it is disabled, its held deliveries, and the line's depth (of
///   every endpoint: one queue); `succeeded`/`failed_at` record them.
#[async_trait]
pub trait WebhookLine: Send + Sync {
    /// Whether the line can be used (its queue exists), and its
    /// visibility timeout.
    async fn ready(&self) -> Result<Duration, QueueError>;
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<LineMessage>, QueueError>;
    async fn done_many(&self, receipts: &[Receipt]) -> Vec<Result<(), QueueError>>;
    async fn later(&self, receipt: &Receipt, delay: Duration) -> Result<(), QueueError>;
    async fn release(&self, endpoint: &str, payment_key: &str) -> Result<(), QueueError>;

    async fn line(&self, endpoint: &str, payment_key: &str) -> Result<LineState, LedgerError>;
    async fn hold(&self, delivery: &Delivery) -> Result<(), LedgerError>;
    async fn unhold(&self, endpoint: &str, payment_key: &str, seq: u64) -> Result<(), LedgerError>;
    async fn fail(
        &self,
        endpoint: &str,
        payment_key: &str,
        failing: Option<&Failing>,
    ) -> Result<(), LedgerError>;
    async fn list_held(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>, LedgerError>;

    async fn endpoint_status(&self, endpoint: &str) -> Result<EndpointStatus, LedgerError>;
    async fn succeeded(&self, endpoint: &str, at: OffsetDateTime) -> Result<(), LedgerError>;
    async fn failed_at(&self, endpoint: &str, at: OffsetDateTime) -> Result<(), LedgerError>;
    async fn set_disabled(&self, endpoint: &str, reason: Option<&str>) -> Result<(), LedgerError>;
}

/// The place of an outgoing event in its payment's order: its payment
/// version and its sequence within that version.
pub fn line_seq(version: u64, sequence: u32) -> u64 {
    (version << 20) | u64::from(sequence)
}
