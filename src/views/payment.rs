//! One payment as the ledger holds it: its state, its events and what is
//! parked, in the JSON `paynotify txn get --json` prints and the read API
//! answers (amounts as decimals in their currency, times in RFC 3339).

use paynotify_shared::backend::Backends;
use paynotify_shared::ports::{EventRecord, ParkedEvent, PaymentEntry};
use paynotify_shared::{PaymentKey, PaymentState};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;

/// What the ledger holds for one payment.
pub struct Found {
    pub key: PaymentKey,
    /// The reference asked for is a completion of `key`.
    pub via_alias: bool,
    pub state: Option<PaymentState>,
    pub history: Vec<EventRecord>,
    pub parked: Vec<ParkedEvent>,
}

impl Found {
    /// Whether the ledger knows the payment at all.
    pub fn exists(&self) -> bool {
        self.state.is_some() || !self.history.is_empty() || !self.parked.is_empty()
    }

    /// The merchant's order id, as the event that created the payment
    /// named it.
    pub fn order_id(&self) -> Option<&str> {
        self.history
            .iter()
            .find_map(|e| e.event.as_ref()?.order_id.as_deref())
    }

    /// The JSON of `txn get --json` and of the read API.
    pub fn to_json(&self) -> Value {
        json!({
            "payment_key": self.key,
            "order_id": self.order_id(),
            "state": self.state.as_ref().map(state_json),
            "history": self.history.iter().map(event_json).collect::<Vec<_>>(),
            "parked": self.parked.iter().map(parked_json).collect::<Vec<_>>(),
        })
    }
}

/// The most notifications one payment's expanded answer looks up.
pub const MAX_EXPANDED: usize = 50;

impl Found {
    /// [`Found::to_json`] with, on each event and parked event, where the
    /// archive holds its notification (`archive_key`) and the notification
    /// verified again at its receive time with the configuration now
    /// (`verification`: `valid`, or the failing `step` and why): `null`
    /// for a notification that is not among the archive's received ones
    /// (a status query's or a settlement file's) or past the first
    /// [`MAX_EXPANDED`]. Each is found in the archive by its id (its hour's
    /// keys): a read of the archive per notification, only when asked.
    ///
    /// # Errors
    /// The archive's, or a source's verifier that cannot be loaded.
    pub async fn to_json_expanded(
        &self,
        config: &paynotify_shared::config::Config,
        backends: &Backends,
    ) -> anyhow::Result<Value> {
        let mut out = self.to_json();
        let ids: Vec<&str> = self
            .history
            .iter()
            .map(|e| e.notification_id.as_str())
            .chain(self.parked.iter().map(|p| p.notification_id.as_str()))
            .collect();
        let mut verifiers = super::dead_letters::Verifiers::new(config, backends);
        let mut seen = std::collections::HashMap::new();
        for id in ids {
            if seen.contains_key(id) {
                continue;
            }
            let value = if seen.len() < MAX_EXPANDED {
                expanded(backends, &mut verifiers, id).await?
            } else {
                (Value::Null, Value::Null)
            };
            seen.insert(id.to_owned(), value);
        }
        for list in ["history", "parked"] {
            for entry in out[list].as_array_mut().into_iter().flatten() {
                let id = entry["notification_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let (archive_key, verification) = seen.get(&id).cloned().unwrap_or_default();
                entry["archive_key"] = archive_key;
                entry["verification"] = verification;
            }
        }
        Ok(out)
    }
}

/// Where notification `id` is archived and its verdict now; nulls when it
/// is not among the received notifications.
async fn expanded(
    backends: &Backends,
    verifiers: &mut super::dead_letters::Verifiers<'_>,
    id: &str,
) -> anyhow::Result<(Value, Value)> {
    let Some((location, envelope)) = super::notification::find(backends, id).await? else {
        return Ok((Value::Null, Value::Null));
    };
    let body = envelope.body_bytes().unwrap_or_default();
    let full = verifiers.verification(&envelope, &body).await?;
    let mut verdict = json!({ "valid": full["valid"] });
    for k in ["error", "step", "message", "ignored"] {
        if !full[k].is_null() {
            verdict[k] = full[k].clone();
        }
    }
    let text = verdict.to_string();
    let masked = paynotify_shared::telemetry::mask_card_numbers(&text);
    Ok((json!(location.to_string()), serde_json::from_str(&masked)?))
}

/// The payment `reference` names (a pre-authorization completion's own id
/// leads to its payment), with its events and what is parked.
///
/// # Errors
/// Ledger errors.
pub async fn find_payment(
    backends: &Backends,
    source: &str,
    merchant: &str,
    reference: &str,
) -> anyhow::Result<Found> {
    let mut key = PaymentKey::new(source, merchant, reference);
    let mut entry = backends.ledger.load(&key).await?;
    let via_alias = entry.alias_of.is_some();
    if let Some(target) = entry.alias_of.clone() {
        key = target;
        entry = backends.ledger.load(&key).await?;
    }
    with_history(backends, key, entry, via_alias).await
}

/// `entry`, read under `key`, with the payment's events.
async fn with_history(
    backends: &Backends,
    key: PaymentKey,
    entry: PaymentEntry,
    via_alias: bool,
) -> anyhow::Result<Found> {
    let history = backends.ledger.history(&key).await?;
    Ok(Found {
        key,
        via_alias,
        state: entry.state,
        history,
        parked: entry.parked,
    })
}

/// The most payments one order id lists.
pub const MAX_PER_ORDER: usize = 100;

/// Why payments cannot be found by order id on this backend, if they
/// cannot: a DynamoDB ledger whose writes leave the order out
/// (`backend.aws.order_index = false`).
pub fn order_lookup_refused(
    config: &paynotify_shared::config::BackendConfig,
) -> Option<&'static str> {
    (config.kind == paynotify_shared::config::BackendKind::Aws && !config.aws.order_index).then_some(
        "payments are not indexed by order id here (backend.aws.order_index = false): find them by the PSP's id",
    )
}

