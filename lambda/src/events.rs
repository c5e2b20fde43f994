//! The events handler: a batch of the ledger table's stream records (a
//! DynamoDB Streams event source with `ReportBatchItemFailures`) → the
//! outgoing events of each write ([`LedgerStream::events`]) → every sink
//! that wants them ([`Sinks::send`]), and the webhook line's queue once per
//! webhook endpoint that wants them (the workers' sender posts them).
//!
//! Each payment's events are sent in the stream's order, up to ten
//! payments' to a request ([`Sinks::send`]), and the first record whose
//! events were not all sent is named in `batchItemFailures`: Lambda keeps
//! what came before it and starts again from it, and no later event of a
//! payment that failed was sent ahead of it. Events of records after it
//! that were sent are sent again with the same ids (a FIFO queue drops
//! them within five minutes; consumers deduplicate on the id). A record that can
//! never be read fails the same way, until the event source mapping's
//! retries run out and its on-failure destination gets the batch's
//! position for an operator (infra/events.yaml).

use paynotify_shared::backend::aws::sinks::Sinks;
use paynotify_shared::backend::aws::stream::{LedgerStream, StreamRecord};
use paynotify_shared::backend::aws::Clients;
use paynotify_shared::config::{BackendKind, Config};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{info, warn};

/// Why an invocation could not be handled at all: Lambda retries the batch.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("the event is not a batch of DynamoDB stream records: {0}")]
    Unexpected(String),
}

impl From<EventsError> for lambda_runtime::Diagnostic {
    fn from(e: EventsError) -> Self {
        Self {
            error_type: "UnexpectedEvent".to_owned(),
            error_message: e.to_string(),
        }
    }
}

#[derive(Deserialize)]
struct Batch {
    #[serde(rename = "Records")]
    records: Vec<StreamRecord>,
}

/// What one batch came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchReport {
    pub records: usize,
    pub events: usize,
    pub messages: usize,
    /// Requests to the sinks.
    pub requests: usize,
    /// The sequence number the batch stopped at, when a record failed.
    pub failed_at: Option<String>,
}

/// The handler: the ledger's stream reader and the sinks.
#[derive(Debug, Clone)]
pub struct Events {
    stream: LedgerStream,
    sinks: Sinks,
}

impl Events {
    /// The handler of `config`'s ledger table and sinks.
    ///
    /// # Errors
    /// A configuration whose backend is not AWS.
    pub async fn from_config(config: &Config) -> anyhow::Result<Self> {
        if config.backend.kind != BackendKind::Aws {
            anyhow::bail!("the events function reads the AWS ledger table's stream: backend.kind must be \"aws\"");
        }
        let deliveries = &config.deliveries;
        if deliveries.sinks.is_empty() && deliveries.endpoints.is_empty() {
            warn!("no deliveries.sinks or deliveries.endpoints are configured: the stream's events go nowhere");
        }
        let clients = Clients::new(&config.backend.aws).await;
        let mut sinks = Sinks::new(&clients, &deliveries.sinks);
        if !deliveries.endpoints.is_empty() {
            // The webhook line: the workers' sender posts from it.
            let name = &config.backend.aws.webhooks_queue;
            let url = clients
                .sqs
                .get_queue_url()
                .queue_name(name)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("the webhooks queue {name:?}: {e}"))?
                .queue_url
                .unwrap_or_default();
            sinks = sinks.with_endpoints(&deliveries.endpoints, &url);
        }
        Ok(Self {
            stream: LedgerStream::new(&clients, &config.backend.aws.table),
            sinks,
        })
    }

    /// Handles one invocation: its answer names the record to start again
    /// from, if one failed.
    ///
    /// # Errors
    /// An event that is not a batch of stream records (each with its
    /// sequence number): the whole batch is tried again.
    pub async fn handle(&self, event: Value) -> Result<Value, EventsError> {
        let report = self.handle_batch(event).await?;
        let failures: Vec<Value> = report
            .failed_at
            .iter()
            .map(|s| json!({ "itemIdentifier": s }))
            .collect();
        Ok(json!({ "batchItemFailures": failures }))
    }

    /// [`Self::handle`], with what it did.
    ///
    /// # Errors
    /// As [`Self::handle`].
    pub async fn handle_batch(&self, event: Value) -> Result<BatchReport, EventsError> {
        let batch: Batch =
            serde_json::from_value(event).map_err(|e| EventsError::Unexpected(e.to_string()))?;
        let mut report = BatchReport {
            records: batch.records.len(),
            ..BatchReport::default()
        };
        // Each record's events, up to the first that cannot be read.
        let mut events = Vec::with_capacity(batch.records.len());
        let mut unread = None;
        for record in &batch.records {
            match self.stream.events(record).await {
                Ok(e) => {
                    report.events += e.len();
                    events.push(e);
                }
                Err(e) => {
                    unread = Some((events.len(), e.to_string(), e.is_transient()));
                    break;
                }
            }
        }
        let sent = self.sinks.send(&events).await;
        report.messages = sent.messages;
        report.requests = sent.requests;
        let failed = match (unread, sent.failed) {
            (Some(u), Some((at, e))) if at < u.0 => Some((at, e.to_string(), true)),
            (Some(u), _) => Some(u),
            (None, Some((at, e))) => Some((at, e.to_string(), true)),
            (None, None) => None,
        };
        if let Some((at, error, transient)) = failed {
            let sequence = &batch.records[at].dynamodb.sequence_number;
            warn!(%error, transient, sequence = %sequence,
                  "stream record not delivered; the batch starts again from it");
            report.failed_at = Some(sequence.clone());
        }
        info!(
            records = report.records,
            events = report.events,
            messages = report.messages,
            requests = report.requests,
            failed = report.failed_at.is_some(),
            "stream batch"
        );
        Ok(report)
    }
}
