//! Writes of a payment: the update expression of its item, and the
//! transaction when a write touches more than that item.

use super::*;

/// The digests of the events `w` unparks from under `key`.
pub(super) fn unparked_from(w: &LedgerWrite, key: &PaymentKey) -> Vec<String> {
    w.unparked
        .iter()
        .filter(|r| r.unparked_from.as_ref() == Some(key))
        .map(|r| key_digest(&r.event.event_key))
        .collect()
}

/// The merchant's order id a write records (its incoming event's, or an
/// unparked one's: only an event that creates a payment names one).
pub(super) fn order_of(w: &LedgerWrite) -> Option<&str> {
    let incoming = match &w.incoming {
        Incoming::Record(r) => Some(&r.event),
        Incoming::Park(_) | Incoming::Nothing => None,
    };
    incoming
        .into_iter()
        .chain(w.unparked.iter().map(|r| &r.event))
        .find_map(|e| e.order_id.as_deref())
}

/// What one write stores of its events: the stored events recorded, their
/// keys' digests, and the conflicting parked events it found (JSON of each
/// [`ParkedEvent`]).
pub(super) struct Records {
    pub(super) records: Vec<String>,
    pub(super) keys: Vec<String>,
    pub(super) attention: Vec<String>,
}

/// Which part of a write was refused.
pub(super) enum Refusal {
    /// The incoming event's park: it is parked already.
    Parked,
    /// The payment's own item.
    Main,
    /// Another item (an alias's version, an overflow item).
    Other,
}

/// Why the payment's item refused a write.
pub(super) enum Refused {
    Duplicate,
    Version,
    /// No room inline: this many events are recorded.
    Full(u64),
}

impl DynamoLedger {
    /// The update of the payment's own item for `w`: its version (raised,
    /// or kept), its state, the events it records (`records`, with their
    /// `keys`) inline or, with `spill_at` = the number already recorded,
    /// only counted (their bodies go to an overflow item). Conditional on
    /// the version, on the incoming event being new, and on the room inline
    /// or the count the spill was planned on.
    pub(super) fn main_expr(
        &self,
        w: &LedgerWrite,
        records: &Records,
        spill_at: Option<u64>,
        now: i64,
    ) -> Expr {
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
        // The merchant's order, from the event that creates the payment
        // (the `orders` index's key; kept once set, so that later writes
        // change nothing the index holds). Not at all with the index off.
        if let Some(order) = order_of(w).filter(|_| self.order_index) {
            let (a, v) = (x.name("gsi_order"), x.value("order", s(order)));
            x.set.push(format!("{a} = if_not_exists({a}, {v})"));
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

    /// Why the payment's item refused `w`, read back consistently.
    pub(super) async fn refused(&self, w: &LedgerWrite) -> Result<Refused, LedgerError> {
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
    pub(super) async fn try_write(
        &self,
        w: &LedgerWrite,
        records: &Records,
        spill_at: Option<u64>,
        now: i64,
    ) -> Result<Option<Refusal>, LedgerError> {
        let x = self.main_expr(w, records, spill_at, now);
        let alone = matches!(w.incoming, Incoming::Record(_))
            && w.unparked.is_empty()
            && w.conflicts.is_empty()
            && w.aliases.is_empty()
            && spill_at.is_none();
        if alone {
            return self.update_alone(w.key.as_str(), x).await;
        }
        let (items, main) = self.transaction(w, records, spill_at, x, now)?;
        if items.len() > MAX_TRANSACTION_ITEMS {
            return Err(unavailable(format!(
                "a write of {} items exceeds DynamoDB's {MAX_TRANSACTION_ITEMS} per transaction",
                items.len()
            )));
        }
        match self.transact(items).await? {
            Ok(()) => Ok(None),
            Err(codes) => {
                let codes: Vec<&str> = codes.iter().map(String::as_str).collect();
                refused(w, main, &codes)
            }
        }
    }

    /// A write that only records an event on the state item: one
    /// `UpdateItem` instead of a transaction.
    async fn update_alone(&self, key: &str, x: Expr) -> Result<Option<Refusal>, LedgerError> {
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
        match result {
            Ok(_) => Ok(None),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(Some(Refusal::Main))
            }
            Err(e) => Err(unavailable(cause(e))),
        }
    }

    /// The items of a write's transaction, and which of them is the state
    /// item's update.
    fn transaction(
        &self,
        w: &LedgerWrite,
        records: &Records,
        spill_at: Option<u64>,
        x: Expr,
        now: i64,
    ) -> Result<(Vec<TransactWriteItem>, usize), LedgerError> {
        let key = w.key.as_str();
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
        Ok((items, main))
    }

    /// A transaction put of `item`: only if no item has its key (`new`), else
    /// only if one does (a parked event rewritten with its conflict must
    /// still be parked).
    pub(super) fn put_item(
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

    pub(super) fn put_parked(
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

    /// The update that makes `key` (no payment, at most parked events) an
    /// alias of `target` at `expected_version + 1`; `moved` are the digests
    /// of its parked events this write unparks.
    pub(super) fn alias_update(
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

/// What a cancelled transaction's reasons (one code per item, `main` the
/// state item's) say: which condition refused it, or, with none failed
/// (a transaction conflict, throttling), a transient error.
fn refused(w: &LedgerWrite, main: usize, codes: &[&str]) -> Result<Option<Refusal>, LedgerError> {
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
    Err(unavailable(format!("transaction cancelled: {codes:?}")))
}
