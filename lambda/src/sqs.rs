//! The worker handler: an SQS event → [`process_batch`] → each record
//! settled as the server worker settles it, with one difference: Lambda
//! deletes every record the response does not name, so an acknowledged
//! record is left to it (no `DeleteMessage` of ours), and a record that must
//! come back (a retry, made invisible for its delay by
//! `ChangeMessageVisibility`, or one whose settling failed) is named in
//! `batchItemFailures`. Dead-lettered records, and retries moved to a fresh
//! delivery near the receive limit, are already off the queue.
//!
//! The same function answers an EventBridge scheduled event by checking the
//! parked events ([`check_parked`]) and asking UnionPay about late payments
//! ([`paynotify_worker::query::run_due`]): a Lambda has no background task to
//! do either between invocations.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use paynotify_shared::config::Config;
use paynotify_shared::metered;
use paynotify_shared::ports::{ParkedCounts, QueueMessage, Receipt};
use paynotify_worker::{
    acknowledged, check_parked, process_batch, settle, Disposition, Hooks, Settled, Stats,
    WorkerContext,
};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{warn, Instrument};

/// Why an event could not be handled at all. Lambda then retries the whole
/// batch (or the schedule's invocation); nothing is lost.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("an SQS record without {0}")]
    IncompleteRecord(&'static str),
    #[error("the event is neither an SQS batch nor a scheduled event: {0}")]
    Unexpected(String),
    #[error("reading the parked events: {0}")]
    Ledger(#[from] paynotify_shared::ports::LedgerError),
}

impl EventError {
    /// The name Lambda reports as the invocation's `errorType`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::IncompleteRecord(_) => "IncompleteRecord",
            Self::Unexpected(_) => "UnexpectedEvent",
            Self::Ledger(_) => "LedgerUnavailable",
        }
    }
}

impl From<EventError> for lambda_runtime::Diagnostic {
    fn from(e: EventError) -> Self {
        Self {
            error_type: e.kind().to_owned(),
            error_message: e.to_string(),
        }
    }
}

/// The worker of one execution environment.
#[derive(Clone)]
pub struct Worker {
    ctx: WorkerContext,
}

impl Worker {
    /// Opens the configured backends and loads every source's verifier;
    /// certificates from Secrets Manager are reloaded every
    /// `backend.aws.secrets_refresh_secs` while the environment runs.
    ///
    /// # Errors
    /// When the backends cannot be opened or a source's certificates
    /// cannot be read or do not chain.
    pub async fn from_config(config: &Config) -> anyhow::Result<Self> {
        let (backends, metrics) = metered::build(&crate::backend_config(config)).await?;
        let ctx = WorkerContext::build(
            config,
            &backends,
            Arc::new(Stats::default()),
            metrics,
            Hooks::default(),
        )
        .await?;
        ctx.spawn_refresh(config, &backends, &CancellationToken::new());
        Ok(Self::new(ctx))
    }

    /// The handler on `ctx`.
    pub fn new(ctx: WorkerContext) -> Self {
        Self { ctx }
    }

    /// The context it processes with (stats and metrics, for tests).
    pub fn context(&self) -> &WorkerContext {
        &self.ctx
    }

    /// Handles what the function is invoked with: an SQS batch (answered
    /// with its `batchItemFailures`) or an EventBridge scheduled event
    /// (answered with the parked counts).
    ///
    /// # Errors
    /// [`EventError`]: the invocation fails and Lambda retries it.
    pub async fn handle(&self, event: serde_json::Value) -> Result<serde_json::Value, EventError> {
        if event.get("Records").is_some() {
            let batch =
                SqsEvent::deserialize(&event).map_err(|e| EventError::Unexpected(e.to_string()))?;
            let response = self.handle_sqs(batch).await?;
            return Ok(serde_json::to_value(response).expect("a response serialises"));
        }
        if event.get("detail-type").and_then(|d| d.as_str()) == Some("Scheduled Event") {
            let ParkedCounts {
                overdue,
                conflicted,
            } = self.check_parked().await?;
            let mut queries = paynotify_worker::query::Pass::default();
            if self.ctx.gateways.any_auto() {
                queries = paynotify_worker::query::run_due(
                    &self.ctx.querier(),
                    OffsetDateTime::now_utc(),
                )
                .await?;
            }
            return Ok(serde_json::json!({
                "overdue": overdue,
                "conflicted": conflicted,
                "queries_asked": queries.asked,
                "queries_finished": queries.finished,
            }));
        }
        let keys: Vec<_> = event
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        Err(EventError::Unexpected(format!("keys {keys:?}")))
    }

    /// Processes and settles one SQS batch.
    ///
    /// # Errors
    /// A record without its message id or receipt handle (never sent by
    /// Lambda): the whole batch comes back.
    pub async fn handle_sqs(&self, event: SqsEvent) -> Result<SqsBatchResponse, EventError> {
        let messages = event
            .records
            .into_iter()
            .map(message_of)
            .collect::<Result<Vec<_>, _>>()?;
        let ctx = &self.ctx;
        let mut response = SqsBatchResponse::default();
        for processed in process_batch(ctx, messages).await {
            let comes_back = match processed.disposition {
                Disposition::Ack(kind) => {
                    acknowledged(ctx, &processed.source, kind);
                    false
                }
                _ => {
                    let span = processed.span.clone();
                    match settle(ctx, &processed).instrument(span.clone()).await {
                        Ok(Settled::Done) => false,
                        Ok(Settled::Delayed | Settled::Abandoned) => true,
                        Err(e) => {
                            span.in_scope(|| {
                                warn!(error = %e, "settling failed; the message will be redelivered")
                            });
                            true
                        }
                    }
                }
            };
            if comes_back {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = processed.message.id.clone();
                response.batch_item_failures.push(failure);
            }
        }
        Ok(response)
    }

    /// Reads the parked events and warns when some need a person, as the
    /// server worker does every `worker.parked_check_secs`.
    ///
    /// # Errors
    /// When the ledger cannot be read.
    pub async fn check_parked(&self) -> Result<ParkedCounts, EventError> {
        let alert_secs = self.ctx.config.parked_alert_secs;
        Ok(check_parked(self.ctx.ledger.as_ref(), alert_secs).await?)
    }
}

/// The queue message of an SQS record, with the receive count and first
/// receive time Lambda's poller asked for.
fn message_of(record: SqsMessage) -> Result<QueueMessage, EventError> {
    let attributes: &HashMap<String, String> = &record.attributes;
    let receive_count = attributes
        .get("ApproximateReceiveCount")
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    let first_received_at = attributes
        .get("ApproximateFirstReceiveTimestamp")
        .and_then(|t| t.parse::<i128>().ok())
        .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).ok());
    Ok(QueueMessage {
        id: record
            .message_id
            .ok_or(EventError::IncompleteRecord("messageId"))?,
        receipt: Receipt(
            record
                .receipt_handle
                .ok_or(EventError::IncompleteRecord("receiptHandle"))?,
        ),
        body: record.body.unwrap_or_default().into_bytes(),
        receive_count,
        first_received_at,
    })
}
