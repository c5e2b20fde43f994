//! The merchant's AWS destinations (`[[deliveries.sinks]]`): each outgoing
//! event read from the ledger's stream is sent to every sink whose filter
//! takes it, in the stream's order. A FIFO queue keeps each payment's
//! events in order (message group = payment key) and drops a resend within
//! its five-minute window (deduplication id = event id); beyond it, and on a
//! standard queue, a consumer deduplicates on the event's `id`.

use sha2::Digest as _;

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use aws_sdk_sns::types::PublishBatchRequestEntry;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};

use super::describe;
use crate::config::{SinkConfig, SinkKind};
use crate::outgoing::OutgoingEvent;

/// Entries per `SendMessageBatch`, `PublishBatch` and `PutEvents`.
const BATCH: usize = 10;
/// The longest message group id SQS and SNS take.
const MAX_GROUP_ID: usize = 128;
/// The `source` of paynotify's events on an EventBridge bus.
pub const EVENTBRIDGE_SOURCE: &str = "paynotify";

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
    sns: aws_sdk_sns::Client,
    eventbridge: aws_sdk_eventbridge::Client,
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

/// One event as a sink's batch entry takes it.
struct Entry<'a> {
    /// Its place in the batch.
    id: String,
    event: &'a OutgoingEvent,
    body: String,
    /// Message group and deduplication id, for a FIFO queue or topic.
    fifo: Option<(String, &'a str)>,
}

impl Sinks {
    pub fn new(clients: &super::Clients, sinks: &[SinkConfig]) -> Self {
        Self {
            sqs: clients.sqs.clone(),
            sns: clients.sns.clone(),
            eventbridge: clients.eventbridge.clone(),
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
            let fail = |why: String| SinkError {
                sink: sink.name.clone(),
                why,
            };
            let wanted: Vec<&OutgoingEvent> = events
                .iter()
                .filter(|e| sink.wants(e.event_type, &e.payment.source, &e.payment.merchant))
                .collect();
            for chunk in wanted.chunks(BATCH) {
                let entries = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, e)| {
                        Ok(Entry {
                            id: i.to_string(),
                            event: e,
                            body: serde_json::to_string(e).map_err(|err| fail(err.to_string()))?,
                            fifo: sink
                                .ordered()
                                .then(|| (message_group(&e.payment.key), e.id.as_str())),
                        })
                    })
                    .collect::<Result<Vec<_>, SinkError>>()?;
                let refused = match sink.kind {
                    SinkKind::Sqs => self.to_queue(&sink.target, entries).await,
                    SinkKind::Sns => self.to_topic(&sink.target, entries).await,
                    SinkKind::Eventbridge => self.to_bus(&sink.target, entries).await,
                }
                .map_err(fail)?;
                if let Some((n, code, message)) = refused {
                    return Err(fail(format!(
                        "{n} of {} messages refused, the first: {code} {message}",
                        chunk.len()
                    )));
                }
                sent += chunk.len();
            }
        }
        Ok(sent)
    }

    /// `SendMessageBatch`; how many entries were refused, with the first's
    /// code and message, when any was.
    async fn to_queue(&self, url: &str, entries: Vec<Entry<'_>>) -> Result<Refused, String> {
        let text = |v: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .map_err(|e| e.to_string())
        };
        let mut batch = Vec::with_capacity(entries.len());
        for e in entries {
            let mut entry = SendMessageBatchRequestEntry::builder()
                .id(e.id)
                .message_body(e.body)
                .message_attributes("event_type", text(e.event.event_type.as_str())?)
                .message_attributes("event_id", text(&e.event.id)?);
            if let Some((group, dedup)) = e.fifo {
                entry = entry
                    .message_group_id(group)
                    .message_deduplication_id(dedup);
            }
            batch.push(entry.build().map_err(|e| e.to_string())?);
        }
        let out = self
            .sqs
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(batch))
            .send()
            .await
            .map_err(|e| describe(&e))?;
        Ok(out.failed().first().map(|f| {
            (
                out.failed().len(),
                f.code().to_owned(),
                f.message().unwrap_or_default().to_owned(),
            )
        }))
    }

    /// `PublishBatch`, as [`Self::to_queue`].
    async fn to_topic(&self, topic: &str, entries: Vec<Entry<'_>>) -> Result<Refused, String> {
        use aws_sdk_sns::types::MessageAttributeValue;
        let text = |v: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .map_err(|e| e.to_string())
        };
        let mut batch = Vec::with_capacity(entries.len());
        for e in entries {
            let mut entry = PublishBatchRequestEntry::builder()
                .id(e.id)
                .message(e.body)
                .message_attributes("event_type", text(e.event.event_type.as_str())?)
                .message_attributes("event_id", text(&e.event.id)?);
            if let Some((group, dedup)) = e.fifo {
                entry = entry
                    .message_group_id(group)
                    .message_deduplication_id(dedup);
            }
            batch.push(entry.build().map_err(|e| e.to_string())?);
        }
        let out = self
            .sns
            .publish_batch()
            .topic_arn(topic)
            .set_publish_batch_request_entries(Some(batch))
            .send()
            .await
            .map_err(|e| describe(&e))?;
        Ok(out.failed().first().map(|f| {
            (
                out.failed().len(),
                f.code().to_owned(),
                f.message().unwrap_or_default().to_owned(),
            )
        }))
    }

    /// `PutEvents`, as [`Self::to_queue`]: it answers 200 with an error
    /// code on each entry it did not take.
    async fn to_bus(&self, bus: &str, entries: Vec<Entry<'_>>) -> Result<Refused, String> {
        let n = entries.len();
        let batch: Vec<PutEventsRequestEntry> = entries
            .into_iter()
            .map(|e| {
                PutEventsRequestEntry::builder()
                    .event_bus_name(bus)
                    .source(EVENTBRIDGE_SOURCE)
                    .detail_type(e.event.event_type.as_str())
                    .detail(e.body)
                    .build()
            })
            .collect();
        let out = self
            .eventbridge
            .put_events()
            .set_entries(Some(batch))
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let failed: Vec<_> = out
            .entries()
            .iter()
            .filter(|r| r.error_code().is_some())
            .collect();
        let count = failed.len().max(out.failed_entry_count().max(0) as usize);
        // Fewer answers than entries: those without one were not taken.
        let count = count.max(n.saturating_sub(out.entries().len()));
        Ok((count > 0).then(|| {
            let first = failed.first();
            (
                count,
                first
                    .and_then(|f| f.error_code())
                    .unwrap_or("unanswered")
                    .to_owned(),
                first
                    .and_then(|f| f.error_message())
                    .unwrap_or_default()
                    .to_owned(),
            )
        }))
    }
}

/// How many entries of a batch were refused, and the first's code and
/// message; `None` when every one was taken.
type Refused = Option<(usize, String, String)>;

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
