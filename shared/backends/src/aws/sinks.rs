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
use super::line::{line_attributes, line_dedup, line_group};
use crate::config::{EndpointConfig, SinkConfig, SinkKind};
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
    /// Each sink, and the webhook endpoint it stands for: an endpoint's
    /// events go to the webhook line's queue (`backend.aws.webhooks_queue`).
    sinks: Vec<(SinkConfig, Option<String>)>,
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
    fifo: Option<(String, String)>,
    /// The webhook endpoint it goes to, through the webhook line.
    endpoint: Option<&'a str>,
}

impl Sinks {
    pub fn new(clients: &super::Clients, sinks: &[SinkConfig]) -> Self {
        Self {
            sqs: clients.sqs.clone(),
            sns: clients.sns.clone(),
            eventbridge: clients.eventbridge.clone(),
            sinks: sinks.iter().map(|s| (s.clone(), None)).collect(),
        }
    }

    /// Adds the webhook `endpoints`: each event one wants goes to the
    /// webhook line's queue at `line_url` once per endpoint, in a message
    /// group of its own per payment and endpoint.
    #[must_use]
    pub fn with_endpoints(mut self, endpoints: &[EndpointConfig], line_url: &str) -> Self {
        for e in endpoints {
            let sink = SinkConfig {
                name: format!("webhook:{}", e.name),
                kind: SinkKind::Sqs,
                target: line_url.to_owned(),
                event_types: e.event_types.clone(),
                sources: e.sources.clone(),
                merchants: e.merchants.clone(),
            };
            self.sinks.push((sink, Some(e.name.clone())));
        }
        self
    }

    /// Sends the events of consecutive stream records (`records[i]` is
    /// the i-th record's, in order) to every sink that wants them, each
    /// payment's in order: a request carries at most one event of a
    /// payment, and a payment's next event goes only after the request
    /// that carried its last one succeeded. Requests carry up to ten
    /// payments' events, from as many records: on a busy stream a tenth of
    /// the requests of one per record.
    ///
    /// What was sent, and the index of the first record whose events were
    /// not all sent, with why. Every record before it was sent whole; a
    /// record after it may have been sent too (a new invocation starting
    /// from it sends such events again, with the same ids).
    pub async fn send(&self, records: &[Vec<OutgoingEvent>]) -> Sent {
        let mut sent = Sent::default();
        for (sink, endpoint) in &self.sinks {
            let limit = sent.failed.as_ref().map_or(records.len(), |(at, _)| *at);
            let (n, requests, failed) = self
                .to_sink(sink, endpoint.as_deref(), &records[..limit])
                .await;
            sent.messages += n;
            sent.requests += requests;
            if let Some((at, e)) = failed {
                if sent.failed.as_ref().is_none_or(|(before, _)| at < *before) {
                    sent.failed = Some((at, e));
                }
            }
        }
        sent
    }

