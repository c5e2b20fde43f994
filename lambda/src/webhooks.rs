//! The webhooks handler: a batch of the webhook line's messages (an SQS
//! FIFO event source with `ReportBatchItemFailures`) → the same sender as
//! the workers' processes ([`LineSender::work_batch`]): each event signed
//! and posted to its endpoint, a payment's in order, failed attempts
//! counted and retried on the schedule, spent ones held
//! (docs/events.md#webhooks-on-aws).
//!
//! Lambda deletes the records the response does not name, so the sender
//! deletes nothing: it names each record that must come back. A record
//! whose attempt failed was made invisible until its next try
//! (`ChangeMessageVisibility`) before it is named; the records behind it
//! in its message group are made visible again and named too, so the
//! queue hands the group out again from the failed one, in order. A group
//! is not started on when the invocation's deadline is near: it comes back
//! whole for the next invocation.
//!
//! A function has no loop of its own: the endpoints' status (disabled,
//! failing for too long) is read with a batch when it was not read in the
//! last few seconds.

use std::time::{Duration, Instant, SystemTime};

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use paynotify_deliver::line::LineSender;
use paynotify_shared::config::Config;
use paynotify_shared::metered;
use paynotify_shared::ports::{LineItem, LineMessage, Receipt};
use serde::Deserialize;
use tracing::error;

/// Why an invocation could not be handled at all: Lambda hands the batch
/// in again (after the queue's visibility timeout).
#[derive(Debug, thiserror::Error)]
pub enum WebhooksError {
    #[error("the event is not a batch of SQS records: {0}")]
    Unexpected(String),
    #[error("an SQS record without {0}")]
    IncompleteRecord(&'static str),
}

impl From<WebhooksError> for lambda_runtime::Diagnostic {
    fn from(e: WebhooksError) -> Self {
        let kind = match e {
            WebhooksError::Unexpected(_) => "UnexpectedEvent",
            WebhooksError::IncompleteRecord(_) => "IncompleteRecord",
        };
        Self {
            error_type: kind.to_owned(),
            error_message: e.to_string(),
        }
    }
}

/// The sender of one execution environment.
pub struct Webhooks {
    sender: LineSender,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").finish_non_exhaustive()
    }
}

impl Webhooks {
    /// Opens the webhook line and sets up every configured endpoint (its
    /// secrets read now).
    ///
    /// # Errors
    /// No endpoint configured (the function would hold every event for
    /// want of one), a backend without a webhook line, an endpoint that
    /// cannot be set up, or a retry schedule longer than the line keeps a
    /// message.
    pub async fn from_config(config: &Config) -> anyhow::Result<Self> {
        if config.deliveries.endpoints.is_empty() {
            anyhow::bail!(
                "no [[deliveries.endpoints]] in the configuration: the webhooks function has \
                 nothing to post to (scripts/package_lambda.sh packs PAYNOTIFY_EVENTS_CONFIG)"
            );
        }
        let (backends, metrics) = metered::build(&crate::backend_config(config)).await?;
        let Some(line) = backends.webhooks.clone() else {
            anyhow::bail!("the configured backend has no webhook line (backend.kind = \"aws\")");
        };
        let sender = LineSender::new(
            &config.deliveries,
            line,
            backends.secrets.as_deref(),
            metrics,
        )
        .await?
        .for_event_source();
        Ok(Self { sender })
    }

    /// Handles an invocation whose deadline is `deadline_ms` (milliseconds
    /// since the epoch, as Lambda's context gives it).
    ///
    /// # Errors
    /// [`WebhooksError`]: the invocation fails and the whole batch comes
    /// back.
    pub async fn handle(
        &self,
        event: serde_json::Value,
        deadline_ms: Option<u64>,
    ) -> Result<serde_json::Value, WebhooksError> {
        let batch =
            SqsEvent::deserialize(&event).map_err(|e| WebhooksError::Unexpected(e.to_string()))?;
        let until = deadline_ms.map(instant_of);
        let response = self.handle_sqs(batch, until).await?;
        Ok(serde_json::to_value(response).expect("a response serialises"))
    }

    /// Sends one batch; the response names the records that must come back.
    ///
    /// # Errors
    /// A record without its message id or receipt handle (never sent by
    /// Lambda): the whole batch comes back.
    pub async fn handle_sqs(
        &self,
        event: SqsEvent,
        until: Option<Instant>,
    ) -> Result<SqsBatchResponse, WebhooksError> {
        let mut ids = std::collections::HashMap::new();
        let mut messages = Vec::new();
        for record in event.records {
            let id = record
                .message_id
                .clone()
                .ok_or(WebhooksError::IncompleteRecord("messageId"))?;
            let receipt = Receipt(
                record
                    .receipt_handle
                    .clone()
                    .ok_or(WebhooksError::IncompleteRecord("receiptHandle"))?,
            );
            ids.insert(receipt.clone(), id.clone());
            match line_message(receipt, record) {
                Some(m) => messages.push(m),
                // Not put there by paynotify: nothing can deliver it, and
                // Lambda deletes it (as the workers' sender would).
                None => error!(message_id = %id,
                               "a message on the webhooks queue without endpoint and payment: removed"),
            }
        }
        if let Some(until) = until {
            let left = until.saturating_duration_since(Instant::now());
            let needs = self.sender.longest_post();
            if left < needs {
                // Every group of this batch goes back: said loudly, since a
                // function timeout this short would send nothing, ever.
                error!(
                    left_ms = left.as_millis() as u64,
                    needs_ms = needs.as_millis() as u64,
                    "the invocation has less time left than two of an endpoint's timeouts: its \
                     batch goes back (raise WebhooksTimeout above twice deliveries' timeout_ms)"
                );
            }
        }
        self.sender.refresh_status().await;
        let back = self.sender.work_batch(messages, until).await;
        let mut response = SqsBatchResponse::default();
        for receipt in back {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = ids.get(&receipt).cloned().unwrap_or_default();
            response.batch_item_failures.push(failure);
        }
        Ok(response)
    }
}

/// The line's message of an SQS record: its attributes as the events
/// function set them (a release has no `event_id`).
fn line_message(receipt: Receipt, record: SqsMessage) -> Option<LineMessage> {
    let attribute = |k: &str| {
        record
            .message_attributes
            .get(k)
            .and_then(|v| v.string_value.clone())
    };
    let (endpoint, payment_key) = (attribute("endpoint")?, attribute("payment_key")?);
    let item = match attribute("event_id") {
        Some(event_id) => LineItem::Event {
            event_id,
            body: record.body.unwrap_or_default(),
        },
        None => LineItem::Release,
    };
    Some(LineMessage {
        receipt,
        endpoint,
        payment_key,
        item,
    })
}

/// The monotonic instant of a deadline in milliseconds since the epoch.
fn instant_of(deadline_ms: u64) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}