/// The payments whose creating event named `order_id` as the merchant's
/// order (several when an order was paid again after a failure, or at two
/// sources), each as [`find_payment`] reads it, in key order.
///
/// # Errors
/// Ledger errors.
pub async fn find_by_order(backends: &Backends, order_id: &str) -> anyhow::Result<Vec<Found>> {
    let keys = backends
        .ledger
        .payments_by_order(order_id, MAX_PER_ORDER)
        .await?;
    let mut found = Vec::with_capacity(keys.len());
    for key in keys {
        let entry = backends.ledger.load(&key).await?;
        found.push(with_history(backends, key, entry, false).await?);
    }
    Ok(found)
}

/// The search a query's parameters ask for (`source`, `merchant`,
/// `status`, `from`, `to` in RFC 3339, `cursor`, `limit` 1 to 1000,
/// 100 when absent); what is wrong with them otherwise.
///
/// # Errors
/// A parameter that is not valid, said in words.
pub fn search_of(
    query: &std::collections::HashMap<String, String>,
) -> Result<paynotify_shared::ports::PaymentSearch, String> {
    use paynotify_shared::ports::{PaymentSearch, SearchCursor};
    let given = |name: &str| query.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let at = |name: &str| {
        given(name)
            .map(|v| {
                time::OffsetDateTime::parse(v, &Rfc3339)
                    .map_err(|_| format!("{name} is a time in RFC 3339 (2026-12-06T03:00:00Z)"))
            })
            .transpose()
    };
    let status = given("status")
        .map(|s| {
            paynotify_shared::PaymentStatus::parse(s).ok_or_else(|| {
                "status is AUTHORIZED, PAID, FAILED, PARTIALLY_REFUNDED, REFUNDED or VOIDED"
                    .to_owned()
            })
        })
        .transpose()?;
    let limit = super::limit_of(given("limit"))?;
    let after = given("cursor")
        .map(|c| SearchCursor::decode(c).ok_or("cursor is not one a page gave"))
        .transpose()?;
    let source = given("source").map(str::to_owned);
    let merchant = given("merchant").map(str::to_owned);
    if merchant.is_some() && source.is_none() {
        return Err("merchant needs source".into());
    }
    Ok(PaymentSearch {
        source,
        merchant,
        status,
        updated_from: at("from")?,
        updated_to: at("to")?,
        after,
        limit,
    })
}

/// A page of a search as the read API answers it.
pub fn page_json(page: &paynotify_shared::ports::PaymentPage) -> Value {
    let payments: Vec<Value> = page
        .payments
        .iter()
        .map(|p| {
            let mut v = state_json(&p.state);
            v["payment_key"] = json!(p.state.payment_key);
            v["order_id"] = json!(p.order_id);
            v["updated_at"] = json!(time(p.updated_at));
            v
        })
        .collect();
    json!({ "payments": payments, "next": page.next.as_ref().map(|c| c.encode()) })
}

pub fn time(t: time::OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

pub fn state_json(s: &PaymentState) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    let c = s.currency;
    v["paid"] = c.decimal(s.paid_minor).into();
    v["refunded"] = c.decimal(s.refunded_minor).into();
    v["authorized"] = c.decimal(s.authorized_minor).into();
    v
}

pub fn event_json(e: &EventRecord) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    v["amount"] = paynotify_shared::Currency::from_alpha(&e.currency)
        .map(|c| Value::from(c.decimal(e.amount_minor)))
        .unwrap_or(Value::Null);
    v
}

pub fn parked_json(p: &ParkedEvent) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or_default();
    v["amount"] = p.event.amount.currency.decimal(p.event.amount.minor).into();
    v
}
