//! The ledger on one DynamoDB table: partition key `pk` = payment key, sort
//! key `sk` = `STATE` for the payment's item. That one item holds the
//! payment's state (or only its version, or an alias), the set of event keys
//! recorded on it (`keys`, a 128-bit digest of each) and, inline, its first [`INLINE_EVENTS`] recorded
//! events (`events`, compact JSON); later events spill to overflow items
//! `EVENTS#{index}`. Recording an event is one conditional `UpdateItem`:
//! the version matches (absent or 0 before the first state: an event
//! recorded without one, UnionPay's "in process", keeps the item at 0) and
//! the event key is not in `keys`, so a duplicate or a concurrent writer is
//! refused by DynamoDB itself. Writes that touch more than that item (an
//! event parked as `PARKED#{event key}`, moved out of a park, a completion's
//! alias, a spill) are one `TransactWriteItems`; the payment's item names
//! its parked events in a set (`parked`) changed by the same writes, so a
//! read that saw the parked items and the item at different commits reads
//! again (a query is not a snapshot). Parked items carry
//! `gsi_parked` and `parked_at`, the keys of the sparse `parked` index that
//! reports old parked events. A status query owed to a PSP is an item
//! `pk = WATCH#{id}`, `sk = WATCH`; while unfinished it carries `gsi_due` and
//! `due_at`, the keys of the `watches_due` index. A payment's item whose
//! creating event named the merchant's order carries `gsi_order`, the key
//! of the keys-only `orders` index. Events by PSP time (the
//! settlement reconciliation's read, once a day) scan the payment items:
//! an index over events would need an item per event, the write this
//! layout saves.
//!
//! A worker's read before a write (`load_to_apply`) is one query of the
//! payment's item and parked items, eventually consistent unless asked
//! otherwise: the write's condition on the version catches a stale read,
//! and the item's `keys` tell a redelivered event without a write.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};
use time::OffsetDateTime;

use super::{cause, Clients};
use crate::config::AwsConfig;
use crate::event::{EventKey, PaymentKey};
use crate::money::Currency;
use crate::ports::{
    ApplyOutcome, Cause, EventRecord, FoundPayment, Freshness, Incoming, Ledger, LedgerError,
    LedgerWrite, Loaded, ParkedEntry, ParkedEvent, PaymentEntry, PaymentPage, PaymentSearch,
    RecordedEvent, SearchCursor, Watch, WatchStore,
};
use crate::state::{PaymentState, PaymentStatus};
use crate::{stored_time, unix_ms};

pub(super) const STATE: &str = "STATE";
mod expr;
mod item;
mod read;
mod watch;
mod write;

use expr::*;
use item::*;
pub(super) use item::{overflow_sk, state_of, stored_events};
use read::*;
use write::*;

const PARKED: &str = "PARKED#";
/// The sparse index over parked events, and its constant partition value.
pub const PARKED_INDEX: &str = "parked";
const PARKED_PARTITION: &str = "parked";
/// Recorded events kept in the payment's own item; later ones spill to
/// overflow items. A payment's first events fit one item of about 1 KB per
/// event, and every write is billed by the item's size.
pub const INLINE_EVENTS: u64 = 4;
const OVERFLOW: &str = "EVENTS#";
/// The index of unfinished watches by due time, and its partition value.
pub const WATCHES_INDEX: &str = "watches_due";
const WATCHES_PARTITION: &str = "due";
const WATCH: &str = "WATCH";
/// The index of payments by the merchant's order id (`gsi_order`, set on
/// a payment's item by the write that records an event naming its order).
/// Keys only: the item's later writes change nothing the index holds, so
/// only the first writes it.
pub const ORDERS_INDEX: &str = "orders";
/// Every index of the table: name, partition key (S), sort key (N) if it
/// has one, and projection (CloudFormation's `ProjectionType`).
pub const INDEXES: [(&str, &str, Option<&str>, &str); 3] = [
    (PARKED_INDEX, "gsi_parked", Some("parked_at"), "ALL"),
    (WATCHES_INDEX, "gsi_due", Some("due_at"), "ALL"),
    (ORDERS_INDEX, "gsi_order", None, "KEYS_ONLY"),
];
/// Reads of a payment before one whose parked items match its item is
/// given up as unavailable (a torn view lasts one write's commit).
const TORN_READS: usize = 4;
/// The most 1 MB pages of the table one page of a payment search scans.
const SEARCH_PAGES: usize = 4;
/// `TransactWriteItems` takes at most 100 items.
const MAX_TRANSACTION_ITEMS: usize = 100;

