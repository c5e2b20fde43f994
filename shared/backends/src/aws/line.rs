//! The webhook line on AWS (`ports::WebhookLine`, docs/events.md): one SQS
//! FIFO queue, `backend.aws.webhooks_queue`, fed by the events function, and
//! the held deliveries in the ledger's table.
//!
//! A message is one outgoing event to one endpoint: its message group is
//! the endpoint and the payment ([`line_group`]), so SQS hands out a
//! payment's events to one endpoint one at a time and in order, and
//! different payments or endpoints in parallel; its deduplication id is the
//! endpoint and the event id ([`line_dedup`]). Its attributes name the
//! endpoint, the payment and the event; its body is the event's JSON.
//!
//! Items in the ledger's table, `pk = LINE#{endpoint}#{payment key}`:
//! `sk = HELD#{seq}` for each held delivery (with `gsi_due = held` and
//! `due_at`, the keys of the table's sparse `watches_due` index, so that
//! every held delivery is listed by one query of it), and `sk = FAILING`
//! for the failed attempts of the delivery at the line's head. One query of
//! the partition reads a line. An endpoint's figures are the item
//! `pk = ENDPOINT#{name}`, `sk = ENDPOINT`. None of these is a payment's
//! item: the stream's reader gives them no events.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use time::OffsetDateTime;

use super::ledger::WATCHES_INDEX;
use super::{cause, describe, Clients};
use crate::config::AwsConfig;
use crate::outgoing::EventType;
use crate::ports::{
    Cause, Delivery, DeliveryFilter, DeliveryStatus, EndpointStatus, Failing, LedgerError,
    LineItem, LineMessage, LineState, OutboxRecord, QueueError, Receipt, WebhookLine,
};
use crate::unix_ms;

const LINE: &str = "LINE#";
const HELD: &str = "HELD#";
const FAILING: &str = "FAILING";
const ENDPOINT: &str = "ENDPOINT";
/// The value of `gsi_due` that lists held deliveries in `watches_due`.
const HELD_PARTITION: &str = "held";
/// The longest visibility timeout SQS takes.
const MAX_LATER: Duration = Duration::from_secs(12 * 3600);

/// The message group of a payment's events to one endpoint (a digest: SQS
/// takes at most 128 printable characters).
pub fn line_group(endpoint: &str, payment_key: &str) -> String {
    let digest = sha2::Sha256::digest(format!("{endpoint}\n{payment_key}").as_bytes());
    format!("line:{}", hex::encode(digest))
}

/// The deduplication id of an event's message to one endpoint.
pub fn line_dedup(endpoint: &str, event_id: &str) -> String {
    hex::encode(sha2::Sha256::digest(
        format!("{endpoint}\n{event_id}").as_bytes(),
    ))
}

/// The message attributes of an event's message to `endpoint`.
pub fn line_attributes(
    endpoint: &str,
    payment_key: &str,
    event_id: &str,
) -> Result<HashMap<String, MessageAttributeValue>, String> {
    let text = |v: &str| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .map_err(|e| e.to_string())
    };
    Ok(HashMap::from([
        ("endpoint".to_owned(), text(endpoint)?),
        ("payment_key".to_owned(), text(payment_key)?),
        ("event_id".to_owned(), text(event_id)?),
    ]))
}

/// A held delivery as its item keeps it (the body beside it).
#[derive(Serialize, Deserialize)]
struct Held {
    endpoint: String,
    seq: u64,
    event_id: String,
    payment_key: String,
    event_type: EventType,
    source: String,
    merchant: String,
    #[serde(with = "time::serde::rfc3339")]
    recorded_at: OffsetDateTime,
    attempts: u32,
    last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    last_attempt_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    held_at: OffsetDateTime,
}

/// The webhook line: the queue and the table.
#[derive(Debug, Clone)]
pub struct SqsWebhookLine {
    sqs: aws_sdk_sqs::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    url: std::sync::Arc<tokio::sync::OnceCell<String>>,
    table: String,
    config: AwsConfig,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s<'a>(item: &'a HashMap<String, AttributeValue>, k: &str) -> Option<&'a str> {
    item.get(k).and_then(|v| v.as_s().ok()).map(String::as_str)
}

fn ledger_error<E, R>(e: aws_sdk_dynamodb::error::SdkError<E, R>) -> LedgerError
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    LedgerError::Unavailable(cause(e))
}

fn queue_error<E, R>(e: aws_sdk_sqs::error::SdkError<E, R>) -> QueueError
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    QueueError::Unavailable(cause(e))
}

fn invalid(why: String) -> LedgerError {
    LedgerError::Unavailable(why.into())
}

