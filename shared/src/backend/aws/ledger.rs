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
//! `due_at`, the keys of the `watches_due` index. Events by PSP time (the
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

use super::{describe, Clients};
use crate::backend::{stored_time, unix_ms};
use crate::config::AwsConfig;
use crate::event::{EventKey, PaymentKey};
use crate::money::Currency;
use crate::ports::{
    ApplyOutcome, EventRecord, Freshness, Incoming, Ledger, LedgerError, LedgerWrite, Loaded,
    ParkedEntry, ParkedEvent, PaymentEntry, RecordedEvent, Watch, WatchStore,
};
use crate::state::{PaymentState, PaymentStatus};

pub(super) const STATE: &str = "STATE";
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
/// Every index of the table: name, partition key (S), sort key (N).
pub const INDEXES: [(&str, &str, &str); 2] = [
    (PARKED_INDEX, "gsi_parked", "parked_at"),
    (WATCHES_INDEX, "gsi_due", "due_at"),
];
/// Reads of a payment before one whose parked items match its item is
/// given up as unavailable (a torn view lasts one write's commit).
const TORN_READS: usize = 4;
/// `TransactWriteItems` takes at most 100 items.
const MAX_TRANSACTION_ITEMS: usize = 100;

/// One table.
#[derive(Debug, Clone)]
pub struct DynamoLedger {
    client: aws_sdk_dynamodb::Client,
    table: String,
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

pub(super) fn overflow_sk(first_index: u64) -> String {
    format!("{OVERFLOW}{first_index:010}")
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

/// A recorded event as the payment's item (or an overflow item) keeps it:
/// short names, and nothing the item's key already says (the payment key,
/// and the source, merchant and reference it is made of, are stored only
/// when they differ), because every write is billed by the item's size.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StoredEvent {
    /// Event key.
    k: String,
    /// Notification id.
    n: String,
    /// Status after, when it changed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    s: Option<String>,
    /// Recorded at, Unix ms.
    t: i64,
    /// Kind and outcome.
    y: crate::event::EventKind,
    o: crate::event::EventOutcome,
    /// Amount in minor units, and its currency.
    m: u64,
    c: Currency,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    d: bool,
    /// The PSP's transaction id and time, result code and message,
    /// settlement date.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    x: Option<String>,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none",
        default
    )]
    p: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    rc: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    rm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    sd: Option<String>,
    /// The event's payment key, source, merchant and reference, when not
    /// the item's or what the item's key is made of.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pk: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    src: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    mer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    rf: Option<String>,
}

/// What the payment's item keeps of an event key in its `keys` set: 128 bits
/// of its SHA-256, base64 (22 bytes; UnionPay's event keys are about 110,
/// and every write is billed by the item's size). The event's whole key is
/// in its stored event.
fn key_digest(event_key: &EventKey) -> String {
    use base64::Engine;
    use sha2::Digest;
    let digest = sha2::Sha256::digest(event_key.as_str().as_bytes());
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(&digest[..16])
}

/// Whether a payment's item records `event_key`.
fn has_key(item: &HashMap<String, AttributeValue>, event_key: &EventKey) -> bool {
    item.get("keys")
        .and_then(|k| k.as_ss().ok())
        .is_some_and(|k| k.contains(&key_digest(event_key)))
}

/// Reads with `read` (given the attempt, from 0) until a read is whole
/// (`None` for how it is torn), at most [`TORN_READS`] times, then gives
/// up as unavailable, naming `what` was read (the message is retried
/// later).
async fn until_whole<T, F, Fut>(
    what: impl FnOnce() -> String,
    mut read: F,
) -> Result<T, LedgerError>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(T, Option<String>), LedgerError>>,
{
    let mut torn = String::new();
    for attempt in 0..TORN_READS {
        match read(attempt).await? {
            (whole, None) => return Ok(whole),
            (_, Some(why)) => torn = why,
        }
    }
    Err(unavailable(format!(
        "{} read {TORN_READS} times, never whole: {torn}",
        what()
    )))
}