/// One table.
#[derive(Debug, Clone)]
pub struct DynamoLedger {
    client: aws_sdk_dynamodb::Client,
    table: String,
    /// `backend.aws.search_page_items`.
    search_page_items: Option<i32>,
    /// `backend.aws.order_index`.
    order_index: bool,
}

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn get_s<'a>(item: &'a HashMap<String, AttributeValue>, k: &str) -> Option<&'a str> {
    item.get(k).and_then(|v| v.as_s().ok()).map(String::as_str)
}

pub(super) fn get_n(item: &HashMap<String, AttributeValue>, k: &str) -> Option<i64> {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

fn built<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, LedgerError> {
    r.map_err(|e| unavailable(e.to_string()))
}

fn unavailable(why: impl Into<Cause>) -> LedgerError {
    LedgerError::Unavailable(why.into())
}

impl DynamoLedger {
    /// Runs one `TransactWriteItems`: `Ok(Err(codes))` when DynamoDB
    /// cancelled it, with each item's cancellation code in order (`"None"`
    /// for an item that was not the cause).
    async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> Result<Result<(), Vec<String>>, LedgerError> {
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(Ok(())),
            Err(e) => match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => Ok(Err(c
                    .cancellation_reasons()
                    .iter()
                    .map(|r| r.code().unwrap_or("None").to_owned())
                    .collect())),
                _ => Err(unavailable(cause(e))),
            },
        }
    }

    /// The ledger in `config.table`.
    pub fn new(clients: &Clients, config: &AwsConfig) -> Self {
        Self {
            client: clients.dynamodb.clone(),
            table: config.table.clone(),
            search_page_items: config
                .search_page_items
                .map(|n| i32::try_from(n.max(1)).unwrap_or(i32::MAX)),
            order_index: config.order_index,
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
    async fn load(&self, key: &PaymentKey) -> Result<PaymentEntry, LedgerError> {
        Ok(self.read_entry(key, None, Freshness::Latest).await?.entry)
    }

    async fn payments_by_order(
        &self,
        order_id: &str,
        limit: usize,
    ) -> Result<Vec<PaymentKey>, LedgerError> {
        // DynamoDB refuses an empty key value; neither is ever indexed.
        if order_id.is_empty() || order_id.len() > crate::event::MAX_ORDER_ID_BYTES {
            return Ok(Vec::new());
        }
        let items = self
            .index_items(
                ORDERS_INDEX,
                "gsi_order = :o",
                &[(":o", s(order_id))],
                limit,
            )
            .await?;
        let mut keys: Vec<PaymentKey> = items
            .iter()
            .filter_map(|item| get_s(item, "pk").map(PaymentKey::from_stored))
            .collect();
        keys.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(keys)
    }

    async fn search_payments(&self, q: &PaymentSearch) -> Result<PaymentPage, LedgerError> {
        // A scan of the payments' items, filtered: no index over status or
        // time, whose every write would cost one more (BENCHMARKS.md). A
        // page reads at most SEARCH_PAGES of the table's 1 MB pages.
        let mut filter = vec!["sk = :state".to_owned(), "attribute_exists(#st)".to_owned()];
        let mut values = HashMap::from([(":state".to_owned(), s(STATE))]);
        if let Some(p) = q.key_prefix() {
            filter.push("begins_with(pk, :prefix)".into());
            values.insert(":prefix".into(), s(p));
        }
        if let Some(st) = q.status {
            filter.push("#st = :status".into());
            values.insert(":status".into(), s(st.as_str()));
        }
        if let Some(t) = q.updated_from {
            filter.push("updated_at >= :from".into());
            values.insert(":from".into(), n(unix_ms(t)));
        }
        if let Some(t) = q.updated_to {
            filter.push("updated_at < :to".into());
            values.insert(":to".into(), n(unix_ms(t)));
        }
        let cursor = |pk: Option<&str>, sk: Option<&str>| SearchCursor {
            pk: pk.unwrap_or_default().to_owned(),
            sk: sk.unwrap_or_default().to_owned(),
        };
        let mut start = q
            .after
            .as_ref()
            .map(|c| HashMap::from([("pk".to_owned(), s(&c.pk)), ("sk".to_owned(), s(&c.sk))]));
        let mut payments = Vec::new();
        for _ in 0..SEARCH_PAGES {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression(filter.join(" AND "))
                .expression_attribute_names("#st", "status")
                .set_expression_attribute_values(Some(values.clone()))
                .set_exclusive_start_key(start.take())
                .set_limit(self.search_page_items)
                .send()
                .await
                .map_err(|e| unavailable(cause(e)))?;
            for item in out.items.unwrap_or_default() {
                let Some(pk) = get_s(&item, "pk") else {
                    continue;
                };
                if payments.len() == q.limit {
                    let next = payments.last().map(|p: &FoundPayment| {
                        cursor(Some(p.state.payment_key.as_str()), Some(STATE))
                    });
                    return Ok(PaymentPage { payments, next });
                }
                let key = PaymentKey::from_stored(pk);
                let Some(state) = state_of(&item, &key)? else {
                    continue;
                };
                payments.push(FoundPayment {
                    state,
                    updated_at: stored_time(get_n(&item, "updated_at").unwrap_or(0)),
                    order_id: get_s(&item, "gsi_order").map(str::to_owned),
                });
            }
            match out.last_evaluated_key {
                Some(k) => start = Some(k),
                None => {
                    return Ok(PaymentPage {
                        payments,
                        next: None,
                    })
                }
            }
        }
        let next = start.map(|k| cursor(get_s(&k, "pk"), get_s(&k, "sk")));
        Ok(PaymentPage { payments, next })
    }

    async fn remove_parked(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
    ) -> Result<Option<ParkedEvent>, LedgerError> {
        let sk = parked_sk(event_key);
        let got = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(key.as_str()))
            .key("sk", s(sk.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable(cause(e)))?;
        let Some(item) = got.item else {
            return Ok(None);
        };
        let parked = parked_from(&item).ok_or_else(|| {
            unavailable(format!("{key}: a parked item that does not read as one"))
        })?;
        // The parked item and its digest in the payment's item go together
        // (a read checks the two agree). A write that moves the event
        // deletes the item on the condition that it is still there: one of
        // the two finds it gone. Any other write removes `attention`.
        let digest = key_digest(event_key);
        let delete = Delete::builder()
            .table_name(&self.table)
            .key("pk", s(key.as_str()))
            .key("sk", s(sk.as_str()))
            .condition_expression("attribute_exists(pk)")
            .build();
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(key.as_str()))
            .key("sk", s(STATE))
            .update_expression("DELETE #parked :d REMOVE #attention")
            .condition_expression("contains(#parked, :k)")
            .expression_attribute_names("#parked", "parked")
            .expression_attribute_names("#attention", "attention")
            .expression_attribute_values(":d", AttributeValue::Ss(vec![digest.clone()]))
            .expression_attribute_values(":k", s(digest))
            .build();
        let items = vec![
            TransactWriteItem::builder().delete(built(delete)?).build(),
            TransactWriteItem::builder().update(built(update)?).build(),
        ];
        match self.transact(items).await? {
            Ok(()) => Ok(Some(parked)),
            // Moved by a write meanwhile, or removed before.
            Err(codes) if codes.iter().any(|c| c == "ConditionalCheckFailed") => Ok(None),
            Err(codes) => Err(unavailable(format!(
                "{key}: removing a parked event was cancelled: {codes:?}"
            ))),
        }
    }

    async fn load_to_apply(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
        freshness: Freshness,
    ) -> Result<Loaded, LedgerError> {
        self.read_entry(key, Some(event_key), freshness).await
    }

    async fn write(&self, w: &LedgerWrite) -> Result<ApplyOutcome, LedgerError> {
        let now = unix_ms(OffsetDateTime::now_utc());
        let recorded: Vec<&RecordedEvent> = match &w.incoming {
            Incoming::Record(r) => std::iter::once(r).chain(&w.unparked).collect(),
            Incoming::Park(_) | Incoming::Nothing => w.unparked.iter().collect(),
        };
        let records = recorded
            .iter()
            .map(|r| StoredEvent::json(r, w.key.as_str(), now))
            .collect::<Result<Vec<_>, _>>()?;
        let keys: Vec<String> = recorded
            .iter()
            .map(|r| key_digest(&r.event.event_key))
            .collect();
        let attention = w
            .conflicts
            .iter()
            .map(|c| built(serde_json::to_string(&c.parked)))
            .collect::<Result<Vec<_>, _>>()?;
        let records = Records {
            records,
            keys,
            attention,
        };
        // Inline first; when the item has no room, once more as a spill to
        // an overflow item, planned on the count read back.
        let mut spill_at = None;
        loop {
            match self.try_write(w, &records, spill_at, now).await? {
                None => return Ok(ApplyOutcome::Applied),
                Some(Refusal::Parked) => return Ok(ApplyOutcome::Duplicate),
                Some(Refusal::Other) => return Ok(ApplyOutcome::VersionConflict),
                Some(Refusal::Main) => match self.refused(w).await? {
                    Refused::Duplicate => return Ok(ApplyOutcome::Duplicate),
                    Refused::Version => return Ok(ApplyOutcome::VersionConflict),
                    Refused::Full(c) if spill_at.is_none() && !records.records.is_empty() => {
                        spill_at = Some(c);
                    }
                    // Another writer recorded events meanwhile: decide again.
                    Refused::Full(_) => return Ok(ApplyOutcome::VersionConflict),
                },
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
                &[(":g", s(PARKED_PARTITION)), (":t", n(unix_ms(t)))],
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

    /// The table has no index by time: counting would scan it.
    async fn recorded_since(&self, _since: OffsetDateTime) -> Result<Option<u64>, LedgerError> {
        Ok(None)
    }

    async fn history(&self, key: &PaymentKey) -> Result<Vec<EventRecord>, LedgerError> {
        // Read again while the events read are not as many as the item
        // says are recorded: a spill committed between the query's read of
        // the overflow items and of the item (see `read_entry`).
        until_whole(|| format!("history of {key}"), |_| self.history_once(key)).await
    }

    async fn contains_event(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
    ) -> Result<bool, LedgerError> {
        // The worker's read, as fresh as `load`: the item's `keys`, or a
        // parked item.
        Ok(self
            .read_entry(key, Some(event_key), Freshness::Latest)
            .await?
            .seen)
    }

    async fn events_between(
        &self,
        source: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<EventRecord>, LedgerError> {
        // A scan of the source's payment and overflow items (see the module
        // documentation): read units for the whole table, once a day.
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression("begins_with(pk, :src) AND (sk = :s OR begins_with(sk, :o))")
            .expression_attribute_values(":src", s(format!("{source}#")))
            .expression_attribute_values(":s", s(STATE))
            .expression_attribute_values(":o", s(OVERFLOW))
            .projection_expression("pk, sk, #e")
            .expression_attribute_names("#e", "events")
            .consistent_read(true)
            .into_paginator()
            .send();
        let (from_ms, to_ms) = (unix_ms(from), unix_ms(to));
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            for item in page
                .map_err(|e| unavailable(cause(e)))?
                .items
                .unwrap_or_default()
            {
                let pk = get_s(&item, "pk").unwrap_or_default().to_owned();
                for record in stored_events(&item)? {
                    let Some(e) = &record.event else { continue };
                    let Some(t) = e.psp_time.map(unix_ms) else {
                        continue;
                    };
                    if e.source == source && (from_ms..to_ms).contains(&t) {
                        out.push((t, pk.clone(), record));
                    }
                }
            }
        }
        out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        Ok(out.into_iter().map(|(_, _, r)| r).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventKind, EventOutcome, PaymentEvent};
    use crate::money::Money;

    fn unionpay_refund(payment_key: &PaymentKey, payment_ref: &str) -> PaymentEvent {
        PaymentEvent {
            source: "unionpay".into(),
            merchant: "777290058167151".into(),
            payment_ref: payment_ref.into(),
            payment_key: payment_key.clone(),
            event_key: EventKey::new("unionpay#777290058167151#742209081616131215448#00"),
            kind: EventKind::Refund,
            outcome: EventOutcome::Succeeded,
            amount: Money {
                minor: 1000,
                currency: Currency::from_alpha("CNY").unwrap(),
            },
            currency_defaulted: false,
            psp_txn_id: Some("742209081616131215448".into()),
            psp_time: Some(time::macros::datetime!(2022-09-08 16:16:13 +08:00)),
            result_code: Some("00".into()),
            result_message: Some("成功[0000000]".into()),
            settle_date: Some("0908".into()),
            order_id: None,
            legacy_key: None,
        }
    }

    #[test]
    fn stored_events_are_compact_and_give_back_the_event() {
        let key = PaymentKey::new("unionpay", "777290058167151", "2022090816161226#1");
        let recorded = |event: PaymentEvent| RecordedEvent {
            event,
            notification_id: "01KB0000000000000000000000".into(),
            status_after: Some(PaymentStatus::Refunded),
            unparked_from: None,
        };
        // Its own payment's event, and one recorded through a completion's alias.
        let alias = PaymentKey::new("unionpay", "777290058167151", "completion-7");
        for (event, stored_under) in [
            (unionpay_refund(&key, "2022090816161226#1"), &key),
            (unionpay_refund(&alias, "completion-7"), &key),
        ] {
            let json =
                StoredEvent::json(&recorded(event.clone()), stored_under.as_str(), 1).unwrap();
            assert!(json.len() < 320, "{} bytes: {json}", json.len());
            let back: StoredEvent = serde_json::from_str(&json).unwrap();
            let record = back.record(stored_under.as_str());
            assert_eq!(record.event.as_ref(), Some(&event));
            assert_eq!(record.status_after.as_deref(), Some("REFUNDED"));
        }
    }
}
