//! Standard Webhooks (standardwebhooks.com): `webhook-signature` holds
//! space-separated `v1,<base64 HMAC-SHA256>` and `v1a,<base64 ed25519>`
//! signatures over `{webhook-id}.{webhook-timestamp}.{body}`; the
//! timestamp must be within the tolerance of the receive time. Any
//! signature that verifies under any configured secret or public key is
//! enough (rotation). The event is read from the JSON body through the
//! source's configured pointers; `webhook-id` is its idempotency key.

use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
use base64::Engine as _;

use crate::event::{order_id_of, EventKey, PaymentEvent, PaymentKey};
use crate::secret::SecretRef;
use crate::webhook::default_tolerance_secs;
use crate::webhook::{self, HmacKey, Inbound, Json, WebhookError};
use crate::Verified;
use serde::Deserialize;
use std::collections::BTreeMap;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A source's keys and mapping.
#[derive(Debug)]
pub struct StandardWebhooksVerifier {
    secrets: Vec<HmacKey>,
    public_keys: Vec<Vec<u8>>,
    tolerance_secs: u64,
    fields: EventPointers,
    events: std::collections::BTreeMap<String, MappedEvent>,
    merchants: Vec<String>,
}

/// Why a configured key cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// The key bytes of a `whsec_`/`whpk_` value (the prefix is optional, as the
/// reference libraries accept it).
fn key_bytes(value: &str, prefix: &str) -> Result<Vec<u8>, KeyError> {
    let b64 = value.trim();
    let b64 = b64.strip_prefix(prefix).unwrap_or(b64);
    B64.decode(b64)
        .map_err(|e| KeyError(format!("a {prefix}… key is not base64: {e}")))
}

