//! A PSP simulator: builds notifications shaped like UnionPay's (signed
//! with a test PKI's signing key), Standard Webhooks' (JSON events signed
//! with a `whsec_` secret, see [`STANDARD_WEBHOOKS_EVENTS`]) or Stripe's
//! (`Simulator::stripe`), and POSTs them
//! over real HTTP, retrying on anything but 200 the way a PSP does.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use paynotify_shared::scheme::unionpay::{sign_fields, Fields, MerchantSigner};
use paynotify_shared::scheme::webhook::HmacKey;
use time::macros::{format_description, offset};
use time::OffsetDateTime;

mod mix;

pub use mix::*;

/// Delivery attempts before the simulator gives up on a notification.
const MAX_ATTEMPTS: u32 = 6;

/// The event types the simulator sends to a Standard Webhooks source, and
/// what they mean there; its bodies are
/// `{"type": T, "data": {"id", "payment", "amount", "currency", "merchant"}}`
/// ([`standard_webhooks_toml`] is the matching source configuration).
pub const STANDARD_WEBHOOKS_EVENTS: &[(&str, &str)] = &[
    ("payment.succeeded", "payment"),
    ("payment.failed", "payment_failed"),
    ("authorization.succeeded", "authorization"),
    ("capture.succeeded", "capture"),
    ("authorization.voided", "authorization_void"),
    ("refund.succeeded", "refund"),
    ("payment.voided", "void"),
];

/// The `[sources.NAME.standard_webhooks]` tables that read the simulator's
/// events, with `secret` (a `file:`/`secretsmanager:` reference).
pub fn standard_webhooks_toml(name: &str, secret: &str) -> String {
    let events: String = STANDARD_WEBHOOKS_EVENTS
        .iter()
        .map(|(t, m)| format!("\"{t}\" = \"{m}\"\n"))
        .collect();
    format!(
        "[sources.{name}.standard_webhooks]\nsecrets = [\"{secret}\"]\n\
         [sources.{name}.standard_webhooks.fields]\nevent_type = \"/type\"\n\
         payment_ref = \"/data/payment\"\namount = \"/data/amount\"\n\
         currency = \"/data/currency\"\nmerchant = \"/data/merchant\"\ntxn_id = \"/data/id\"\n\
         [sources.{name}.standard_webhooks.events]\n{events}"
    )
}

/// How the simulator signs (one per simulator).
#[allow(clippy::large_enum_variant)]
enum Signer {
    UnionPay {
        signer: MerchantSigner,
        leaf_pem: String,
    },
    /// HMAC `v1` signatures, computed when a notification is sent.
    StandardWebhooks(HmacKey),
    /// `Stripe-Signature`, computed when a notification is sent; refunds
    /// carry each payment's cumulative `amount_refunded`, as Stripe's do.
    Stripe {
        key: HmacKey,
        refunded: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    },
    /// An HMAC in each item (Adyen), computed when the body is built.
    Adyen(paynotify_shared::scheme::adyen::AdyenVerifier),
}

/// Signs notifications as a PSP would, with a test key.
pub struct Simulator {
    signer: Signer,
    pub merchant: String,
    client: reqwest::Client,
    url: String,
}

/// The result of sending one notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Answered 200 after this many attempts.
    Accepted(u32),
    /// Never answered 200.
    Failed(u16),
}

impl Simulator {
    /// A simulator signing with `key_pem` and embedding `leaf_pem`.
    ///
    /// # Errors
    /// When the key cannot be read.
    pub fn new(
        key_pem: &[u8],
        leaf_pem: &str,
        merchant: &str,
        url: &str,
    ) -> anyhow::Result<Arc<Self>> {
        Self::with_signer(
            Signer::UnionPay {
                signer: MerchantSigner::from_pkcs8(key_pem)?,
                leaf_pem: leaf_pem.to_owned(),
            },
            merchant,
            url,
        )
    }