/// The digests of the events `w` unparks from under `key`.
fn unparked_from(w: &LedgerWrite, key: &PaymentKey) -> Vec<String> {
    w.unparked
        .iter()
        .filter(|r| r.unparked_from.as_ref() == Some(key))
        .map(|r| key_digest(&r.event.event_key))
        .collect()
}

/// `source#merchant#reference` split into its parts (the reference may hold `#`).
fn key_parts(key: &str) -> (&str, &str, &str) {
    let mut parts = key.splitn(3, '#');
    (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    )
}

impl StoredEvent {
    /// `r` as stored in the item of payment key `pk`.
    fn json(r: &RecordedEvent, pk: &str, now: i64) -> Result<String, LedgerError> {
        let e = &r.event;
        let key = e.payment_key.as_str();
        let (src, mer, rf) = key_parts(key);
        let differs = |field: &str, derived: &str| (field != derived).then(|| field.to_owned());
        built(serde_json::to_string(&StoredEvent {
            k: e.event_key.as_str().to_owned(),
            n: r.notification_id.clone(),
            s: r.status_after.map(|st| st.as_str().to_owned()),
            t: now,
            y: e.kind,
            o: e.outcome,
            m: e.amount.minor,
            c: e.amount.currency,
            d: e.currency_defaulted,
            x: e.psp_txn_id.clone(),
            p: e.psp_time,
            rc: e.result_code.clone(),
            rm: e.result_message.clone(),
            sd: e.settle_date.clone(),
            pk: differs(key, pk),
            src: differs(&e.source, src),
            mer: differs(&e.merchant, mer),
            rf: differs(&e.payment_ref, rf),
        }))
    }

    /// The event recorded in the item of payment key `pk`.
    fn record(self, pk: &str) -> EventRecord {
        let key = self.pk.unwrap_or_else(|| pk.to_owned());
        let (src, mer, rf) = key_parts(&key);
        let event = crate::event::PaymentEvent {
            source: self.src.unwrap_or_else(|| src.to_owned()),
            merchant: self.mer.unwrap_or_else(|| mer.to_owned()),
            payment_ref: self.rf.unwrap_or_else(|| rf.to_owned()),
            payment_key: PaymentKey::from_stored(key.clone()),
            event_key: EventKey::new(self.k.clone()),
            kind: self.y,
            outcome: self.o,
            amount: crate::money::Money {
                minor: self.m,
                currency: self.c,
            },
            currency_defaulted: self.d,
            psp_txn_id: self.x,
            psp_time: self.p,
            result_code: self.rc,
            result_message: self.rm,
            settle_date: self.sd,
            legacy_key: None,
        };
        EventRecord {
            event_key: self.k,
            notification_id: self.n,
            kind: event.kind.as_str().to_owned(),
            outcome: event.outcome.as_str().to_owned(),
            amount_minor: event.amount.minor,
            currency: event.amount.currency.as_str().to_owned(),
            status_after: self.s,
            recorded_at: stored_time(self.t),
            event: Some(event),
        }
    }
}

/// The recorded events in an item's `events` list, in order.
pub(super) fn stored_events(
    item: &HashMap<String, AttributeValue>,
) -> Result<Vec<EventRecord>, LedgerError> {
    let Some(list) = item.get("events").and_then(|v| v.as_l().ok()) else {
        return Ok(Vec::new());
    };
    let pk = get_s(item, "pk").unwrap_or_default();
    list.iter()
        .map(|v| {
            v.as_s()
                .ok()
                .and_then(|j| serde_json::from_str::<StoredEvent>(j).ok())
                .map(|e| e.record(pk))
                .ok_or_else(|| unavailable(format!("a stored event of {pk:?} is invalid")))
        })
        .collect()
}

/// What one write stores of its events: the stored events recorded, their
/// keys' digests, and the conflicting parked events it found (JSON of each
/// [`ParkedEvent`]).
struct Records {
    records: Vec<String>,
    keys: Vec<String>,
    attention: Vec<String>,
}

