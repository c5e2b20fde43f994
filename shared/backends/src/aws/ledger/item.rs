//! How the payment's items keep what is recorded: the compact stored
//! events, event key digests, the parked and state attributes.

use super::*;

pub(in crate::aws) fn overflow_sk(first_index: u64) -> String {
    format!("{OVERFLOW}{first_index:010}")
}

pub(super) fn parked_sk(event_key: &EventKey) -> String {
    format!("{PARKED}{event_key}")
}

pub(super) fn parked_from(item: &HashMap<String, AttributeValue>) -> Option<ParkedEvent> {
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
pub(super) struct StoredEvent {
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
    /// The merchant's order id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    oi: Option<String>,
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
pub(super) fn key_digest(event_key: &EventKey) -> String {
    use base64::Engine;
    use sha2::Digest;
    let digest = sha2::Sha256::digest(event_key.as_str().as_bytes());
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(&digest[..16])
}

/// Whether a payment's item records `event_key`.
pub(super) fn has_key(item: &HashMap<String, AttributeValue>, event_key: &EventKey) -> bool {
    item.get("keys")
        .and_then(|k| k.as_ss().ok())
        .is_some_and(|k| k.contains(&key_digest(event_key)))
}

/// `source#merchant#reference` split into its parts (the reference may hold `#`).
pub(super) fn key_parts(key: &str) -> (&str, &str, &str) {
    let mut parts = key.splitn(3, '#');
    (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    )
}

impl StoredEvent {
    /// `r` as stored in the item of payment key `pk`.
    pub(super) fn json(r: &RecordedEvent, pk: &str, now: i64) -> Result<String, LedgerError> {
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
            oi: e.order_id.clone(),
            pk: differs(key, pk),
            src: differs(&e.source, src),
            mer: differs(&e.merchant, mer),
            rf: differs(&e.payment_ref, rf),
        }))
    }

    /// The event recorded in the item of payment key `pk`.
    pub(super) fn record(self, pk: &str) -> EventRecord {
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
            order_id: self.oi,
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
pub(in crate::aws) fn stored_events(
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

/// The payment's state its item holds (none before its first state, and in
/// an alias), at the item's version (0 when it has none).
pub(in crate::aws) fn state_of(
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
