//! Reads of a payment's items: one query of its item and parked items,
//! read again while they disagree; its history; the sparse indexes.

use super::*;

/// Reads with `read` (given the attempt, from 0) until a read is whole
/// (`None` for how it is torn), at most [`TORN_READS`] times, then gives
/// up as unavailable, naming `what` was read (the message is retried
/// later).
pub(super) async fn until_whole<T, F, Fut>(
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

impl DynamoLedger {
    /// The first `limit` items of a sparse index: `condition` over the
    /// `values` it names, in the index's order.
    pub(super) async fn index_items(
        &self,
        index: &str,
        condition: &str,
        values: &[(&str, AttributeValue)],
        limit: usize,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, LedgerError> {
        let values = values
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(index)
            .key_condition_expression(condition)
            .set_expression_attribute_values(Some(values))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            for item in page
                .map_err(|e| unavailable(cause(e)))?
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
    pub(super) async fn read_entry(
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
    pub(super) async fn payment_items(
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
                page.map_err(|e| unavailable(cause(e)))?
                    .items
                    .unwrap_or_default(),
            );
        }
        Ok(items)
    }

    /// One query of [`Self::read_entry`], and how its parked items disagree
    /// with the payment's item, if they do.
    pub(super) async fn read_once(
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
    pub(super) async fn payment_item(
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
            .map_err(|e| unavailable(cause(e)))?;
        Ok(out.item.unwrap_or_default())
    }

    /// One query of a payment's recorded events (the item's own, then its
    /// overflow items'), and how they fall short of the item's count, if
    /// they do.
    pub(super) async fn history_once(
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
}