/// The payment's state its item holds (none before its first state, and in
/// an alias), at the item's version (0 when it has none).
pub(super) fn state_of(
    item: &HashMap<String, AttributeValue>,
    key: &PaymentKey,
) -> Result<Option<PaymentState>, LedgerError> {
    let bad = |what: &str| unavailable(format!("stored {what} of {key} is invalid"));
    let Some(status) = get_s(item, "status") else {
        return Ok(None);
    };
    Ok(Some(PaymentState {
        payment_key: key.clone(),
        status: PaymentStatus::parse(status).ok_or_else(|| bad("status"))?,
        currency: get_s(item, "currency")
            .and_then(Currency::from_alpha)
            .ok_or_else(|| bad("currency"))?,
        authorized_minor: get_n(item, "authorized_minor").unwrap_or(0) as u64,
        paid_minor: get_n(item, "paid_minor").unwrap_or(0) as u64,
        refunded_minor: get_n(item, "refunded_minor").unwrap_or(0) as u64,
        version: get_n(item, "version").unwrap_or(0) as u64,
    }))
}

/// Which part of a write was refused.
enum Refusal {
    /// The incoming event's park: it is parked already.
    Parked,
    /// The payment's own item.
    Main,
    /// Another item (an alias's version, an overflow item).
    Other,
}

/// Why the payment's item refused a write.
enum Refused {
    Duplicate,
    Version,
    /// No room inline: this many events are recorded.
    Full(u64),
}

