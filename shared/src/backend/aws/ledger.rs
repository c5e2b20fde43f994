//! The ledger on one DynamoDB table: partition key `pk` = payment key, sort
//! key `sk` = `STATE` for the payment's state (or only its version, or an
//! alias), `EVENT#{event key}` for each recorded event and `PARKED#{event
//! key}` for each event waiting for its payment. A write is one
//! `TransactWriteItems`: the incoming event's put is conditional on the event
//! being new, the state write (or check) on the version. Parked items carry
//! `gsi_parked` and `parked_at`, the keys of the sparse `parked` index that
//! reports old parked events. Events with a PSP time carry `day`
//! (`{source}#{UTC date}`) and `psp_ms`, the keys of the `events_by_day`
//! index that settlement reconciliation reads. A status query owed to a PSP
//! is an item `pk = WATCH#{id}`, `sk = WATCH`; while unfinished it carries
//! `gsi_due` and `due_at`, the keys of the `watches_due` index.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Delete, Put, TransactWriteItem};
use time::OffsetDateTime;

use super::{describe, Clients};
use crate::backend::{stored_time, unix_ms};
use crate::config::AwsConfig;
use crate::event::{EventKey, PaymentKey};
use crate::money::Currency;
use crate::ports::{
    ApplyOutcome, EventRecord, Incoming, Ledger, LedgerError, LedgerWrite, ParkedEntry,
    ParkedEvent, PaymentEntry, RecordedEvent, Watch,
};
use crate::state::{PaymentState, PaymentStatus};

const STATE: &str = "STATE";
const PARKED: &str = "PARKED#";
/// The sparse index over parked events, and its constant partition value.
pub const PARKED_INDEX: &str = "parked";
const PARKED_PARTITION: &str = "parked";
/// The index of events by source and day.
pub const EVENTS_INDEX: &str = "events_by_day";
/// The index of unfinished watches by due time, and its partition value.
pub const WATCHES_INDEX: &str = "watches_due";
const WATCHES_PARTITION: &str = "due";
const WATCH: &str = "WATCH";
/// Every index of the table: name, partition key (S), sort key (N).
pub const INDEXES: [(&str, &str, &str); 3] = [
    (PARKED_INDEX, "gsi_parked", "parked_at"),
    (EVENTS_INDEX, "day", "psp_ms"),
    (WATCHES_INDEX, "gsi_due", "due_at"),
];
/// `TransactWriteItems` takes at most 100 items.
const MAX_TRANSACTION_ITEMS: usize = 100;

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

fn parked_sk(event_key: &EventKey) -> String {
    format!("{PARKED}{event_key}")
}

fn parked_from(item: &HashMap<String, AttributeValue>) -> Option<ParkedEvent> {
    Some(ParkedEvent {
        event: serde_json::from_str(get_s(item, "event_json")?).ok()?,
        notification_id: get_s(item, "notification_id")?.to_owned(),
        parked_at: stored_time(get_n(item, "parked_at")?),
        conflict: get_s(item, "conflict").map(str::to_owned),
    })
}

/// `{source}#{YYYY-MM-DD}` of `t` in UTC.
fn day_partition(source: &str, t: OffsetDateTime) -> String {
    format!("{source}#{}", t.to_offset(time::UtcOffset::UTC).date())
}

fn event_record(item: &HashMap<String, AttributeValue>) -> Option<EventRecord> {
    Some(EventRecord {
        event_key: get_s(item, "event_key")?.to_owned(),
        notification_id: get_s(item, "notification_id")?.to_owned(),
        kind: get_s(item, "kind")?.to_owned(),
        outcome: get_s(item, "outcome")?.to_owned(),
        amount_minor: get_n(item, "amount_minor")? as u64,
        currency: get_s(item, "currency")?.to_owned(),
        status_after: get_s(item, "status_after").map(str::to_owned),
        recorded_at: stored_time(get_n(item, "recorded_at")?),
        event: get_s(item, "event_json").and_then(|j| serde_json::from_str(j).ok()),
    })
}

fn watch_from(item: &HashMap<String, AttributeValue>) -> Result<Watch, LedgerError> {
    get_s(item, "watch_json")
        .and_then(|j| serde_json::from_str(j).ok())
        .ok_or_else(|| unavailable(format!("stored watch {:?} is invalid", get_s(item, "pk"))))
}

