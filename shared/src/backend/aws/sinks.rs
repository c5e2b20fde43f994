//! The merchant's AWS destinations (`[[deliveries.sinks]]`): each outgoing
//! event read from the ledger's stream is sent to every sink whose filter
//! takes it, in the stream's order. A FIFO queue keeps each payment's
//! events in order (message group = payment key) and drops a resend within
//! its five-minute window (deduplication id = event id); beyond it, and on a
//! standard queue, a consumer deduplicates on the event's `id`.

use sha2::Digest as _;

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};

use super::describe;
use crate::config::{SinkConfig, SinkKind};
use crate::outgoing::OutgoingEvent;

/// Entries per `SendMessageBatch`.
const SQS_BATCH: usize = 10;
/// The longest message group id SQS takes.
const MAX_GROUP_ID: usize = 128;

/// Why an event was not sent; the stream record is tried again.
#[derive(Debug, thiserror::Error)]
#[error("sink {sink:?}: {why}")]
pub struct SinkError {
    pub sink: String,
    pub why: String,
}

/// The configured sinks and their clients.
#[derive(Debug, Clone)]
pub struct Sinks {
    sqs: aws_sdk_sqs::Client,
    sinks: Vec<SinkConfig>,
}

/// The message group of a payment's events: its key, or the key's SHA-256
/// when SQS would refuse the key (longer than 128 characters, or holding a
/// character outside printable ASCII).
pub fn message_group(payment_key: &str) -> String {
    let fits = payment_key.len() <= MAX_GROUP_ID
        && !payment_key.is_empty()
        && payment_key.bytes().all(|b| b.is_ascii_graphic());
    if fits {
        payment_key.to_owned()
    } else {
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(payment_key)))
    }
}

impl Sinks {
    pub fn new(clients: &super::Clients, sinks: &[SinkConfig]) -> Self {
        Self {
            sqs: clients.sqs.clone(),
            sinks: sinks.to_vec(),
        }
    }

    /// Sends `events` (one write's, in order) to every sink that wants
    /// them; how many messages were sent.
    ///
    /// # Errors
    /// The first send that failed: the events before it were sent, and
    /// sending them again gives the same ids.
    pub async fn send(&self, events: &[OutgoingEvent]) -> Result<usize, SinkError> {
        let mut sent = 0;
        for sink in &self.sinks {
            let wanted: Vec<&OutgoingEvent> = events
                .iter()
                .filter(|e| sink.wants(e.event_type, &e.payment.source, &e.payment.merchant))
                .collect();
            for chunk in wanted.chunks(SQS_BATCH) {
                match sink.kind {
                    SinkKind::Sqs => self.to_queue(sink, chunk).await?,
                }
                sent += chunk.len();
            }
        }
        Ok(sent)
    }

    async fn to_queue(
        &self,
        sink: &SinkConfig,
        events: &[&OutgoingEvent],
    ) -> Result<(), SinkError> {
        let fail = |why: String| SinkError {
            sink: sink.name.clone(),
            why,
        };
        let fifo = sink.ordered();
        let mut entries = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            let body = serde_json::to_string(e).map_err(|err| fail(err.to_string()))?;
            let text = |v: &str| {
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(v)
                    .build()
                    .map_err(|err| fail(err.to_string()))
            };
            let mut entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body)
                .message_attributes("event_type", text(e.event_type.as_str())?)
                .message_attributes("event_id", text(&e.id)?);
            if fifo {
                entry = entry
                    .message_group_id(message_group(&e.payment.key))
                    .message_deduplication_id(&e.id);
            }
            entries.push(entry.build().map_err(|err| fail(err.to_string()))?);
        }
        let out = self
            .sqs
            .send_message_batch()
            .queue_url(&sink.target)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| fail(describe(&e)))?;
        if let Some(f) = out.failed().first() {
            return Err(fail(format!(
                "{} of {} messages refused, the first: {} {}",
                out.failed().len(),
                events.len(),
                f.code(),
                f.message().unwrap_or_default()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payment_key_sqs_would_refuse_as_a_group_is_hashed() {
        assert_eq!(message_group("unionpay#m1#order-1"), "unionpay#m1#order-1");
        let long = format!("stripe#acct#{}", "x".repeat(200));
        let hashed = message_group(&long);
        assert!(
            hashed.starts_with("sha256:") && hashed.len() == 71,
            "{hashed}"
        );
        assert_eq!(hashed, message_group(&long));
        assert!(message_group("adyen#m#订单 1").starts_with("sha256:"));
        assert!(message_group("adyen#m#a b").starts_with("sha256:"));
    }
}