fn line_pk(endpoint: &str, payment_key: &str) -> String {
    format!("{LINE}{endpoint}#{payment_key}")
}

fn held_sk(seq: u64) -> String {
    format!("{HELD}{seq:020}")
}

fn ms_time(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn delivery_from(item: &HashMap<String, AttributeValue>) -> Result<Delivery, LedgerError> {
    let pk = get_s(item, "pk").unwrap_or_default();
    let held: Held = get_s(item, "held_json")
        .and_then(|j| serde_json::from_str(j).ok())
        .ok_or_else(|| invalid(format!("held delivery {pk:?} is invalid")))?;
    Ok(Delivery {
        endpoint: held.endpoint,
        record: OutboxRecord {
            seq: held.seq,
            event_id: held.event_id,
            payment_key: held.payment_key,
            event_type: held.event_type,
            source: held.source,
            merchant: held.merchant,
            recorded_at: held.recorded_at,
            body: get_s(item, "body").unwrap_or_default().to_owned(),
        },
        status: DeliveryStatus::DeadLettered,
        attempts: held.attempts,
        next_at: held.held_at,
        last_error: held.last_error,
        last_attempt_at: held.last_attempt_at,
        delivered_at: None,
    })
}

impl SqsWebhookLine {
    /// The line of `config.webhooks_queue`; its URL is looked up on first
    /// use (a process that never sends to an endpoint never asks).
    pub fn new(clients: &Clients, config: &AwsConfig) -> Self {
        Self {
            sqs: clients.sqs.clone(),
            dynamodb: clients.dynamodb.clone(),
            url: std::sync::Arc::new(tokio::sync::OnceCell::new()),
            table: config.table.clone(),
            config: config.clone(),
        }
    }

    async fn url(&self) -> Result<&str, QueueError> {
        self.url
            .get_or_try_init(|| async {
                self.sqs
                    .get_queue_url()
                    .queue_name(&self.config.webhooks_queue)
                    .send()
                    .await
                    .map(|out| out.queue_url.unwrap_or_default())
                    .map_err(|e| {
                        QueueError::Unavailable(Cause::with_source(
                            format!(
                                "webhooks queue {:?}: {} (paynotify aws init and infra/data.yaml create it)",
                                self.config.webhooks_queue,
                                describe(&e)
                            ),
                            e,
                        ))
                    })
            })
            .await
            .map(String::as_str)
    }

    async fn update_endpoint(
        &self,
        endpoint: &str,
        expression: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<(), LedgerError> {
        let mut update = self
            .dynamodb
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("{ENDPOINT}#{endpoint}")))
            .key("sk", s(ENDPOINT))
            .update_expression(expression);
        for (k, v) in values {
            update = update.expression_attribute_values(k, v);
        }
        update.send().await.map_err(ledger_error)?;
        Ok(())
    }
}

