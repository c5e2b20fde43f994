//! Adyen standard notifications: a JSON body whose `notificationItems` each
//! hold a `NotificationRequestItem` signed on its own, the HMAC-SHA256
//! (hex key) of eight fields joined with `:` (`pspReference`,
//! `originalReference`, `merchantAccountCode`, `merchantReference`,
//! `amount.value`, `amount.currency`, `eventCode`, `success`; a missing one
//! is empty, nothing is escaped), compared in base64 with
//! `additionalData.hmacSignature`. Any configured key verifies (rotation).
//!
//! Every item is verified and applied on its own, so one bad item cannot
//! hide the others: a notification of several items is answered
//! [`Verified::Items`], and the worker queues one message per item.
//! Events: `AUTHORISATION` (a payment, or an authorization with manual
//! capture), `CAPTURE` (manual capture only; with automatic capture it is
//! ignored), `REFUND`, `CANCELLATION` (of an authorization),
//! `CANCEL_OR_REFUND` (a void of the whole amount); other codes are
//! verified and ignored. The idempotency key is `pspReference`, `eventCode`
//! and `success`, as Adyen advises.

use base64::Engine as _;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::event::{order_id_of, EventKey, EventKind, EventOutcome, PaymentEvent, PaymentKey};
use crate::secret::SecretRef;
use crate::webhook::{HmacKey, Inbound, Json, WebhookError};
use crate::Verified;
use serde::Deserialize;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// An Adyen source's keys and capture setting.
#[derive(Debug)]
pub struct AdyenVerifier {
    keys: Vec<HmacKey>,
    capture: CaptureMode,
    merchants: Vec<String>,
}

/// Why a configured HMAC key cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("an Adyen HMAC key is hex: {0}")]
pub struct KeyError(String);

/// The most items one notification may hold: far above the handful Adyen
/// sends, low enough that splitting one costs at most ten queue batches.
pub const MAX_ITEMS: usize = 100;