impl StandardWebhooksVerifier {
    /// A verifier for `config`, with the secrets and public keys already
    /// read from their references.
    ///
    /// # Errors
    /// A key that is not base64, or a public key that is not 32 bytes.
    pub fn new(
        config: &StandardWebhooksConfig,
        secrets: &[String],
        public_keys: &[String],
        merchants: &[String],
    ) -> Result<Self, KeyError> {
        let secrets = secrets
            .iter()
            .map(|s| key_bytes(s, "whsec_").map(|k| HmacKey::new(&k)))
            .collect::<Result<_, _>>()?;
        let public_keys = public_keys
            .iter()
            .map(|s| {
                let k = key_bytes(s, "whpk_")?;
                if k.len() == 32 {
                    Ok(k)
                } else {
                    Err(KeyError(format!(
                        "an ed25519 public key is 32 bytes, not {}",
                        k.len()
                    )))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            secrets,
            public_keys,
            tolerance_secs: config.tolerance_secs,
            fields: config.fields.clone(),
            events: config.events.clone(),
            merchants: merchants.to_vec(),
        })
    }

    /// Verifies the signature and timestamp, then maps the event.
    ///
    /// # Errors
    /// The failed step as a [`WebhookError`].
    pub fn verify(&self, source: &str, inbound: &Inbound<'_>) -> Result<Verified, WebhookError> {
        let id = self.authenticate(inbound)?;
        self.map(source, &id, inbound.body)
    }

    /// Checks headers, timestamp and signatures; the message id.
    ///
    /// # Errors
    /// The failed step.
    pub fn authenticate(&self, inbound: &Inbound<'_>) -> Result<String, WebhookError> {
        let id = inbound.header("webhook-id")?;
        if id.is_empty() || id.contains('.') {
            return Err(WebhookError::MalformedHeader {
                header: "webhook-id",
                why: "empty, or contains '.'".into(),
            });
        }
        let timestamp = inbound.header("webhook-timestamp")?;
        let signed_at = webhook::parse_timestamp("webhook-timestamp", timestamp)?;
        let signatures = inbound.header("webhook-signature")?;
        // The signature before the time: a forged message is reported as
        // forged, whatever its timestamp.
        let content: [&[u8]; 5] = [
            id.as_bytes(),
            b".",
            timestamp.as_bytes(),
            b".",
            inbound.body,
        ];
        let mut any = false;
        let mut verified = false;
        for signature in signatures.split(' ').filter(|s| !s.is_empty()) {
            let Some((version, value)) = signature.split_once(',') else {
                continue;
            };
            any = true;
            let Ok(bytes) = B64.decode(value) else {
                continue;
            };
            verified |= match version {
                "v1" => self.secrets.iter().any(|k| k.verifies(&content, &bytes)),
                "v1a" => {
                    let message = content.concat();
                    self.public_keys.iter().any(|k| {
                        UnparsedPublicKey::new(&ED25519, k)
                            .verify(&message, &bytes)
                            .is_ok()
                    })
                }
                _ => false,
            };
            if verified {
                break;
            }
        }
        if !any {
            return Err(WebhookError::MalformedHeader {
                header: "webhook-signature",
                why: "no `version,signature` entry".into(),
            });
        }
        if !verified {
            return Err(WebhookError::BadSignature);
        }
        webhook::check_timestamp(
            signed_at,
            inbound.received_at,
            self.tolerance_secs,
            self.tolerance_secs,
        )?;
        Ok(id.to_owned())
    }

    fn map(&self, source: &str, id: &str, body: &[u8]) -> Result<Verified, WebhookError> {
        let json = Json::parse(body)?;
        let f = &self.fields;
        let event_type = json.text(&f.event_type)?;
        let Some(mapped) = self.events.get(&event_type) else {
            return Ok(Verified::Ignored(event_type));
        };
        let named = f.merchant.as_deref().map(|p| json.text(p)).transpose()?;
        let merchant = webhook::merchant(named, &self.merchants)?;
        let payment_ref = json.text(&f.payment_ref)?;
        if payment_ref.is_empty() {
            return Err(WebhookError::MalformedField {
                field: f.payment_ref.clone(),
                why: "empty".into(),
            });
        }
        let amount = json.money(json.minor_units(&f.amount)?, &f.currency)?;
        let psp_txn_id = f.txn_id.as_deref().map(|p| json.text(p)).transpose()?;
        let named_order = f.order_id.as_deref().and_then(|p| json.text(p).ok());
        let order_id = order_id_of(mapped.kind, named_order.as_deref());
        Ok(Verified::Event(Box::new(PaymentEvent {
            source: source.to_owned(),
            payment_key: PaymentKey::new(source, &merchant, &payment_ref),
            merchant,
            payment_ref,
            event_key: EventKey::new(id),
            kind: mapped.kind,
            outcome: mapped.outcome,
            amount,
            currency_defaulted: false,
            psp_txn_id,
            psp_time: None,
            result_code: Some(event_type),
            result_message: None,
            settle_date: None,
            order_id,
            legacy_key: None,
        })))
    }

    /// The PSP's transaction id in a body that may not verify, for the logs.
    pub fn txn_id(&self, body: &[u8]) -> Option<String> {
        let pointer = self.fields.txn_id.as_deref()?;
        Json::parse(body).ok()?.text(pointer).ok()
    }

    /// The `webhook-signature` value for `body` under the first secret (the
    /// simulator's signer).
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
        let ts = timestamp.to_string();
        let key = self.secrets.first()?;
        let tag = key.sign(&[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
        Some(format!("v1,{}", B64.encode(tag)))
    }
}

/// Signature settings and the event mapping of a Standard Webhooks source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandardWebhooksConfig {
    /// `whsec_…` symmetric secrets (`v1` signatures); several while one is
    /// rotated out.
    #[serde(default)]
    pub secrets: Vec<SecretRef>,
    /// `whpk_…` ed25519 public keys (`v1a` signatures).
    #[serde(default)]
    pub public_keys: Vec<SecretRef>,
    /// How far `webhook-timestamp` may be from the receive time, either way.
    #[serde(default = "default_tolerance_secs")]
    pub tolerance_secs: u64,
    /// Where the event's values are in the JSON body.
    pub fields: EventPointers,
    /// What each value at `fields.event_type` means; a type not named here
    /// is verified, archived and acknowledged as ignored.
    pub events: BTreeMap<String, MappedEvent>,
}

/// JSON pointers (RFC 6901) to an event's values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventPointers {
    pub event_type: String,
    /// The payment the event belongs to (for a refund: the refunded one).
    pub payment_ref: String,
    /// Minor units (a JSON integer, or a string of digits).
    pub amount: String,
    /// ISO 4217 alphabetic code, any case.
    pub currency: String,
    /// The merchant, when the body names it (it must be in `merchants`);
    /// else the source's first merchant.
    #[serde(default)]
    pub merchant: Option<String>,
    /// The PSP's id of this transaction, for the logs and the ledger.
    #[serde(default)]
    pub txn_id: Option<String>,
    /// The merchant's own order id, on the events that create a payment:
    /// the read API and `txn get --order` find payments by it. Absent or
    /// not a string in a body, the event carries none (and still applies).
    #[serde(default)]
    pub order_id: Option<String>,
}

/// What an event type means for the payment: `payment`, `authorization`,
/// `capture`, `refund`, `void`, `authorization_void`, each succeeded, or
/// with `_failed` or `_pending` appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct MappedEvent {
    pub kind: crate::event::EventKind,
    pub outcome: crate::event::EventOutcome,
}