    /// [`Self::send`] to one sink: messages, requests, the first record
    /// not sent whole.
    async fn to_sink(
        &self,
        sink: &SinkConfig,
        endpoint: Option<&str>,
        records: &[Vec<OutgoingEvent>],
    ) -> (usize, usize, Option<(usize, SinkError)>) {
        let fail = |why: String| SinkError {
            sink: sink.name.clone(),
            why,
        };
        // Each payment's line of wanted events, in record order.
        let mut lines: Vec<std::collections::VecDeque<(usize, &OutgoingEvent)>> = Vec::new();
        let mut line_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (i, events) in records.iter().enumerate() {
            for e in events {
                if !sink.wants(e.event_type, &e.payment.source, &e.payment.merchant) {
                    continue;
                }
                let l = *line_of.entry(e.payment.key.as_str()).or_insert_with(|| {
                    lines.push(std::collections::VecDeque::new());
                    lines.len() - 1
                });
                lines[l].push_back((i, e));
            }
        }
        let (mut messages, mut requests) = (0, 0);
        let mut failed: Option<(usize, SinkError)> = None;
        loop {
            let limit = failed.as_ref().map_or(usize::MAX, |(at, _)| *at);
            // The earliest heads first; nothing at or past a failed record.
            let mut heads: Vec<(usize, usize)> = lines
                .iter()
                .enumerate()
                .filter_map(|(l, line)| line.front().map(|&(i, _)| (i, l)))
                .filter(|&(i, _)| i < limit)
                .collect();
            if heads.is_empty() {
                return (messages, requests, failed);
            }
            heads.sort_unstable();
            heads.truncate(BATCH);
            let entries = heads
                .iter()
                .enumerate()
                .map(|(slot, &(_, l))| {
                    let e = lines[l][0].1;
                    Ok(Entry {
                        id: slot.to_string(),
                        event: e,
                        body: serde_json::to_string(e).map_err(|err| err.to_string())?,
                        fifo: match endpoint {
                            Some(name) => {
                                Some((line_group(name, &e.payment.key), line_dedup(name, &e.id)))
                            }
                            None => sink
                                .ordered()
                                .then(|| (message_group(&e.payment.key), e.id.clone())),
                        },
                        endpoint,
                    })
                })
                .collect::<Result<Vec<_>, String>>();
            requests += 1;
            let answer = match entries {
                Ok(entries) => match sink.kind {
                    SinkKind::Sqs => self.to_queue(&sink.target, entries).await,
                    SinkKind::Sns => self.to_topic(&sink.target, entries).await,
                    SinkKind::Eventbridge => self.to_bus(&sink.target, entries).await,
                },
                Err(e) => Err(e),
            };
            let refused: Vec<(usize, String)> = match answer {
                // A refusal naming no entry of ours: take none as sent.
                Ok(refused) if refused.iter().any(|(slot, _)| *slot >= heads.len()) => {
                    let why = refused[0].1.clone();
                    (0..heads.len()).map(|slot| (slot, why.clone())).collect()
                }
                Ok(refused) => refused,
                Err(why) => (0..heads.len()).map(|slot| (slot, why.clone())).collect(),
            };
            for (slot, &(i, l)) in heads.iter().enumerate() {
                match refused.iter().find(|(s, _)| *s == slot) {
                    None => {
                        lines[l].pop_front();
                        messages += 1;
                    }
                    Some((_, why)) => {
                        // The payment's later events wait behind this one.
                        lines[l].clear();
                        if failed.as_ref().is_none_or(|(at, _)| i < *at) {
                            failed = Some((i, fail(why.clone())));
                        }
                    }
                }
            }
        }
    }

    /// `SendMessageBatch`; the entries refused (their place in the batch,
    /// and why).
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
                .message_attributes("event_type", text(e.event.event_type.as_str())?);
            match e.endpoint {
                Some(name) => {
                    for (k, v) in line_attributes(name, &e.event.payment.key, &e.event.id)? {
                        entry = entry.message_attributes(k, v);
                    }
                }
                None => entry = entry.message_attributes("event_id", text(&e.event.id)?),
            }
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
        Ok(out
            .failed()
            .iter()
            .map(|f| (slot(f.id()), refusal(f.code(), f.message())))
            .collect())
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
        Ok(out
            .failed()
            .iter()
            .map(|f| (slot(f.id()), refusal(f.code(), f.message())))
            .collect())
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
        // Answers are in the entries' order; an entry without one was
        // not taken either.
        let answers = out.entries();
        Ok((0..n)
            .filter_map(|slot| match answers.get(slot) {
                Some(a) => a
                    .error_code()
                    .map(|code| (slot, refusal(code, a.error_message()))),
                None => Some((slot, "PutEvents gave no answer for it".to_owned())),
            })
            .collect())
    }
}

/// An entry's place in its batch, from the id it was sent with
/// (`usize::MAX` for an id this code did not send: every entry is then
/// taken as refused).
fn slot(id: &str) -> usize {
    id.parse().unwrap_or(usize::MAX)
}

fn refusal(code: &str, message: Option<&str>) -> String {
    format!("refused: {code} {}", message.unwrap_or_default())
}

/// The entries of a batch refused: their places, and why.
type Refused = Vec<(usize, String)>;

/// What [`Sinks::send`] did.
#[derive(Debug, Default)]
pub struct Sent {
    pub messages: usize,
    pub requests: usize,
    /// The first record not sent whole, and why.
    pub failed: Option<(usize, SinkError)>,
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