fn built<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, LedgerError> {
    r.map_err(|e| unavailable(e.to_string()))
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

impl DynamoLedger {
    /// The first `limit` items of a sparse time index: `condition` over the
    /// partition `:g` and the time `:t`, in time order.
    async fn index_items(
        &self,
        index: &str,
        condition: &str,
        partition: &str,
        t: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, LedgerError> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(index)
            .key_condition_expression(condition)
            .expression_attribute_values(":g", s(partition))
            .expression_attribute_values(":t", n(unix_ms(t)))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            for item in page
                .map_err(|e| unavailable(describe(&e)))?
                .items
                .unwrap_or_default()
            {
                if out.len() >= limit {
                    return Ok(out);
                }
                out.push(item);
            }
        }
        Ok(out)
    }

    fn put_event(
        &self,
        key: &str,
        r: &RecordedEvent,
        now: i64,
        index: usize,
        only_if_new: bool,
    ) -> Result<TransactWriteItem, LedgerError> {
        let e = &r.event;
        let mut item = HashMap::from([
            ("pk".to_owned(), s(key)),
            ("sk".to_owned(), s(event_sk(&e.event_key))),
            ("event_key".to_owned(), s(e.event_key.as_str())),
            ("notification_id".to_owned(), s(&r.notification_id)),
            ("kind".to_owned(), s(e.kind.as_str())),
            ("outcome".to_owned(), s(e.outcome.as_str())),
            ("amount_minor".to_owned(), n(e.amount.minor)),
            ("currency".to_owned(), s(e.amount.currency.as_str())),
            ("recorded_at".to_owned(), n(now)),
            // Events of one write share `recorded_at`; this keeps their order.
            ("ord".to_owned(), n(now * 1000 + index as i64)),
            ("event_json".to_owned(), s(built(serde_json::to_string(e))?)),
        ]);
        if let Some(st) = r.status_after {
            item.insert("status_after".to_owned(), s(st.as_str()));
        }
        if let Some(t) = e.psp_time {
            item.insert("day".to_owned(), s(day_partition(&e.source, t)));
            item.insert("psp_ms".to_owned(), n(unix_ms(t)));
        }
        self.put_item(item, only_if_new)
    }

    /// A transaction put of `item`, only if no item has its key when asked.
    fn put_item(
        &self,
        item: HashMap<String, AttributeValue>,
        only_if_new: bool,
    ) -> Result<TransactWriteItem, LedgerError> {
        let mut put = Put::builder().table_name(&self.table).set_item(Some(item));
        if only_if_new {
            put = put.condition_expression("attribute_not_exists(pk)");
        }
        Ok(TransactWriteItem::builder()
            .put(built(put.build())?)
            .build())
    }

    fn put_parked(
        &self,
        key: &str,
        p: &ParkedEvent,
        only_if_new: bool,
    ) -> Result<TransactWriteItem, LedgerError> {
        let mut item = HashMap::from([
            ("pk".to_owned(), s(key)),
            ("sk".to_owned(), s(parked_sk(&p.event.event_key))),
            ("event_key".to_owned(), s(p.event.event_key.as_str())),
            ("notification_id".to_owned(), s(&p.notification_id)),
            ("parked_at".to_owned(), n(unix_ms(p.parked_at))),
            ("gsi_parked".to_owned(), s(PARKED_PARTITION)),
            (
                "event_json".to_owned(),
                s(built(serde_json::to_string(&p.event))?),
            ),
        ]);
        if let Some(why) = &p.conflict {
            item.insert("conflict".to_owned(), s(why));
        }
        self.put_item(item, only_if_new)
    }

    /// The `STATE` item of `key` at `expected_version + 1`: the payment's
    /// state, or only the version (and an alias) when there is none.
    fn put_state(
        &self,
        key: &str,
        state: Option<&PaymentState>,
        expected_version: u64,
        alias_of: Option<&str>,
        now: i64,
    ) -> Result<TransactWriteItem, LedgerError> {
        let mut item = HashMap::from([
            ("pk".to_owned(), s(key)),
            ("sk".to_owned(), s(STATE)),
            ("version".to_owned(), n(expected_version + 1)),
            ("updated_at".to_owned(), n(now)),
        ]);
        if let Some(st) = state {
            item.extend([
                ("status".to_owned(), s(st.status.as_str())),
                ("currency".to_owned(), s(st.currency.as_str())),
                ("authorized_minor".to_owned(), n(st.authorized_minor)),
                ("paid_minor".to_owned(), n(st.paid_minor)),
                ("refunded_minor".to_owned(), n(st.refunded_minor)),
            ]);
        }
        if let Some(target) = alias_of {
            item.insert("alias_of".to_owned(), s(target));
        }
        let (condition, values) = Self::state_condition(expected_version);
        Ok(TransactWriteItem::builder()
            .put(built(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .condition_expression(condition)
                    .set_expression_attribute_values(values)
                    .build(),
            )?)
            .build())
    }
}