/// One update expression under construction: its clauses and placeholders.
#[derive(Default)]
struct Expr {
    set: Vec<String>,
    add: Vec<String>,
    delete: Vec<String>,
    remove: Vec<String>,
    condition: Vec<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expr {
    fn name(&mut self, attribute: &str) -> String {
        let placeholder = format!("#{}", attribute.replace('_', ""));
        self.names.insert(placeholder.clone(), attribute.to_owned());
        placeholder
    }

    fn value(&mut self, name: &str, v: AttributeValue) -> String {
        let placeholder = format!(":{}", name.replace('_', ""));
        self.values.insert(placeholder.clone(), v);
        placeholder
    }

    /// The condition that a payment's item (or an alias key's) is at
    /// `expected`. Version 0 is no item, or one that only a record-only
    /// write made (an in-process answer, a failed refund before its
    /// payment), which keeps version 0.
    fn version_is(&mut self, expected: u64) -> String {
        let version = self.name("version");
        if expected == 0 {
            let zero = self.value("zero", n(0));
            format!("(attribute_not_exists({version}) OR {version} = {zero})")
        } else {
            let v = self.value("v", n(expected));
            format!("{version} = {v}")
        }
    }

    /// Adds the digests `parked` to the item's `parked` set (events parked
    /// under it) and deletes `unparked` from it; an empty list changes
    /// nothing (DynamoDB refuses an empty set).
    fn park_digests(&mut self, parked: Vec<String>, unparked: Vec<String>) {
        if !parked.is_empty() {
            let (a, d) = (
                self.name("parked"),
                self.value("pd", AttributeValue::Ss(parked)),
            );
            self.add.push(format!("{a} {d}"));
        }
        if !unparked.is_empty() {
            let (a, d) = (
                self.name("parked"),
                self.value("ud", AttributeValue::Ss(unparked)),
            );
            self.delete.push(format!("{a} {d}"));
        }
    }

    fn update_expression(&self) -> String {
        let mut out = format!("SET {}", self.set.join(", "));
        if !self.add.is_empty() {
            out.push_str(&format!(" ADD {}", self.add.join(", ")));
        }
        if !self.delete.is_empty() {
            out.push_str(&format!(" DELETE {}", self.delete.join(", ")));
        }
        if !self.remove.is_empty() {
            out.push_str(&format!(" REMOVE {}", self.remove.join(", ")));
        }
        out
    }
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

    /// The update of the payment's own item for `w`: its version (raised,
    /// or kept), its state, the events it records (`records`, with their
    /// `keys`) inline or, with `spill_at` = the number already recorded,
    /// only counted (their bodies go to an overflow item). Conditional on
    /// the version, on the incoming event being new, and on the room inline
    /// or the count the spill was planned on.
    fn main_expr(w: &LedgerWrite, records: &Records, spill_at: Option<u64>, now: i64) -> Expr {
        let Records {
            records,
            keys,
            attention,
        } = records;
        let mut x = Expr::default();
        let version = x.name("version");
        if w.bumps_version() {
            let v1 = x.value("v1", n(w.expected_version + 1));
            x.set.push(format!("{version} = {v1}"));
        } else {
            let zero = x.value("zero", n(0));
            x.set
                .push(format!("{version} = if_not_exists({version}, {zero})"));
        }
        let expected = x.version_is(w.expected_version);
        x.condition.push(expected);
        let (updated, at) = (x.name("updated_at"), x.value("now", n(now)));
        x.set.push(format!("{updated} = {at}"));
        if let Some(st) = &w.state {
            for (attribute, v) in [
                ("status", s(st.status.as_str())),
                ("currency", s(st.currency.as_str())),
                ("authorized_minor", n(st.authorized_minor)),
                ("paid_minor", n(st.paid_minor)),
                ("refunded_minor", n(st.refunded_minor)),
            ] {
                let (a, v) = (x.name(attribute), x.value(attribute, v));
                x.set.push(format!("{a} = {v}"));
            }
        }
        // The parked events this write found contradicting the payment, for
        // the stream's reader (`stream.rs`): only on the write that found
        // them, so each image says what its own write did.
        let attention_attr = x.name("attention");
        if attention.is_empty() {
            x.remove.push(attention_attr);
        } else {
            let a = x.value("attn", AttributeValue::L(attention.iter().map(s).collect()));
            x.set.push(format!("{attention_attr} = {a}"));
        }
        if let Incoming::Record(r) = &w.incoming {
            let (keys_attr, k) = (
                x.name("keys"),
                x.value("k", s(key_digest(&r.event.event_key))),
            );
            x.condition.push(format!("NOT contains({keys_attr}, {k})"));
        }
        // The item names the events parked under it (`parked`), changed by
        // the same writes as the `PARKED#` items: see `read_once`.
        let (parked, moved) = match &w.incoming {
            Incoming::Park(p) => (vec![key_digest(&p.event.event_key)], Vec::new()),
            Incoming::Record(_) | Incoming::Nothing => (Vec::new(), unparked_from(w, &w.key)),
        };
        x.park_digests(parked, moved);
        if records.is_empty() {
            return x;
        }
        let keys_attr = x.name("keys");
        let ks = x.value("ks", AttributeValue::Ss(keys.to_vec()));
        x.add.push(format!("{keys_attr} {ks}"));
        let (recorded, count) = (x.name("recorded"), x.value("nrec", n(records.len())));
        let zero = x.value("zero", n(0));
        x.set.push(format!(
            "{recorded} = if_not_exists({recorded}, {zero}) + {count}"
        ));
        match spill_at {
            None => {
                let events = x.name("events");
                let empty = x.value("empty", AttributeValue::L(Vec::new()));
                let list = x.value("recs", AttributeValue::L(records.iter().map(s).collect()));
                x.set.push(format!(
                    "{events} = list_append(if_not_exists({events}, {empty}), {list})"
                ));
                // Room for all of them inline (a new item takes them all).
                let limit = x.value("lim", n(INLINE_EVENTS as i64 - records.len() as i64 + 1));
                x.condition.push(format!(
                    "(attribute_not_exists({recorded}) OR {recorded} < {limit})"
                ));
            }
            Some(0) => x
                .condition
                .push(format!("attribute_not_exists({recorded})")),
            Some(c) => {
                let c = x.value("c", n(c));
                x.condition.push(format!("{recorded} = {c}"));
            }
        }
        x
    }

    /// The entry under `key` and whether `event_key` is recorded or parked
    /// there, as of one point in time: a query, read again (consistently)
    /// while its parked items and the payment's item disagree.
    ///
    /// A query reads each item as committed, not a snapshot of them all: a
    /// park committed between its read of the `PARKED#` items and its read
    /// of the payment's item shows the park's version without the parked
    /// event, and a write planned on that passes its version check and
    /// leaves the event parked behind an applied payment. The item's
    /// `parked` set, written with the parked items, tells such a view.
    async fn read_entry(
        &self,
        key: &PaymentKey,
        event_key: Option<&EventKey>,
        freshness: Freshness,
    ) -> Result<Loaded, LedgerError> {
        until_whole(
            || key.to_string(),
            |attempt| {
                let fresh = if attempt == 0 {
                    freshness
                } else {
                    Freshness::Latest
                };
                self.read_once(key, event_key, fresh)
            },
        )
        .await
    }

    /// The items of `key` whose sort keys lie from `from` (up to `to`, when
    /// given), in sort-key order, over all pages of one query.
    async fn payment_items(
        &self,
        key: &PaymentKey,
        from: &str,
        to: Option<&str>,
        consistent: bool,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, LedgerError> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .expression_attribute_values(":pk", s(key.as_str()))
            .expression_attribute_values(":from", s(from))
            .consistent_read(consistent);
        let query = match to {
            Some(to) => query
                .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
                .expression_attribute_values(":to", s(to)),
            None => query.key_condition_expression("pk = :pk AND sk >= :from"),
        };
        let mut pages = query.into_paginator().send();
        let mut items = Vec::new();
        while let Some(page) = pages.next().await {
            items.extend(
                page.map_err(|e| unavailable(describe(&e)))?
                    .items
                    .unwrap_or_default(),
            );
        }
        Ok(items)
    }

    /// One query of [`Self::read_entry`], and how its parked items disagree
    /// with the payment's item, if they do.
    async fn read_once(
        &self,
        key: &PaymentKey,
        event_key: Option<&EventKey>,
        freshness: Freshness,
    ) -> Result<(Loaded, Option<String>), LedgerError> {
        // `PARKED#…` < `STATE` and `EVENTS#…` sorts before both: one query
        // reads the state and the parked events, not the overflow items
        // (the item's `keys` name every recorded event). Eventually
        // consistent when the caller allows it: half the read units.
        let items = self
            .payment_items(key, PARKED, None, freshness == Freshness::Latest)
            .await?;
        let mut entry = PaymentEntry::default();
        let mut seen = false;
        let mut named: Vec<String> = Vec::new();
        for item in items {
            let sk = get_s(&item, "sk").unwrap_or_default();
            if sk == STATE {
                seen = event_key.is_some_and(|k| has_key(&item, k));
                named = item
                    .get("parked")
                    .and_then(|p| p.as_ss().ok())
                    .cloned()
                    .unwrap_or_default();
                let version = get_n(&item, "version")
                    .ok_or_else(|| unavailable(format!("stored version of {key} is invalid")))?;
                entry.version = version as u64;
                entry.alias_of = get_s(&item, "alias_of").map(PaymentKey::from_stored);
                entry.state = state_of(&item, key)?;
            } else if sk.starts_with(PARKED) {
                entry.parked.push(parked_from(&item).ok_or_else(|| {
                    unavailable(format!("stored parked event {sk} of {key} is invalid"))
                })?);
            }
        }
        entry.parked.sort_by(|a, b| {
            a.parked_at
                .cmp(&b.parked_at)
                .then_with(|| a.event.event_key.cmp(&b.event.event_key))
        });
        seen |= event_key.is_some_and(|k| entry.parked.iter().any(|p| &p.event.event_key == k));
        let mut read: Vec<String> = entry
            .parked
            .iter()
            .map(|p| key_digest(&p.event.event_key))
            .collect();
        read.sort_unstable();
        named.sort_unstable();
        let torn = (read != named).then(|| {
            format!(
                "parked events never matching its item ({} parked items read, the item names {})",
                read.len(),
                named.len()
            )
        });
        Ok((Loaded { entry, seen }, torn))
    }

    /// The attributes `names` of the payment's item, read consistently
    /// (empty when there is none).
    async fn payment_item(
        &self,
        key: &PaymentKey,
        names: &[&str],
    ) -> Result<HashMap<String, AttributeValue>, LedgerError> {
        let placeholders: Vec<String> = (0..names.len()).map(|i| format!("#a{i}")).collect();
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(key.as_str()))
            .key("sk", s(STATE))
            .projection_expression(placeholders.join(", "))
            .set_expression_attribute_names(Some(
                placeholders
                    .into_iter()
                    .zip(names.iter().map(|n| (*n).to_owned()))
                    .collect(),
            ))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable(describe(&e)))?;
        Ok(out.item.unwrap_or_default())
    }

    /// Why the payment's item refused `w`, read back consistently.
    async fn refused(&self, w: &LedgerWrite) -> Result<Refused, LedgerError> {
        let item = self
            .payment_item(&w.key, &["version", "keys", "recorded"])
            .await?;
        if let Incoming::Record(r) = &w.incoming {
            if has_key(&item, &r.event.event_key) {
                return Ok(Refused::Duplicate);
            }
        }
        if get_n(&item, "version").unwrap_or(0) as u64 != w.expected_version {
            return Ok(Refused::Version);
        }
        Ok(Refused::Full(get_n(&item, "recorded").unwrap_or(0) as u64))
    }

    /// Tries `w` once: `Ok(None)` when it was applied, else which item refused.
    async fn try_write(
        &self,
        w: &LedgerWrite,
        records: &Records,
        spill_at: Option<u64>,
        now: i64,
    ) -> Result<Option<Refusal>, LedgerError> {
        let key = w.key.as_str();
        let x = Self::main_expr(w, records, spill_at, now);
        let alone = matches!(w.incoming, Incoming::Record(_))
            && w.unparked.is_empty()
            && w.conflicts.is_empty()
            && w.aliases.is_empty()
            && spill_at.is_none();
        if alone {
            let result = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("pk", s(key))
                .key("sk", s(STATE))
                .update_expression(x.update_expression())
                .condition_expression(x.condition.join(" AND "))
                .set_expression_attribute_names(Some(x.names))
                .set_expression_attribute_values(Some(x.values))
                .send()
                .await;
            return match result {
                Ok(_) => Ok(None),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
                {
                    Ok(Some(Refusal::Main))
                }
                Err(e) => Err(unavailable(describe(&e))),
            };
        }
        let mut items = Vec::new();
        // The incoming park first: its condition decides `Duplicate`.
        if let Incoming::Park(p) = &w.incoming {
            items.push(self.put_parked(key, p, true)?);
        }
        let main = items.len();
        items.push(
            TransactWriteItem::builder()
                .update(built(
                    Update::builder()
                        .table_name(&self.table)
                        .key("pk", s(key))
                        .key("sk", s(STATE))
                        .update_expression(x.update_expression())
                        .condition_expression(x.condition.join(" AND "))
                        .set_expression_attribute_names(Some(x.names))
                        .set_expression_attribute_values(Some(x.values))
                        .build(),
                )?)
                .build(),
        );
        if let Some(first) = spill_at {
            let item = HashMap::from([
                ("pk".to_owned(), s(key)),
                ("sk".to_owned(), s(overflow_sk(first))),
                (
                    "events".to_owned(),
                    AttributeValue::L(records.records.iter().map(s).collect()),
                ),
            ]);
            items.push(self.put_item(item, true)?);
        }
        for r in &w.unparked {
            if let Some(from) = &r.unparked_from {
                items.push(
                    TransactWriteItem::builder()
                        .delete(built(
                            // Still parked: a query may have shown it
                            // after another write had unparked it (a query
                            // is read-committed per item, not a snapshot).
                            Delete::builder()
                                .table_name(&self.table)
                                .key("pk", s(from.as_str()))
                                .key("sk", s(parked_sk(&r.event.event_key)))
                                .condition_expression("attribute_exists(pk)")
                                .build(),
                        )?)
                        .build(),
                );
            }
        }
        for p in &w.conflicts {
            items.push(self.put_parked(p.payment_key.as_str(), &p.parked, false)?);
        }
        for a in &w.aliases {
            let moved = unparked_from(w, &a.key);
            items.push(self.alias_update(a.key.as_str(), a.expected_version, key, moved, now)?);
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
            Ok(_) => Ok(None),
            Err(e) => {
                if let Some(aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c)) =
                    e.as_service_error()
                {
                    let codes: Vec<&str> =
                        c.cancellation_reasons().iter().map(|r| r.code().unwrap_or("None")).collect();
                    let failed = |i: usize| codes.get(i) == Some(&"ConditionalCheckFailed");
                    if matches!(w.incoming, Incoming::Park(_)) && failed(0) {
                        return Ok(Some(Refusal::Parked));
                    }
                    if failed(main) {
                        return Ok(Some(Refusal::Main));
                    }
                    if codes.contains(&"ConditionalCheckFailed") {
                        return Ok(Some(Refusal::Other));
                    }
                    // TransactionConflict, throttling: transient.
                    return Err(unavailable(format!("transaction cancelled: {codes:?}")));
                }
                Err(unavailable(describe(&e)))
            }
        }
    }

    /// A transaction put of `item`: only if no item has its key (`new`), else
    /// only if one does (a parked event rewritten with its conflict must
    /// still be parked).
    fn put_item(
        &self,
        item: HashMap<String, AttributeValue>,
        new: bool,
    ) -> Result<TransactWriteItem, LedgerError> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(if new {
                "attribute_not_exists(pk)"
            } else {
                "attribute_exists(pk)"
            });
        Ok(TransactWriteItem::builder()
            .put(built(put.build())?)
            .build())
    }

    fn put_parked(
        &self,
        key: &str,
        p: &ParkedEvent,
        new: bool,
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
        self.put_item(item, new)
    }

    /// One query of a payment's recorded events (the item's own, then its
    /// overflow items'), and how they fall short of the item's count, if
    /// they do.
    async fn history_once(
        &self,
        key: &PaymentKey,
    ) -> Result<(Vec<EventRecord>, Option<String>), LedgerError> {
        // The payment's item (its first events) sorts after its overflow
        // items (`EVENTS#…` < `STATE`): one query reads both, in order
        // once the item's own come first.
        let items = self.payment_items(key, OVERFLOW, Some(STATE), true).await?;
        let (mut inline, mut overflow, mut recorded) = (Vec::new(), Vec::new(), 0);
        for item in items {
            match get_s(&item, "sk") {
                Some(STATE) => {
                    inline = stored_events(&item)?;
                    recorded = get_n(&item, "recorded").unwrap_or(0) as u64;
                }
                Some(sk) if sk.starts_with(OVERFLOW) => overflow.extend(stored_events(&item)?),
                _ => {}
            }
        }
        let events: Vec<EventRecord> = inline.into_iter().chain(overflow).collect();
        let torn = (events.len() as u64 != recorded)
            .then(|| format!("{} events read, the item counts {recorded}", events.len()));
        Ok((events, torn))
    }

    /// The update that makes `key` (no payment, at most parked events) an
    /// alias of `target` at `expected_version + 1`; `moved` are the digests
    /// of its parked events this write unparks.
    fn alias_update(
        &self,
        key: &str,
        expected_version: u64,
        target: &str,
        moved: Vec<String>,
        now: i64,
    ) -> Result<TransactWriteItem, LedgerError> {
        let mut x = Expr::default();
        for (attribute, v) in [
            ("version", n(expected_version + 1)),
            ("alias_of", s(target)),
            ("updated_at", n(now)),
        ] {
            let (a, v) = (x.name(attribute), x.value(attribute, v));
            x.set.push(format!("{a} = {v}"));
        }
        x.park_digests(Vec::new(), moved);
        let condition = x.version_is(expected_version);
        Ok(TransactWriteItem::builder()
            .update(built(
                Update::builder()
                    .table_name(&self.table)
                    .key("pk", s(key))
                    .key("sk", s(STATE))
                    .update_expression(x.update_expression())
                    .condition_expression(condition)
                    .set_expression_attribute_names(Some(x.names))
                    .set_expression_attribute_values(Some(x.values))
                    .build(),
            )?)
            .build())
    }
}

#[async_trait]
impl Ledger for DynamoLedger {
    async fn load(&self, key: &PaymentKey) -> Result<PaymentEntry, LedgerError> {
        Ok(self.read_entry(key, None, Freshness::Latest).await?.entry)
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
                .map_err(|e| unavailable(describe(&e)))?
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

#[async_trait]
impl WatchStore for DynamoLedger {
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