/// The items of a notification body.
///
/// # Errors
/// `MalformedBody` when there is no `notificationItems` array of
/// `NotificationRequestItem` objects.
pub fn items(body: &[u8]) -> Result<Vec<Value>, WebhookError> {
    let json = Json::parse(body)?;
    let Some(Value::Array(list)) = json.get("/notificationItems") else {
        return Err(WebhookError::MalformedBody(
            "no `notificationItems` array".into(),
        ));
    };
    if list.is_empty() {
        return Err(WebhookError::MalformedBody(
            "`notificationItems` is empty".into(),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, item)| match item.get("NotificationRequestItem") {
            Some(v @ Value::Object(_)) => Ok(v.clone()),
            _ => Err(WebhookError::MalformedBody(format!(
                "item {i} is not a NotificationRequestItem"
            ))),
        })
        .collect()
}

/// A field of an item as Adyen signs it: a string, a number's decimal
/// text, `true`/`false`; empty when missing.
fn field(item: &Value, pointer: &str) -> String {
    match item.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

/// The string an item's HMAC covers.
pub fn signed_string(item: &Value) -> String {
    [
        "/pspReference",
        "/originalReference",
        "/merchantAccountCode",
        "/merchantReference",
        "/amount/value",
        "/amount/currency",
        "/eventCode",
        "/success",
    ]
    .iter()
    .map(|p| field(item, p))
    .collect::<Vec<_>>()
    .join(":")
}

impl AdyenVerifier {
    /// A verifier for `config` with its HMAC keys (hex) already read.
    ///
    /// # Errors
    /// A key that is not hex.
    pub fn new(
        config: &AdyenConfig,
        keys_hex: &[String],
        merchants: &[String],
    ) -> Result<Self, KeyError> {
        let keys = keys_hex
            .iter()
            .map(|k| {
                hex::decode(k.trim())
                    .map(|b| HmacKey::new(&b))
                    .map_err(|e| KeyError(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            keys,
            capture: config.capture,
            merchants: merchants.to_vec(),
        })
    }

    /// Verifies a notification of one item and maps it; a notification of
    /// several is [`Verified::Items`], each to verify with
    /// [`AdyenVerifier::verify_item`].
    ///
    /// # Errors
    /// The failed step as a [`WebhookError`].
    ///
    /// Before a notification is split into one message per item, its items
    /// are authenticated here, on the message itself: one with more items
    /// than [`MAX_ITEMS`] is refused whole, and one of which no item carries
    /// a valid HMAC is rejected as the first item's failure, so an unsigned
    /// body of thousands of items costs one dead letter, not thousands of
    /// queue messages that each re-read it. A batch with at least one
    /// genuine item is split: a forged item among them is dead-lettered
    /// alone.
    pub fn verify(&self, source: &str, inbound: &Inbound<'_>) -> Result<Verified, WebhookError> {
        let items = items(inbound.body)?;
        match items.len() {
            1 => self.verify_one(source, &items[0]),
            n if n > MAX_ITEMS => Err(WebhookError::MalformedBody(format!(
                "{n} notification items: Adyen sends at most {MAX_ITEMS} in one notification"
            ))),
            n => {
                let mut first = None;
                for item in &items {
                    match self.authenticate(item) {
                        Ok(()) => return Ok(Verified::Items(n as u32)),
                        Err(e) => {
                            first.get_or_insert(e);
                        }
                    }
                }
                Err(first
                    .unwrap_or_else(|| WebhookError::MalformedBody("no notification item".into())))
            }
        }
    }

    /// Verifies and maps item `index` alone.
    ///
    /// # Errors
    /// The failed step; `MalformedBody` when there is no such item.
    pub fn verify_item(
        &self,
        source: &str,
        inbound: &Inbound<'_>,
        index: u32,
    ) -> Result<Verified, WebhookError> {
        let items = items(inbound.body)?;
        let item = items.get(index as usize).ok_or_else(|| {
            WebhookError::MalformedBody(format!("no item {index} of {}", items.len()))
        })?;
        self.verify_one(source, item)
    }

    /// Checks an item's HMAC.
    ///
    /// # Errors
    /// `MissingField` without a signature, `BadSignature`.
    pub fn authenticate(&self, item: &Value) -> Result<(), WebhookError> {
        let signature = field(item, "/additionalData/hmacSignature");
        if signature.is_empty() {
            return Err(WebhookError::MissingField(
                "additionalData.hmacSignature".into(),
            ));
        }
        let tag = B64
            .decode(&signature)
            .map_err(|_| WebhookError::BadSignature)?;
        let signed = signed_string(item);
        if self
            .keys
            .iter()
            .any(|k| k.verifies(&[signed.as_bytes()], &tag))
        {
            Ok(())
        } else {
            Err(WebhookError::BadSignature)
        }
    }

    /// The `hmacSignature` of `item` under the first key (the simulator's
    /// signer).
    pub fn sign(&self, item: &Value) -> Option<String> {
        let key = self.keys.first()?;
        Some(B64.encode(key.sign(&[signed_string(item).as_bytes()])))
    }

    fn verify_one(&self, source: &str, item: &Value) -> Result<Verified, WebhookError> {
        self.authenticate(item)?;
        let text = |p: &str| field(item, p);
        let merchant = text("/merchantAccountCode");
        if !self.merchants.contains(&merchant) {
            return Err(WebhookError::UnknownMerchant(merchant));
        }
        let code = text("/eventCode");
        let success = match text("/success").as_str() {
            "true" => EventOutcome::Succeeded,
            "false" => EventOutcome::Failed,
            other => {
                return Err(WebhookError::MalformedField {
                    field: "success".into(),
                    why: format!("{other:?} is not true or false"),
                })
            }
        };
        let manual = self.capture == CaptureMode::Manual;
        let (kind, ref_field) = match code.as_str() {
            "AUTHORISATION" if manual => (EventKind::Authorization, "/pspReference"),
            "AUTHORISATION" => (EventKind::Payment, "/pspReference"),
            "CAPTURE" if manual => (EventKind::Capture, "/originalReference"),
            "REFUND" => (EventKind::Refund, "/originalReference"),
            "CANCELLATION" => (EventKind::AuthorizationVoid, "/originalReference"),
            "CANCEL_OR_REFUND" => (EventKind::Void, "/originalReference"),
            // CAPTURE with automatic capture, and every other code.
            _ => return Ok(Verified::Ignored(code)),
        };
        let payment_ref = text(ref_field);
        if payment_ref.is_empty() {
            return Err(WebhookError::MissingField(ref_field[1..].to_owned()));
        }
        let json = Json::from_value(item.clone());
        let amount = json.money(json.minor_units("/amount/value")?, "/amount/currency")?;
        let psp_reference = text("/pspReference");
        Ok(Verified::Event(Box::new(PaymentEvent {
            source: source.to_owned(),
            payment_key: PaymentKey::new(source, &merchant, &payment_ref),
            event_key: EventKey::new(format!("{psp_reference}:{code}:{}", text("/success"))),
            merchant,
            payment_ref,
            kind,
            outcome: success,
            amount,
            currency_defaulted: false,
            psp_txn_id: (!psp_reference.is_empty()).then_some(psp_reference),
            psp_time: OffsetDateTime::parse(&text("/eventDate"), &Rfc3339).ok(),
            result_code: Some(code),
            result_message: Some(text("/reason")).filter(|r| !r.is_empty()),
            settle_date: None,
            order_id: order_id_of(kind, Some(&text("/merchantReference"))),
            legacy_key: None,
        })))
    }

    /// The `pspReference` of the first item of a body that may not verify,
    /// for the logs.
    pub fn txn_id(body: &[u8]) -> Option<String> {
        let first = items(body).ok()?.into_iter().next()?;
        Some(field(&first, "/pspReference")).filter(|s| !s.is_empty())
    }
}

/// Signature settings of an Adyen source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdyenConfig {
    /// The webhook's HMAC keys (hex); several while one is rotated.
    pub hmac_keys: Vec<SecretRef>,
    /// How the merchant account captures: `automatic` (an authorisation
    /// is a payment) or `manual` (an authorisation holds funds until its
    /// CAPTURE).
    #[serde(default)]
    pub capture: CaptureMode,
}

/// When an Adyen payment is captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMode {
    #[default]
    Automatic,
    Manual,
}

impl crate::SchemeSettings for AdyenConfig {
    fn check(&self) -> Result<(), String> {
        if self.hmac_keys.is_empty() {
            return Err("adyen needs at least one key in `hmac_keys`".into());
        }
        Ok(())
    }

    fn secret_refs(&self) -> Vec<&SecretRef> {
        self.hmac_keys.iter().collect()
    }

    fn default_success_body(&self) -> &'static str {
        // Adyen requires it.
        "[accepted]"
    }

    fn build(
        &self,
        secrets: &crate::Secrets,
        merchants: &[String],
    ) -> Result<Box<dyn crate::Scheme>, String> {
        let keys = secrets.texts(&self.hmac_keys)?;
        let verifier = AdyenVerifier::new(self, &keys, merchants).map_err(|e| e.to_string())?;
        Ok(Box::new(verifier))
    }
}

impl crate::Scheme for AdyenVerifier {
    fn verify(&self, source: &str, inbound: &Inbound<'_>) -> Result<Verified, crate::Rejected> {
        Ok(AdyenVerifier::verify(self, source, inbound)?)
    }

    fn verify_item(
        &self,
        source: &str,
        inbound: &Inbound<'_>,
        index: u32,
    ) -> Result<Verified, crate::Rejected> {
        Ok(AdyenVerifier::verify_item(self, source, inbound, index)?)
    }

    fn explain(&self, inbound: &Inbound<'_>) -> serde_json::Value {
        let items: Vec<serde_json::Value> = items(inbound.body)
            .map(|items| {
                items
                    .iter()
                    .map(|item| {
                        serde_json::json!({
                            "signed_string": signed_string(item),
                            "authenticated": self.authenticate(item).map_err(|e| e.to_string()),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        serde_json::json!({ "scheme": "adyen", "items": items })
    }

    fn txn_id(&self, body: &[u8]) -> Option<String> {
        AdyenVerifier::txn_id(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors() -> Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/vectors/adyen/vectors.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn verifier(key: &str, merchants: &[&str], capture: CaptureMode) -> AdyenVerifier {
        AdyenVerifier::new(
            &AdyenConfig {
                hmac_keys: vec![],
                capture,
            },
            &[key.to_owned()],
            &merchants
                .iter()
                .map(|m| (*m).to_owned())
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    fn with_signature(item: &Value, signature: &str) -> Value {
        let mut item = item.clone();
        item["additionalData"] = serde_json::json!({ "hmacSignature": signature });
        item
    }

    #[test]
    fn every_vector_signs_and_verifies_and_a_change_fails() {
        let all = vectors();
        let cases = all["vectors"].as_array().unwrap();
        assert_eq!(cases.len(), 4);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let v = verifier(case["key"].as_str().unwrap(), &[], CaptureMode::Automatic);
            let item = &case["item"];
            assert_eq!(
                signed_string(item),
                case["data_to_sign"].as_str().unwrap(),
                "{name}"
            );
            assert_eq!(
                v.sign(item).unwrap(),
                case["expected"].as_str().unwrap(),
                "{name}"
            );
            let signed = with_signature(item, case["expected"].as_str().unwrap());
            assert_eq!(v.authenticate(&signed), Ok(()), "{name}");
            let mut changed = signed.clone();
            changed["amount"]["value"] = serde_json::json!(1);
            assert_eq!(
                v.authenticate(&changed),
                Err(WebhookError::BadSignature),
                "{name}"
            );
            let other = verifier(&"00".repeat(32), &[], CaptureMode::Automatic);
            assert_eq!(
                other.authenticate(&signed),
                Err(WebhookError::BadSignature),
                "{name}"
            );
        }
        // Two keys during a rotation: either verifies.
        let case = &cases[0];
        let both = AdyenVerifier::new(
            &AdyenConfig {
                hmac_keys: vec![],
                capture: CaptureMode::Automatic,
            },
            &["00".repeat(32), case["key"].as_str().unwrap().to_owned()],
            &[],
        )
        .unwrap();
        let signed = with_signature(&case["item"], case["expected"].as_str().unwrap());
        assert_eq!(both.authenticate(&signed), Ok(()));
        assert!(AdyenVerifier::new(
            &AdyenConfig {
                hmac_keys: vec![],
                capture: CaptureMode::Automatic
            },
            &["not hex".into()],
            &[]
        )
        .is_err());
    }

    fn body(items: &[Value]) -> Vec<u8> {
        let list: Vec<Value> = items
            .iter()
            .map(|i| serde_json::json!({ "NotificationRequestItem": i }))
            .collect();
        serde_json::json!({"live": "false", "notificationItems": list})
            .to_string()
            .into_bytes()
    }

    fn item(
        v: &AdyenVerifier,
        code: &str,
        psp: &str,
        orig: Option<&str>,
        value: u64,
        success: &str,
    ) -> Value {
        let mut i = serde_json::json!({
            "pspReference": psp, "merchantAccountCode": "Shop", "merchantReference": "order-1",
            "amount": {"currency": "EUR", "value": value}, "eventCode": code, "success": success,
            "eventDate": "2026-11-26T12:00:00+01:00",
        });
        if let Some(o) = orig {
            i["originalReference"] = serde_json::json!(o);
        }
        let sig = v.sign(&i).unwrap();
        with_signature(&i, &sig)
    }

    #[test]
    fn items_map_by_event_code_and_capture_setting() {
        let key = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056";
        let auto = verifier(key, &["Shop"], CaptureMode::Automatic);
        let manual = verifier(key, &["Shop"], CaptureMode::Manual);
        let at = OffsetDateTime::UNIX_EPOCH;
        let one = |v: &AdyenVerifier, i: Value| {
            let b = body(&[i]);
            v.verify(
                "adyen",
                &Inbound {
                    body: &b,
                    headers: &[],
                    received_at: at,
                },
            )
        };
        let auth = item(&auto, "AUTHORISATION", "A1", None, 1130, "true");
        let Verified::Event(e) = one(&auto, auth.clone()).unwrap() else {
            panic!()
        };
        assert_eq!(
            (e.kind, e.outcome, e.payment_ref.as_str()),
            (EventKind::Payment, EventOutcome::Succeeded, "A1")
        );
        assert_eq!(e.event_key.as_str(), "A1:AUTHORISATION:true");
        assert_eq!(e.amount.to_string(), "11.30 EUR");
        assert_eq!(e.order_id.as_deref(), Some("order-1"));
        assert!(e.psp_time.is_some());
        let Verified::Event(e) = one(&manual, auth).unwrap() else {
            panic!()
        };
        assert_eq!(e.kind, EventKind::Authorization);
        let capture = item(&auto, "CAPTURE", "C1", Some("A1"), 1130, "true");
        assert_eq!(
            one(&auto, capture.clone()).unwrap(),
            Verified::Ignored("CAPTURE".into())
        );
        let Verified::Event(e) = one(&manual, capture).unwrap() else {
            panic!()
        };
        assert_eq!((e.kind, e.payment_ref.as_str()), (EventKind::Capture, "A1"));
        for (code, kind) in [
            ("REFUND", EventKind::Refund),
            ("CANCELLATION", EventKind::AuthorizationVoid),
            ("CANCEL_OR_REFUND", EventKind::Void),
        ] {
            let Verified::Event(e) =
                one(&auto, item(&auto, code, "M1", Some("A1"), 500, "false")).unwrap()
            else {
                panic!()
            };
            assert_eq!(
                (e.kind, e.outcome, e.payment_ref.as_str()),
                (kind, EventOutcome::Failed, "A1"),
                "{code}"
            );
            // The modification's own merchantReference is not the order's.
            assert_eq!(e.order_id, None, "{code}");
        }
        assert_eq!(
            one(
                &auto,
                item(&auto, "REPORT_AVAILABLE", "R1", None, 0, "true")
            )
            .unwrap(),
            Verified::Ignored("REPORT_AVAILABLE".into())
        );
        // A refund that names no original, another merchant account.
        assert_eq!(
            one(&auto, item(&auto, "REFUND", "M2", None, 5, "true"))
                .unwrap_err()
                .name(),
            "missing_field"
        );
        let mut other = item(&auto, "AUTHORISATION", "A2", None, 5, "true");
        other["merchantAccountCode"] = serde_json::json!("Else");
        let sig = auto.sign(&other).unwrap();
        assert_eq!(
            one(&auto, with_signature(&other, &sig)).unwrap_err().name(),
            "unknown_merchant"
        );
        // Several items: each on its own; one forged does not hide the others.
        let forged = with_signature(&item(&auto, "AUTHORISATION", "A3", None, 5, "true"), "AAAA");
        let b = body(&[item(&auto, "AUTHORISATION", "A4", None, 5, "true"), forged]);
        let inbound = Inbound {
            body: &b,
            headers: &[],
            received_at: at,
        };
        assert_eq!(auto.verify("adyen", &inbound).unwrap(), Verified::Items(2));
        assert!(matches!(
            auto.verify_item("adyen", &inbound, 0).unwrap(),
            Verified::Event(_)
        ));
        assert_eq!(
            auto.verify_item("adyen", &inbound, 1).unwrap_err().name(),
            "bad_signature"
        );
        assert_eq!(
            auto.verify_item("adyen", &inbound, 2).unwrap_err().name(),
            "malformed_body"
        );
        for bad in [
            &b"{}"[..],
            b"{\"notificationItems\": []}",
            b"{\"notificationItems\": [1]}",
            b"[]",
        ] {
            let i = Inbound {
                body: bad,
                headers: &[],
                received_at: at,
            };
            assert_eq!(
                auto.verify("adyen", &i).unwrap_err().name(),
                "malformed_body"
            );
        }
    }

    #[test]
    fn the_platform_vector_is_the_same_hmac_over_the_raw_body() {
        // Balance Platform webhooks (not a configured scheme here) sign the
        // raw body with the same hex key; the primitive reproduces it.
        let all = vectors();
        let v = &all["platform_vector"];
        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/vectors/adyen/platform_webhook_raw_body.json"
        ))
        .unwrap();
        let key = HmacKey::new(&hex::decode(v["key"].as_str().unwrap()).unwrap());
        let expected = B64.decode(v["expected"].as_str().unwrap()).unwrap();
        assert!(key.verifies(&[&body], &expected));
        assert!(!key.verifies(&[&body, b" "], &expected));
    }
}