#[async_trait]
impl Ledger for DynamoLedger {
    async fn load(&self, key: &PaymentKey) -> Result<PaymentEntry, LedgerError> {
        // `PARKED#…` < `STATE` and `EVENT#…` sorts before both: one
        // consistent query reads the state and the parked events, not the
        // recorded ones.
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk >= :p")
            .expression_attribute_values(":pk", s(key.as_str()))
            .expression_attribute_values(":p", s(PARKED))
            .consistent_read(true)
            .into_paginator()
            .send();
        let mut entry = PaymentEntry::default();
        while let Some(page) = pages.next().await {
            for item in page
                .map_err(|e| unavailable(describe(&e)))?
                .items
                .unwrap_or_default()
            {
                let sk = get_s(&item, "sk").unwrap_or_default();
                if sk == STATE {
                    let bad =
                        |what: &str| unavailable(format!("stored {what} of {key} is invalid"));
                    entry.version = get_n(&item, "version").ok_or_else(|| bad("version"))? as u64;
                    entry.alias_of = get_s(&item, "alias_of").map(PaymentKey::from_stored);
                    if let Some(status) = get_s(&item, "status") {
                        entry.state = Some(PaymentState {
                            payment_key: key.clone(),
                            status: PaymentStatus::parse(status).ok_or_else(|| bad("status"))?,
                            currency: get_s(&item, "currency")
                                .and_then(Currency::from_alpha)
                                .ok_or_else(|| bad("currency"))?,
                            authorized_minor: get_n(&item, "authorized_minor").unwrap_or(0) as u64,
                            paid_minor: get_n(&item, "paid_minor").unwrap_or(0) as u64,
                            refunded_minor: get_n(&item, "refunded_minor").unwrap_or(0) as u64,
                            version: entry.version,
                        });
                    }
                } else if sk.starts_with(PARKED) {
                    entry.parked.push(parked_from(&item).ok_or_else(|| {
                        unavailable(format!("stored parked event {sk} of {key} is invalid"))
                    })?);
                }
            }
        }
        entry.parked.sort_by(|a, b| {
            a.parked_at
                .cmp(&b.parked_at)
                .then_with(|| a.event.event_key.cmp(&b.event.event_key))
        });
        Ok(entry)
    }