    fn with_signer(signer: Signer, merchant: &str, url: &str) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            signer,
            merchant: merchant.to_owned(),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()?,
            url: url.to_owned(),
        }))
    }

    /// A simulator of a Standard Webhooks sender signing with `secret`
    /// (`whsec_…`), its events as [`STANDARD_WEBHOOKS_EVENTS`] describes.
    ///
    /// # Errors
    /// When the secret is not base64.
    pub fn standard_webhooks(secret: &str, merchant: &str, url: &str) -> anyhow::Result<Arc<Self>> {
        let b64 = secret.trim();
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64.strip_prefix("whsec_").unwrap_or(b64))?;
        Self::with_signer(Signer::StandardWebhooks(HmacKey::new(&key)), merchant, url)
    }

    /// A simulator of Stripe's webhooks signing with the endpoint secret
    /// `secret` (`whsec_…`): `payment_intent.succeeded` for purchases,
    /// `charge.refunded` with the cumulative amount for refunds; what
    /// Stripe has no notification for here (voids, pre-authorizations) is
    /// sent as `payment_intent.canceled` or `.amount_capturable_updated`,
    /// which a Stripe source ignores.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn stripe(secret: &str, merchant: &str, url: &str) -> anyhow::Result<Arc<Self>> {
        Self::with_signer(
            Signer::Stripe {
                key: HmacKey::new(secret.trim().as_bytes()),
                refunded: std::sync::Mutex::default(),
            },
            merchant,
            url,
        )
    }

    /// A simulator of Adyen's standard notifications for merchant account
    /// `merchant`, each item signed with `hex_key`: AUTHORISATION for
    /// purchases (a source with automatic capture), REFUND, and
    /// CANCEL_OR_REFUND for voids; one item per notification
    /// ([`Simulator::adyen_batch`] joins several).
    ///
    /// # Errors
    /// When the key is not hex.
    pub fn adyen(hex_key: &str, merchant: &str, url: &str) -> anyhow::Result<Arc<Self>> {
        let config = paynotify_shared::config::AdyenConfig {
            hmac_keys: vec![],
            capture: paynotify_shared::config::CaptureMode::Automatic,
        };
        let signer = paynotify_shared::scheme::adyen::AdyenVerifier::new(
            &config,
            &[hex_key.trim().to_owned()],
            &[merchant.to_owned()],
        )?;
        Self::with_signer(Signer::Adyen(signer), merchant, url)
    }

    /// One notification holding the items of `bodies` (each built by this
    /// Adyen simulator), in order.
    pub fn adyen_batch(bodies: &[String]) -> String {
        let items: Vec<serde_json::Value> = bodies
            .iter()
            .filter_map(|b| serde_json::from_str::<serde_json::Value>(b).ok())
            .filter_map(|v| v["notificationItems"].as_array().cloned())
            .flatten()
            .collect();
        serde_json::json!({"live": "false", "notificationItems": items}).to_string()
    }

    /// An Adyen notification of one signed item for `txn_type` (UnionPay's codes).
    fn adyen_item(
        &self,
        signer: &paynotify_shared::scheme::adyen::AdyenVerifier,
        txn_type: &str,
        orig: Option<&str>,
        psp_reference: &str,
        amount: u64,
    ) -> String {
        let code = match txn_type {
            "04" => "REFUND",
            "31" | "33" => "CANCEL_OR_REFUND",
            "32" => "CANCELLATION",
            "03" => "CAPTURE",
            _ => "AUTHORISATION",
        };
        let mut item = serde_json::json!({
            "pspReference": psp_reference,
            "merchantAccountCode": self.merchant,
            "merchantReference": format!("order-{}", orig.unwrap_or(psp_reference)),
            "amount": {"currency": "CNY", "value": amount},
            "eventCode": code,
            "eventDate": OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            "success": "true",
            "paymentMethod": "visa",
        });
        if let Some(o) = orig {
            item["originalReference"] = serde_json::json!(o);
        }
        let signature = signer.sign(&item).unwrap_or_default();
        item["additionalData"] = serde_json::json!({ "hmacSignature": signature });
        serde_json::json!({
            "live": "false",
            "notificationItems": [{ "NotificationRequestItem": item }],
        })
        .to_string()
    }

    /// A Stripe event body of `txn_type` (UnionPay's codes).
    fn stripe_event(
        &self,
        refunded: &std::sync::Mutex<std::collections::HashMap<String, u64>>,
        txn_type: &str,
        payment: &str,
        id: &str,
        amount: u64,
    ) -> String {
        let created = OffsetDateTime::now_utc().unix_timestamp();
        let (event_type, object) = match txn_type {
            "01" => (
                "payment_intent.succeeded",
                serde_json::json!({"id": payment, "object": "payment_intent", "amount": amount,
                                   "amount_received": amount, "currency": "cny", "status": "succeeded"}),
            ),
            "04" => {
                let total = {
                    let mut r = refunded.lock().unwrap_or_else(|e| e.into_inner());
                    let t = r.entry(payment.to_owned()).or_default();
                    *t += amount;
                    *t
                };
                (
                    "charge.refunded",
                    serde_json::json!({"id": format!("ch_{payment}"), "object": "charge",
                                       "payment_intent": payment, "amount_refunded": total,
                                       "currency": "cny", "refunded": true}),
                )
            }
            "02" => (
                "payment_intent.amount_capturable_updated",
                serde_json::json!({"id": payment, "object": "payment_intent", "amount": amount, "currency": "cny"}),
            ),
            _ => (
                "payment_intent.canceled",
                serde_json::json!({"id": payment, "object": "payment_intent", "amount": amount, "currency": "cny"}),
            ),
        };
        serde_json::json!({
            "id": format!("evt_{txn_type}_{id}"), "object": "event", "type": event_type,
            "created": created, "livemode": false, "data": {"object": object},
        })
        .to_string()
    }

    /// A Standard Webhooks event body (see [`STANDARD_WEBHOOKS_EVENTS`]).
    fn event(&self, event_type: &str, payment: &str, id: &str, amount: u64) -> String {
        serde_json::json!({
            "type": event_type,
            "data": {
                "id": id, "payment": payment, "amount": amount,
                "currency": "CNY", "merchant": self.merchant,
            },
        })
        .to_string()
    }

    fn base(
        &self,
        txn_type: &str,
        order_id: &str,
        query_id: &str,
        amount: u64,
        resp_code: &str,
    ) -> Fields {
        let now = OffsetDateTime::now_utc().to_offset(offset!(+8));
        let txn_time = now
            .format(format_description!(
                "[year][month][day][hour][minute][second]"
            ))
            .unwrap_or_default();
        let mut f = Fields::default();
        for (k, v) in [
            ("accessType", "0"),
            ("bizType", "000201"),
            ("currencyCode", "156"),
            ("encoding", "utf-8"),
            ("merId", &self.merchant),
            ("orderId", order_id),
            ("queryId", query_id),
            ("respCode", resp_code),
            (
                "respMsg",
                if resp_code == "00" {
                    "成功[0000000]"
                } else {
                    "失败"
                },
            ),
            ("signMethod", "01"),
            ("txnAmt", &amount.to_string()),
            ("txnSubType", "01"),
            ("txnTime", &txn_time),
            ("txnType", txn_type),
            ("version", "5.1.0"),
        ] {
            f.set(k, v);
        }
        if let Signer::UnionPay { leaf_pem, .. } = &self.signer {
            f.set("signPubKeyCert", leaf_pem);
        }
        f
    }

    /// The body of `txn_type` (UnionPay's codes) for this simulator's
    /// scheme: UnionPay fields, or the matching webhook event.
    fn body(
        &self,
        txn_type: &str,
        orig_query_id: Option<&str>,
        query_id: &str,
        amount: u64,
        prefix: char,
        extra: &[(&str, &str)],
    ) -> String {
        let payment = orig_query_id.unwrap_or(query_id);
        match &self.signer {
            Signer::Adyen(signer) => {
                self.adyen_item(signer, txn_type, orig_query_id, query_id, amount)
            }
            Signer::Stripe { refunded, .. } => {
                self.stripe_event(refunded, txn_type, payment, query_id, amount)
            }
            Signer::StandardWebhooks(_) => {
                let event_type = match txn_type {
                    "02" => "authorization.succeeded",
                    "03" => "capture.succeeded",
                    "04" => "refund.succeeded",
                    "31" | "33" => "payment.voided",
                    "32" => "authorization.voided",
                    _ => "payment.succeeded",
                };
                self.event(event_type, payment, query_id, amount)
            }
            Signer::UnionPay { .. } => {
                let order_id = format!("{prefix}{query_id}");
                let mut f = self.base(txn_type, &order_id, query_id, amount, "00");
                if let Some(orig) = orig_query_id {
                    f.set("origQryId", orig);
                }
                for (k, v) in extra {
                    f.set(k, v);
                }
                self.sign(f)
            }
        }
    }

    /// A signed purchase (txnType 01) notification body.
    pub fn purchase(&self, query_id: &str, amount: u64) -> String {
        self.purchase_with(query_id, amount, &[])
    }

    /// A signed purchase with more fields (e.g. `accNo`, the card number;
    /// UnionPay only).
    pub fn purchase_with(&self, query_id: &str, amount: u64, extra: &[(&str, &str)]) -> String {
        self.body("01", None, query_id, amount, 'o', extra)
    }

    /// A signed refund (04) of `orig_query_id`.
    pub fn refund(&self, orig_query_id: &str, refund_id: &str, amount: u64) -> String {
        self.body("04", Some(orig_query_id), refund_id, amount, 'r', &[])
    }

    /// A signed void (31) of `orig_query_id`.
    pub fn void(&self, orig_query_id: &str, void_id: &str, amount: u64) -> String {
        self.body("31", Some(orig_query_id), void_id, amount, 'v', &[])
    }

    /// A signed pre-authorization (02).
    pub fn preauth(&self, query_id: &str, amount: u64) -> String {
        self.body("02", None, query_id, amount, 'a', &[])
    }

    /// A signed message of `txn_type` with its own `query_id` that refers to
    /// `orig_query_id`: 03 completion, 32 pre-auth void, 33 completion void.
    pub fn follow_up(
        &self,
        txn_type: &str,
        orig_query_id: &str,
        query_id: &str,
        amount: u64,
    ) -> String {
        self.body(txn_type, Some(orig_query_id), query_id, amount, 'f', &[])
    }

    fn sign(&self, mut fields: Fields) -> String {
        if let Signer::UnionPay { signer, .. } = &self.signer {
            // Signing fails only for a version other than 5.1.0, which `base` never sets.
            let _ = sign_fields(signer, &mut fields);
        }
        fields.to_form_body()
    }

    /// The request headers of `signed` (a webhook scheme's signature, made
    /// now; its id is derived from the body, so a resend is a PSP retry).
    fn headers(&self, signed: &str) -> Vec<(&'static str, String)> {
        match &self.signer {
            Signer::UnionPay { .. } => {
                vec![("content-type", "application/x-www-form-urlencoded".into())]
            }
            Signer::StandardWebhooks(key) => {
                let digest = key.sign(&[b"id:", signed.as_bytes()]);
                let id: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
                let id = format!("msg_{id}");
                let ts = OffsetDateTime::now_utc().unix_timestamp().to_string();
                let tag = key.sign(&[id.as_bytes(), b".", ts.as_bytes(), b".", signed.as_bytes()]);
                let signature = base64::engine::general_purpose::STANDARD.encode(tag);
                vec![
                    ("content-type", "application/json".into()),
                    ("webhook-id", id),
                    ("webhook-timestamp", ts),
                    ("webhook-signature", format!("v1,{signature}")),
                ]
            }
            Signer::Adyen(_) => vec![("content-type", "application/json".into())],
            Signer::Stripe { key, .. } => {
                let ts = OffsetDateTime::now_utc().unix_timestamp().to_string();
                let tag = key.sign(&[ts.as_bytes(), b".", signed.as_bytes()]);
                let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
                vec![
                    ("content-type", "application/json; charset=utf-8".into()),
                    ("stripe-signature", format!("t={ts},v1={hex}")),
                ]
            }
        }
    }

    /// POSTs `body`, retrying non-200 answers and connection errors with backoff.
    pub async fn send(&self, body: String) -> Delivery {
        self.send_signed_as(body.clone(), &body).await
    }

    /// POSTs `body` with an amount changed after signing: what an attacker
    /// in the middle would send.
    pub async fn send_tampered(&self, body: &str) -> Delivery {
        self.send_signed_as(tamper(body), body).await
    }

    /// POSTs `body` with the signature headers of `signed`.
    async fn send_signed_as(&self, body: String, signed: &str) -> Delivery {
        let headers = self.headers(signed);
        let mut last = 0;
        for attempt in 1..=MAX_ATTEMPTS {
            let mut request = self.client.post(&self.url);
            for (k, v) in &headers {
                request = request.header(*k, v);
            }
            match request.body(body.clone()).send().await {
                Ok(r) if r.status().as_u16() == 200 => return Delivery::Accepted(attempt),
                Ok(r) => last = r.status().as_u16(),
                Err(_) => last = 0,
            }
            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
        }
        Delivery::Failed(last)
    }
}