impl TryFrom<String> for MappedEvent {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        use crate::event::{EventKind, EventOutcome};
        let (kind, outcome) = match s.rsplit_once('_') {
            Some((k, "failed")) => (k, EventOutcome::Failed),
            Some((k, "pending")) => (k, EventOutcome::Pending),
            _ => (s.as_str(), EventOutcome::Succeeded),
        };
        let kind = match kind {
            "payment" => EventKind::Payment,
            "authorization" => EventKind::Authorization,
            "capture" => EventKind::Capture,
            "refund" => EventKind::Refund,
            "void" => EventKind::Void,
            "authorization_void" => EventKind::AuthorizationVoid,
            "refund_total" => EventKind::RefundTotal,
            "dispute" => EventKind::Dispute,
            _ => return Err(format!("{s:?} is not an event kind (payment, authorization, capture, refund, refund_total, void, authorization_void, dispute, optionally _failed or _pending)")),
        };
        Ok(Self { kind, outcome })
    }
}

impl crate::SchemeSettings for StandardWebhooksConfig {
    fn check(&self) -> Result<(), String> {
        if self.secrets.is_empty() && self.public_keys.is_empty() {
            return Err(
                "standard_webhooks needs at least one of `secrets` and `public_keys`".into(),
            );
        }
        Ok(())
    }

    fn secret_refs(&self) -> Vec<&SecretRef> {
        self.secrets.iter().chain(&self.public_keys).collect()
    }

    fn build(
        &self,
        secrets: &crate::Secrets,
        merchants: &[String],
    ) -> Result<Box<dyn crate::Scheme>, String> {
        let keys = secrets.texts(&self.secrets)?;
        let public = secrets.texts(&self.public_keys)?;
        let verifier = StandardWebhooksVerifier::new(self, &keys, &public, merchants)
            .map_err(|e| format!("keys: {e}"))?;
        Ok(Box::new(verifier))
    }
}

impl crate::Scheme for StandardWebhooksVerifier {
    fn verify(&self, source: &str, inbound: &Inbound<'_>) -> Result<Verified, crate::Rejected> {
        Ok(StandardWebhooksVerifier::verify(self, source, inbound)?)
    }

    fn explain(&self, inbound: &Inbound<'_>) -> serde_json::Value {
        let header = |name| inbound.header(name).map_err(|e| e.to_string());
        serde_json::json!({
            "scheme": "standard_webhooks",
            "webhook-id": header("webhook-id"),
            "webhook-timestamp": header("webhook-timestamp"),
            "webhook-signature": header("webhook-signature"),
            "signed_content": "{webhook-id}.{webhook-timestamp}.{body}",
            "authenticated": self.authenticate(inbound).map_err(|e| e.to_string()),
        })
    }