    async fn write(&self, w: &LedgerWrite) -> Result<ApplyOutcome, LedgerError> {
        let now = unix_ms(OffsetDateTime::now_utc());
        let key = w.key.as_str();
        let mut items = Vec::new();
        // The incoming event first: its condition decides `Duplicate`.
        items.push(match &w.incoming {
            Incoming::Record(r) => self.put_event(key, r, now, 0, true)?,
            Incoming::Park(p) => self.put_parked(key, p, true)?,
        });
        for (i, r) in w.unparked.iter().enumerate() {
            items.push(self.put_event(key, r, now, i + 1, false)?);
            if let Some(from) = &r.unparked_from {
                items.push(
                    TransactWriteItem::builder()
                        .delete(built(
                            Delete::builder()
                                .table_name(&self.table)
                                .key("pk", s(from.as_str()))
                                .key("sk", s(parked_sk(&r.event.event_key)))
                                .build(),
                        )?)
                        .build(),
                );
            }
        }
        for p in &w.conflicts {
            items.push(self.put_parked(p.payment_key.as_str(), &p.parked, false)?);
        }
        items.push(if w.bumps_version() {
            self.put_state(key, w.state.as_ref(), w.expected_version, None, now)?
        } else {
            let (condition, values) = Self::state_condition(w.expected_version);
            TransactWriteItem::builder()
                .condition_check(built(
                    ConditionCheck::builder()
                        .table_name(&self.table)
                        .key("pk", s(key))
                        .key("sk", s(STATE))
                        .condition_expression(condition)
                        .set_expression_attribute_values(values)
                        .build(),
                )?)
                .build()
        });
        for a in &w.aliases {
            items.push(self.put_state(a.key.as_str(), None, a.expected_version, Some(key), now)?);
        }
        if items.len() > MAX_TRANSACTION_ITEMS {
            return Err(unavailable(format!(
                "a write of {} items exceeds DynamoDB's {MAX_TRANSACTION_ITEMS} per transaction",
                items.len()
            )));
        }
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
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
                    // The incoming event is first: a redelivery is a duplicate whatever the version.
                    if codes.first() == Some(&"ConditionalCheckFailed") {
                        return Ok(ApplyOutcome::Duplicate);
                    }
                    if codes.contains(&"ConditionalCheckFailed") {
                        return Ok(ApplyOutcome::VersionConflict);
                    }
                    // TransactionConflict, throttling: transient.
                    return Err(unavailable(format!("transaction cancelled: {codes:?}")));
                }
                Err(unavailable(describe(&e)))
            }
        }
    }

    async fn parked_before(
        &self,
        t: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<ParkedEntry>, LedgerError> {
        let items = self
            .index_items(
                PARKED_INDEX,
                "gsi_parked = :g AND parked_at < :t",
                PARKED_PARTITION,
                t,
                limit,
            )
            .await?;
        Ok(items
            .iter()
            .filter_map(|item| {
                Some(ParkedEntry {
                    payment_key: PaymentKey::from_stored(get_s(item, "pk")?),
                    parked: parked_from(item)?,
                })
            })
            .collect())
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
        items.sort_by_key(|i| {
            get_n(i, "ord").unwrap_or_else(|| get_n(i, "recorded_at").unwrap_or(0) * 1000)
        });
        let records: Vec<EventRecord> = items
            .iter()
            .map(|i| EventRecord {
                event_key: get_s(i, "event_key").unwrap_or_default().to_owned(),
                notification_id: get_s(i, "notification_id").unwrap_or_default().to_owned(),
                kind: get_s(i, "kind").unwrap_or_default().to_owned(),
                outcome: get_s(i, "outcome").unwrap_or_default().to_owned(),
                amount_minor: get_n(i, "amount_minor").unwrap_or(0) as u64,
                currency: get_s(i, "currency").unwrap_or_default().to_owned(),
                status_after: get_s(i, "status_after").map(str::to_owned),
                recorded_at: stored_time(get_n(i, "recorded_at").unwrap_or(0)),
                event: get_s(i, "event_json").and_then(|j| serde_json::from_str(j).ok()),
            })
            .collect();
        Ok(records)
    }

    async fn contains_event(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
    ) -> Result<bool, LedgerError> {
        // Recorded, else parked: two reads, only on the rare conflict path.
        for sk in [event_sk(event_key), parked_sk(event_key)] {
            let out = self
                .client
                .get_item()
                .table_name(&self.table)
                .key("pk", s(key.as_str()))
                .key("sk", s(sk))
                .projection_expression("pk")
                .consistent_read(true)
                .send()
                .await
                .map_err(|e| unavailable(describe(&e)))?;
            if out.item.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn events_between(
        &self,
        source: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<EventRecord>, LedgerError> {
        let mut out = Vec::new();
        let (from, to) = (
            from.to_offset(time::UtcOffset::UTC),
            to.to_offset(time::UtcOffset::UTC),
        );
        let mut day = from.date();
        while day <= to.date() {
            let mut pages = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(EVENTS_INDEX)
                .key_condition_expression("#d = :d AND psp_ms BETWEEN :f AND :t")
                .expression_attribute_names("#d", "day")
                .expression_attribute_values(":d", s(format!("{source}#{day}")))
                .expression_attribute_values(":f", n(unix_ms(from)))
                .expression_attribute_values(":t", n(unix_ms(to) - 1))
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                for item in page
                    .map_err(|e| unavailable(describe(&e)))?
                    .items
                    .unwrap_or_default()
                {
                    let psp_ms = get_n(&item, "psp_ms").unwrap_or(0);
                    let record = event_record(&item).ok_or_else(|| {
                        unavailable(format!("stored event {:?} is invalid", get_s(&item, "sk")))
                    })?;
                    out.push((psp_ms, get_s(&item, "pk").unwrap_or("").to_owned(), record));
                }
            }
            day = match day.next_day() {
                Some(d) => d,
                None => break,
            };
        }
        out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        Ok(out.into_iter().map(|(_, _, r)| r).collect())
    }

    async fn put_watch(&self, watch: &Watch) -> Result<ApplyOutcome, LedgerError> {
        let mut item = HashMap::from([
            ("pk".to_owned(), s(format!("{WATCH}#{}", watch.id))),
            ("sk".to_owned(), s(WATCH)),
            ("version".to_owned(), n(watch.version)),
            (
                "watch_json".to_owned(),
                s(built(serde_json::to_string(watch))?),
            ),
        ]);
        if let Some(due) = watch.due_at {
            item.insert("gsi_due".to_owned(), s(WATCHES_PARTITION));
            item.insert("due_at".to_owned(), n(unix_ms(due)));
        }
        let (condition, values) = Self::state_condition(watch.version.saturating_sub(1));
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_values(values)
            .send()
            .await;
        match put {
            Ok(_) => Ok(ApplyOutcome::Applied),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(ApplyOutcome::VersionConflict)
            }
            Err(e) => Err(unavailable(describe(&e))),
        }
    }

    async fn get_watch(&self, id: &str) -> Result<Option<Watch>, LedgerError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("{WATCH}#{id}")))
            .key("sk", s(WATCH))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable(describe(&e)))?;
        out.item.as_ref().map(watch_from).transpose()
    }

    async fn due_watches(
        &self,
        t: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Watch>, LedgerError> {
        self.index_items(
            WATCHES_INDEX,
            "gsi_due = :g AND due_at <= :t",
            WATCHES_PARTITION,
            t,
            limit,
        )
        .await?
        .iter()
        .map(watch_from)
        .collect()
    }
}