/// Changes the amount without re-signing (`txnAmt` of a UnionPay body,
/// `"amount":` of a JSON one): what an attacker in the middle would send.
pub fn tamper(body: &str) -> String {
    if body.starts_with('{') {
        // Adyen's amount is an object; Stripe's and the others' a number.
        if body.contains("\"amount\":{") {
            return body.replacen("\"value\":", "\"value\":1", 1);
        }
        return body.replacen("\"amount\":", "\"amount\":1", 1);
    }
    match body.find("txnAmt=") {
        Some(i) => {
            let rest = &body[i + 7..];
            let end = rest.find('&').unwrap_or(rest.len());
            format!("{}txnAmt=1{}{}", &body[..i], &rest[..end], &rest[end..])
        }
        None => format!("{body}&txnAmt=1"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::reconcile::LedgerTotals;

    fn expected() -> Report {
        Report {
            expected_paid: 2,
            expected_refunded: 1,
            expected_voided: 0,
            expected_paid_minor: 3000,
            expected_refunded_minor: 1000,
            tampered: 1,
            ..Report::default()
        }
    }

    fn got(refunded_minor: u64) -> LedgerTotals {
        LedgerTotals {
            by_status: BTreeMap::from([("PAID".into(), 2), ("REFUNDED".into(), 1)]),
            paid_minor: BTreeMap::from([("CNY".into(), 3000)]),
            refunded_minor: BTreeMap::from([("CNY".into(), refunded_minor)]),
        }
    }

    #[test]
    fn the_ledger_check_names_what_differs() {
        let dead = BTreeMap::from([("bad_signature".to_owned(), 1)]);
        assert!(expected()
            .check(&got(1000), &dead)
            .iter()
            .all(CheckRow::matches));
        let rows = expected().check(&got(900), &dead);
        let differs: Vec<_> = rows.iter().filter(|r| !r.matches()).collect();
        assert_eq!(differs.len(), 1);
        assert_eq!(
            (
                differs[0].what,
                differs[0].expected.as_str(),
                differs[0].got.as_str()
            ),
            ("refunded total", "10.00 CNY", "9.00 CNY")
        );
        // A dead letter the simulation did not send for is a difference.
        let dead = BTreeMap::from([("bad_signature".to_owned(), 1), ("conflict".to_owned(), 1)]);
        assert!(!expected()
            .check(&got(1000), &dead)
            .iter()
            .all(CheckRow::matches));
    }
}
