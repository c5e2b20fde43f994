//! The ledger on one DynamoDB table: partition key `pk` = payment key, sort
//! key `sk` = `STATE` for the payment's state and `EVENT#{event key}` for each
//! recorded event. `apply` is one `TransactWriteItems`: the event put is
//! conditional on the event being new, the state write on the version.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, TransactWriteItem};

use super::{describe, Clients};
use crate::config::AwsConfig;
use crate::event::{EventKey, PaymentEvent, PaymentKey};
use crate::money::Currency;
use crate::ports::{ApplyOutcome, EventRecord, Ledger, LedgerError};
use crate::state::{PaymentState, PaymentStatus};

const STATE: &str = "STATE";

/// One table.
#[derive(Debug, Clone)]
pub struct DynamoLedger {
    client: aws_sdk_dynamodb::Client,
    table: String,
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

fn get_n(item: &HashMap<String, AttributeValue>, k: &str) -> Option<i64> {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

fn event_sk(event_key: &EventKey) -> String {
    format!("EVENT#{event_key}")
}

fn unavailable(why: String) -> LedgerError {
    LedgerError::Unavailable(why)
}

impl DynamoLedger {
    /// The ledger in `config.table`.
    pub fn new(clients: &Clients, config: &AwsConfig) -> Self {
        Self {
            client: clients.dynamodb.clone(),
            table: config.table.clone(),
        }
    }

    fn state_condition(expected_version: u64) -> (String, Option<HashMap<String, AttributeValue>>) {
        if expected_version == 0 {
            ("attribute_not_exists(pk)".to_owned(), None)
        } else {
            (
                "version = :v".to_owned(),
                Some(HashMap::from([(":v".to_owned(), n(expected_version))])),
            )
        }
    }
}

#[async_trait]
impl Ledger for DynamoLedger {
    async fn get_payment(&self, key: &PaymentKey) -> Result<Option<PaymentState>, LedgerError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(key.as_str()))
            .key("sk", s(STATE))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable(describe(&e)))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let bad = |what: &str| unavailable(format!("stored {what} of {key} is invalid"));
        Ok(Some(PaymentState {
            payment_key: key.clone(),
            status: get_s(&item, "status")
                .and_then(PaymentStatus::parse)
                .ok_or_else(|| bad("status"))?,
            currency: get_s(&item, "currency")
                .and_then(Currency::from_alpha)
                .ok_or_else(|| bad("currency"))?,
            authorized_minor: get_n(&item, "authorized_minor").unwrap_or(0) as u64,
            paid_minor: get_n(&item, "paid_minor").unwrap_or(0) as u64,
            refunded_minor: get_n(&item, "refunded_minor").unwrap_or(0) as u64,
            version: get_n(&item, "version").ok_or_else(|| bad("version"))? as u64,
        }))
    }

    async fn apply(
        &self,
        event: &PaymentEvent,
        notification_id: &str,
        new_state: Option<&PaymentState>,
        expected_version: u64,
    ) -> Result<ApplyOutcome, LedgerError> {
        let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let key = event.payment_key.as_str();
        let mut event_item = HashMap::from([
            ("pk".to_owned(), s(key)),
            ("sk".to_owned(), s(event_sk(&event.event_key))),
            ("event_key".to_owned(), s(event.event_key.as_str())),
            ("notification_id".to_owned(), s(notification_id)),
            ("kind".to_owned(), s(event.kind.as_str())),
            ("outcome".to_owned(), s(event.outcome.as_str())),
            ("amount_minor".to_owned(), n(event.amount.minor)),
            ("currency".to_owned(), s(event.amount.currency.as_str())),
            ("recorded_at".to_owned(), n(now_ms)),
            (
                "event_json".to_owned(),
                s(serde_json::to_string(event).unwrap_or_default()),
            ),
        ]);
        if let Some(st) = new_state {
            event_item.insert("status_after".to_owned(), s(st.status.as_str()));
        }
        let put_event = Put::builder()
            .table_name(&self.table)
            .set_item(Some(event_item))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(|e| unavailable(e.to_string()))?;
        let (condition, values) = Self::state_condition(expected_version);
        let state_write = match new_state {
            Some(st) => TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(HashMap::from([
                            ("pk".to_owned(), s(key)),
                            ("sk".to_owned(), s(STATE)),
                            ("status".to_owned(), s(st.status.as_str())),
                            ("currency".to_owned(), s(st.currency.as_str())),
                            ("authorized_minor".to_owned(), n(st.authorized_minor)),
                            ("paid_minor".to_owned(), n(st.paid_minor)),
                            ("refunded_minor".to_owned(), n(st.refunded_minor)),
                            ("version".to_owned(), n(st.version)),
                            ("updated_at".to_owned(), n(now_ms)),
                        ])))
                        .condition_expression(condition)
                        .set_expression_attribute_values(values)
                        .build()
                        .map_err(|e| unavailable(e.to_string()))?,
                )
                .build(),
            None => TransactWriteItem::builder()
                .condition_check(
                    ConditionCheck::builder()
                        .table_name(&self.table)
                        .key("pk", s(key))
                        .key("sk", s(STATE))
                        .condition_expression(condition)
                        .set_expression_attribute_values(values)
                        .build()
                        .map_err(|e| unavailable(e.to_string()))?,
                )
                .build(),
        };
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put_event).build())
            .transact_items(state_write)
            .send()
            .await;
        match result {
            Ok(_) => Ok(ApplyOutcome::Applied),
            Err(e) => {
                if let Some(aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c)) =
                    e.as_service_error()
                {
                    let codes: Vec<&str> =
                        c.cancellation_reasons().iter().map(|r| r.code().unwrap_or("None")).collect();
                    // The event check is first: a redelivery is a duplicate whatever the version.
                    if codes.first() == Some(&"ConditionalCheckFailed") {
                        return Ok(ApplyOutcome::Duplicate);
                    }
                    if codes.get(1) == Some(&"ConditionalCheckFailed") {
                        return Ok(ApplyOutcome::VersionConflict);
                    }
                    // TransactionConflict, throttling: transient.
                    return Err(unavailable(format!("transaction cancelled: {codes:?}")));
                }
                Err(unavailable(describe(&e)))
            }
        }
    }

    async fn history(&self, key: &PaymentKey) -> Result<Vec<EventRecord>, LedgerError> {
        let mut items = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :e)")
            .expression_attribute_values(":pk", s(key.as_str()))
            .expression_attribute_values(":e", s("EVENT#"))
            .consistent_read(true)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            items.extend(
                page.map_err(|e| unavailable(describe(&e)))?
                    .items
                    .unwrap_or_default(),
            );
        }
        let mut records: Vec<EventRecord> = items
            .iter()
            .map(|i| EventRecord {
                event_key: get_s(i, "event_key").unwrap_or_default().to_owned(),
                notification_id: get_s(i, "notification_id").unwrap_or_default().to_owned(),
                kind: get_s(i, "kind").unwrap_or_default().to_owned(),
                outcome: get_s(i, "outcome").unwrap_or_default().to_owned(),
                amount_minor: get_n(i, "amount_minor").unwrap_or(0) as u64,
                currency: get_s(i, "currency").unwrap_or_default().to_owned(),
                status_after: get_s(i, "status_after").map(str::to_owned),
                recorded_at: time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(get_n(i, "recorded_at").unwrap_or(0)) * 1_000_000,
                )
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
            })
            .collect();
        records.sort_by(|a, b| {
            a.recorded_at
                .cmp(&b.recorded_at)
                .then_with(|| a.event_key.cmp(&b.event_key))
        });
        Ok(records)
    }

    async fn contains_event(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
    ) -> Result<bool, LedgerError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(key.as_str()))
            .key("sk", s(event_sk(event_key)))
            .projection_expression("pk")
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable(describe(&e)))?;
        Ok(out.item.is_some())
    }
}