#[async_trait]
impl WebhookLine for SqsWebhookLine {
    async fn ready(&self) -> Result<Duration, QueueError> {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(self.url().await?)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .send()
            .await
            .map_err(queue_error)?;
        let secs = out
            .attributes
            .as_ref()
            .and_then(|a| a.get(&QueueAttributeName::VisibilityTimeout))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                QueueError::Unavailable(
                    format!(
                        "webhooks queue {:?}: no VisibilityTimeout in its attributes",
                        self.config.webhooks_queue
                    )
                    .into(),
                )
            })?;
        Ok(Duration::from_secs(secs))
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<LineMessage>, QueueError> {
        let wait = wait.min(Duration::from_secs(20));
        let out = self
            .sqs
            .receive_message()
            .queue_url(self.url().await?)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs() as i32)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .customize()
            .config_override(
                aws_sdk_sqs::config::Builder::default()
                    .timeout_config(super::timeouts(&self.config, wait)),
            )
            .send()
            .await
            .map_err(queue_error)?;
        let mut messages = Vec::new();
        for m in out.messages.unwrap_or_default() {
            let attribute = |k: &str| {
                m.message_attributes
                    .as_ref()
                    .and_then(|a| a.get(k))
                    .and_then(|v| v.string_value.clone())
            };
            let receipt = Receipt(m.receipt_handle.clone().unwrap_or_default());
            let (Some(endpoint), Some(payment_key)) =
                (attribute("endpoint"), attribute("payment_key"))
            else {
                // Not put there by paynotify: nothing can deliver it.
                tracing::error!(message_id = ?m.message_id, "a message on the webhooks queue without endpoint and payment: removed");
                if let Some(Err(e)) = self.done_many(&[receipt]).await.pop() {
                    return Err(e);
                }
                continue;
            };
            let item = match attribute("event_id") {
                Some(event_id) => LineItem::Event {
                    event_id,
                    body: m.body.clone().unwrap_or_default(),
                },
                None => LineItem::Release,
            };
            messages.push(LineMessage {
                receipt,
                endpoint,
                payment_key,
                item,
            });
        }
        Ok(messages)
    }

    async fn done_many(&self, receipts: &[Receipt]) -> Vec<Result<(), QueueError>> {
        let url = match self.url().await {
            Ok(url) => url,
            Err(e) => {
                let why = e.to_string();
                return receipts
                    .iter()
                    .map(|_| Err(QueueError::Unavailable(why.clone().into())))
                    .collect();
            }
        };
        let mut out = Vec::with_capacity(receipts.len());
        for chunk in receipts.chunks(10) {
            let handles = chunk.iter().map(|r| r.0.clone()).collect();
            out.extend(super::sqs_batches::delete_batch(&self.sqs, url, handles).await);
        }
        out
    }

    async fn later(&self, receipt: &Receipt, delay: Duration) -> Result<(), QueueError> {
        self.sqs
            .change_message_visibility()
            .queue_url(self.url().await?)
            .receipt_handle(&receipt.0)
            .visibility_timeout(delay.min(MAX_LATER).as_secs() as i32)
            .send()
            .await
            .map_err(queue_error)?;
        Ok(())
    }

    async fn release(&self, endpoint: &str, payment_key: &str) -> Result<(), QueueError> {
        let mut attributes = line_attributes(endpoint, payment_key, "")
            .map_err(|e| QueueError::Unavailable(e.into()))?;
        attributes.remove("event_id");
        self.sqs
            .send_message()
            .queue_url(self.url().await?)
            .message_body("release")
            .message_group_id(line_group(endpoint, payment_key))
            // A release is never a duplicate of an earlier one.
            .message_deduplication_id(ulid::Ulid::new().to_string())
            .set_message_attributes(Some(attributes))
            .send()
            .await
            .map_err(queue_error)?;
        Ok(())
    }

    async fn line(&self, endpoint: &str, payment_key: &str) -> Result<LineState, LedgerError> {
        let mut pages = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(line_pk(endpoint, payment_key)))
            .consistent_read(true)
            .into_paginator()
            .send();
        let mut state = LineState::default();
        while let Some(page) = pages.next().await {
            for item in page.map_err(ledger_error)?.items.unwrap_or_default() {
                match get_s(&item, "sk") {
                    Some(FAILING) => {
                        state.failing = Some(Failing {
                            event_id: get_s(&item, "event_id").unwrap_or_default().to_owned(),
                            attempts: item
                                .get("attempts")
                                .and_then(|v| v.as_n().ok())
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(0),
                            error: get_s(&item, "error").unwrap_or_default().to_owned(),
                        });
                    }
                    Some(sk) if sk.starts_with(HELD) => state.held.push(delivery_from(&item)?),
                    _ => {}
                }
            }
        }
        Ok(state)
    }

    async fn hold(&self, d: &Delivery) -> Result<(), LedgerError> {
        let r = &d.record;
        let held = Held {
            endpoint: d.endpoint.clone(),
            seq: r.seq,
            event_id: r.event_id.clone(),
            payment_key: r.payment_key.clone(),
            event_type: r.event_type,
            source: r.source.clone(),
            merchant: r.merchant.clone(),
            recorded_at: r.recorded_at,
            attempts: d.attempts,
            last_error: d.last_error.clone(),
            last_attempt_at: d.last_attempt_at,
            held_at: d.next_at,
        };
        let json = serde_json::to_string(&held).map_err(|e| invalid(e.to_string()))?;
        self.dynamodb
            .put_item()
            .table_name(&self.table)
            .item("pk", s(line_pk(&d.endpoint, &r.payment_key)))
            .item("sk", s(held_sk(r.seq)))
            .item("held_json", s(json))
            .item("body", s(r.body.clone()))
            .item("gsi_due", s(HELD_PARTITION))
            .item("due_at", n(unix_ms(d.next_at)))
            .send()
            .await
            .map_err(ledger_error)?;
        Ok(())
    }

    async fn unhold(&self, endpoint: &str, payment_key: &str, seq: u64) -> Result<(), LedgerError> {
        self.dynamodb
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(line_pk(endpoint, payment_key)))
            .key("sk", s(held_sk(seq)))
            .send()
            .await
            .map_err(ledger_error)?;
        Ok(())
    }

    async fn fail(
        &self,
        endpoint: &str,
        payment_key: &str,
        failing: Option<&Failing>,
    ) -> Result<(), LedgerError> {
        let pk = s(line_pk(endpoint, payment_key));
        match failing {
            Some(f) => {
                self.dynamodb
                    .put_item()
                    .table_name(&self.table)
                    .item("pk", pk)
                    .item("sk", s(FAILING))
                    .item("event_id", s(f.event_id.clone()))
                    .item("attempts", n(f.attempts))
                    .item("error", s(f.error.clone()))
                    .send()
                    .await
                    .map_err(ledger_error)?;
            }
            None => {
                self.dynamodb
                    .delete_item()
                    .table_name(&self.table)
                    .key("pk", pk)
                    .key("sk", s(FAILING))
                    .send()
                    .await
                    .map_err(ledger_error)?;
            }
        }
        Ok(())
    }

    async fn list_held(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>, LedgerError> {
        let mut pages = self
            .dynamodb
            .query()
            .table_name(&self.table)
            .index_name(WATCHES_INDEX)
            .key_condition_expression("gsi_due = :g")
            .expression_attribute_values(":g", s(HELD_PARTITION))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            for item in page.map_err(ledger_error)?.items.unwrap_or_default() {
                let d = delivery_from(&item)?;
                let wanted = filter.endpoint.as_ref().is_none_or(|e| *e == d.endpoint)
                    && filter
                        .payment_key
                        .as_ref()
                        .is_none_or(|p| *p == d.record.payment_key)
                    && filter
                        .event_id
                        .as_ref()
                        .is_none_or(|i| *i == d.record.event_id)
                    && filter.status.is_none_or(|s| s == d.status)
                    && filter.since.is_none_or(|t| d.record.recorded_at >= t);
                if wanted {
                    out.push(d);
                    if out.len() >= filter.limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn endpoint_status(&self, endpoint: &str) -> Result<EndpointStatus, LedgerError> {
        let item = self
            .dynamodb
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("{ENDPOINT}#{endpoint}")))
            .key("sk", s(ENDPOINT))
            .consistent_read(true)
            .send()
            .await
            .map_err(ledger_error)?
            .item
            .unwrap_or_default();
        let time = |k: &str| {
            item.get(k)
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse().ok())
                .map(ms_time)
        };
        let held = self
            .list_held(&DeliveryFilter {
                endpoint: Some(endpoint.to_owned()),
                limit: usize::MAX,
                ..DeliveryFilter::default()
            })
            .await?;
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(self.url().await.map_err(|e| match e {
                QueueError::Unavailable(c) => LedgerError::Unavailable(c),
                other => invalid(other.to_string()),
            })?)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(ledger_error)?
            .attributes
            .unwrap_or_default();
        let count = |k: QueueAttributeName| {
            attributes
                .get(&k)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(EndpointStatus {
            endpoint: endpoint.to_owned(),
            cursor: 0,
            last_success: time("last_success"),
            failing_since: time("failing_since"),
            disabled: get_s(&item, "disabled").map(str::to_owned),
            pending: count(QueueAttributeName::ApproximateNumberOfMessages)
                + count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            dead_lettered: held.len() as u64,
            oldest_pending: None,
        })
    }

    async fn succeeded(&self, endpoint: &str, at: OffsetDateTime) -> Result<(), LedgerError> {
        self.update_endpoint(
            endpoint,
            "SET last_success = :t REMOVE failing_since",
            vec![(":t", n(unix_ms(at)))],
        )
        .await
    }

    async fn failed_at(&self, endpoint: &str, at: OffsetDateTime) -> Result<(), LedgerError> {
        self.update_endpoint(
            endpoint,
            "SET failing_since = if_not_exists(failing_since, :t)",
            vec![(":t", n(unix_ms(at)))],
        )
        .await
    }

    async fn set_disabled(&self, endpoint: &str, reason: Option<&str>) -> Result<(), LedgerError> {
        match reason {
            Some(why) => {
                self.update_endpoint(
                    endpoint,
                    "SET disabled = :d",
                    vec![(":d", s(why.to_owned()))],
                )
                .await
            }
            None => {
                self.update_endpoint(endpoint, "REMOVE disabled, failing_since", Vec::new())
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_deduplication_ids_fit_sqs_and_keep_endpoints_apart() {
        let long = format!("stripe#acct#{}", "x".repeat(300));
        for (e, p) in [("shop", "unionpay#m1#o1"), ("shop", long.as_str())] {
            let g = line_group(e, p);
            assert!(
                g.len() <= 128 && g.bytes().all(|b| b.is_ascii_graphic()),
                "{g}"
            );
            assert!(line_dedup(e, "evt_1").len() <= 128);
        }
        assert_ne!(line_group("a", "p"), line_group("b", "p"));
        assert_ne!(line_dedup("a", "evt_1"), line_dedup("b", "evt_1"));
        // The separator cannot be forged by a name ending in the other's start.
        assert_ne!(line_group("a#b", "c"), line_group("a", "b#c"));
    }
}