    fn txn_id(&self, body: &[u8]) -> Option<String> {
        StandardWebhooksVerifier::txn_id(self, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn config() -> StandardWebhooksConfig {
        serde_json::from_value(serde_json::json!({
            "secrets": ["file:unused"],
            "fields": {
                "event_type": "/type",
                "payment_ref": "/data/payment",
                "amount": "/data/amount",
                "currency": "/data/currency"
            },
            "events": {"payment.succeeded": "payment", "refund.failed": "refund_failed"}
        }))
        .unwrap()
    }

    fn vectors() -> Vec<serde_json::Value> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/vectors/standard-webhooks/vectors.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn headers(v: &serde_json::Value) -> Vec<(String, String)> {
        v["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect()
    }

    fn at(ts: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(ts).unwrap()
    }

    #[test]
    fn the_reference_vectors_verify_and_sign() {
        for v in vectors() {
            let secret = v["secret"].as_str().unwrap().to_owned();
            let verifier =
                StandardWebhooksVerifier::new(&config(), &[secret], &[], &["m".into()]).unwrap();
            let h = headers(&v);
            let body = v["payload"].as_str().unwrap().as_bytes();
            let ts = v["timestamp"].as_i64().unwrap();
            let inbound = Inbound {
                body,
                headers: &h,
                received_at: at(ts + 10),
            };
            assert_eq!(
                verifier.authenticate(&inbound).unwrap(),
                v["msg_id"].as_str().unwrap(),
                "{}",
                v["name"]
            );
            assert_eq!(
                verifier
                    .sign(v["msg_id"].as_str().unwrap(), ts, body)
                    .unwrap(),
                v["expected_signature"].as_str().unwrap()
            );
            // Tampered, re-serialised, stale, future, wrong secret.
            let tampered = [body, b" "].concat();
            let reser =
                serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(body).unwrap())
                    .unwrap();
            for (b, t) in [(&tampered[..], ts), (&reser[..], ts)] {
                let i = Inbound {
                    body: b,
                    headers: &h,
                    received_at: at(t),
                };
                if b != body {
                    assert_eq!(verifier.authenticate(&i), Err(WebhookError::BadSignature));
                }
            }
            for skew in [-301, 301] {
                let i = Inbound {
                    received_at: at(ts + skew),
                    ..inbound
                };
                assert_eq!(
                    verifier.authenticate(&i).unwrap_err().name(),
                    "timestamp_outside_tolerance"
                );
            }
            let other = StandardWebhooksVerifier::new(
                &config(),
                &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSx".into()],
                &[],
                &["m".into()],
            )
            .unwrap();
            assert_eq!(
                other.authenticate(&inbound),
                Err(WebhookError::BadSignature)
            );
            // A rolled secret beside the right one still verifies.
            let rolled = StandardWebhooksVerifier::new(
                &config(),
                &[
                    "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oE".into(),
                    v["secret"].as_str().unwrap().into(),
                ],
                &[],
                &["m".into()],
            )
            .unwrap();
            assert!(rolled.authenticate(&inbound).is_ok());
        }
    }

    #[test]
    fn ed25519_v1a_signatures_verify() {
        use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
        let pair = Ed25519KeyPair::generate().unwrap();
        let public = format!("whpk_{}", B64.encode(pair.public_key().as_ref()));
        let verifier =
            StandardWebhooksVerifier::new(&config(), &[], &[public], &["m".into()]).unwrap();
        let body = br#"{"type":"payment.succeeded"}"#;
        let sig = pair.sign(&[b"msg_1.1700000000.".as_slice(), body].concat());
        let h = vec![
            ("webhook-id".to_owned(), "msg_1".to_owned()),
            ("webhook-timestamp".to_owned(), "1700000000".to_owned()),
            (
                "webhook-signature".to_owned(),
                format!("v1,bm90IHRoaXM= v1a,{}", B64.encode(sig.as_ref())),
            ),
        ];
        let i = Inbound {
            body,
            headers: &h,
            received_at: at(1_700_000_000),
        };
        assert_eq!(verifier.authenticate(&i).unwrap(), "msg_1");
        let tampered = br#"{"type":"payment.succeedeD"}"#;
        let i = Inbound {
            body: tampered,
            ..i
        };
        assert_eq!(verifier.authenticate(&i), Err(WebhookError::BadSignature));
        assert!(StandardWebhooksVerifier::new(&config(), &[], &["whpk_AAAA".into()], &[]).is_err());
    }

    #[test]
    fn events_are_mapped_through_the_pointers() {
        let v =
            StandardWebhooksVerifier::new(&config(), &["whsec_AAAA".into()], &[], &["m".into()])
                .unwrap();
        let body = br#"{"type":"payment.succeeded","data":{"payment":"p1","amount":1250,"currency":"eur"}}"#;
        let Verified::Event(e) = v.map("sw", "msg_9", body).unwrap() else {
            panic!()
        };
        assert_eq!(e.payment_key.as_str(), "sw#m#p1");
        assert_eq!(e.event_key.as_str(), "msg_9");
        assert_eq!(e.amount.to_string(), "12.50 EUR");
        assert_eq!(e.order_id, None, "no order pointer configured");
        // With an order pointer: read on a payment (a number as its
        // digits); absent or neither, the payment still applies, without
        // one.
        let mut c = config();
        c.fields.order_id = Some("/data/order".into());
        let v =
            StandardWebhooksVerifier::new(&c, &["whsec_AAAA".into()], &[], &["m".into()]).unwrap();
        let order = |body: &[u8]| match v.map("sw", "msg_9", body).unwrap() {
            Verified::Event(e) => e.order_id,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            order(br#"{"type":"payment.succeeded","data":{"payment":"p1","amount":1,"currency":"eur","order":"O-9"}}"#),
            Some("O-9".into())
        );
        assert_eq!(
            order(br#"{"type":"payment.succeeded","data":{"payment":"p1","amount":1,"currency":"eur","order":7}}"#),
            Some("7".into())
        );
        assert_eq!(
            order(br#"{"type":"payment.succeeded","data":{"payment":"p1","amount":1,"currency":"eur","order":{"id":7}}}"#),
            None
        );
        assert_eq!(
            order(br#"{"type":"refund.failed","data":{"payment":"p1","amount":1,"currency":"eur","order":"O-9"}}"#),
            None
        );
        assert_eq!(
            v.map("sw", "m", br#"{"type":"customer.created"}"#).unwrap(),
            Verified::Ignored("customer.created".into())
        );
        assert_eq!(
            v.map(
                "sw",
                "m",
                br#"{"type":"payment.succeeded","data":{"payment":"p1","currency":"eur"}}"#
            )
            .unwrap_err()
            .name(),
            "missing_field"
        );
    }
}
