//! Stripe webhooks: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=…][,v0=…]`,
//! each `v1` the hex HMAC-SHA256 of `{t}.{exact body}` keyed with the
//! endpoint secret's UTF-8 bytes, `whsec_` prefix included (as stripe-go's
//! `ComputeSignature`). Any `v1` under any configured secret is enough (a
//! rolled secret signs beside the new one); `v0` is never accepted. `t`
//! must be at most `tolerance_secs` old and at most `future_tolerance_secs`
//! ahead of the receive time (Stripe's libraries accept any future time).
//!
//! Events: `payment_intent.succeeded` and `payment_intent.payment_failed`
//! (the payment is the PaymentIntent), `charge.refunded` (its cumulative
//! `amount_refunded`, a [`EventKind::RefundTotal`]), `charge.dispute.created`
//! (recorded); other types are verified and ignored. The event `id` is the
//! idempotency key; `account` (Connect) names the merchant.

use time::OffsetDateTime;

use crate::event::{order_id_of, EventKey, EventKind, EventOutcome, PaymentEvent, PaymentKey};
use crate::secret::SecretRef;
use crate::webhook::default_tolerance_secs;
use crate::webhook::{self, HmacKey, Inbound, Json, WebhookError};
use crate::Verified;
use serde::Deserialize;

const HEADER: &str = "stripe-signature";

/// A Stripe source's secrets and tolerances.
#[derive(Debug)]
pub struct StripeVerifier {
    secrets: Vec<HmacKey>,
    tolerance_secs: u64,
    future_tolerance_secs: u64,
    merchants: Vec<String>,
}

/// The parts of a `Stripe-Signature` header.
struct Signature<'a> {
    timestamp: &'a str,
    v1: Vec<Vec<u8>>,
}

fn parse_header(value: &str) -> Result<Signature<'_>, WebhookError> {
    let bad = |why: &str| WebhookError::MalformedHeader {
        header: HEADER,
        why: why.to_owned(),
    };
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in value.split(',') {
        let Some((k, v)) = item.trim().split_once('=') else {
            return Err(bad("an item is not `key=value`"));
        };
        match k {
            "t" if timestamp.is_some() => return Err(bad("more than one `t`")),
            "t" => timestamp = Some(v),
            // A value that is not hex cannot match; it is not an error of
            // the whole header (another `v1` may match).
            "v1" => v1.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or_else(|| bad("no `t`"))?;
    if v1.is_empty() {
        return Err(bad("no `v1` signature (`v0` is not accepted)"));
    }
    Ok(Signature { timestamp, v1 })
}

impl StripeVerifier {
    /// A verifier for `config` with its secrets already read.
    pub fn new(config: &StripeConfig, secrets: &[String], merchants: &[String]) -> Self {
        Self {
            secrets: secrets
                .iter()
                .map(|s| HmacKey::new(s.trim().as_bytes()))
                .collect(),
            tolerance_secs: config.tolerance_secs,
            future_tolerance_secs: config.future_tolerance_secs,
            merchants: merchants.to_vec(),
        }
    }

    /// Verifies the signature and its time, then maps the event.
    ///
    /// # Errors
    /// The failed step as a [`WebhookError`].
    pub fn verify(&self, source: &str, inbound: &Inbound<'_>) -> Result<Verified, WebhookError> {
        self.authenticate(inbound)?;
        map(source, inbound.body, &self.merchants)
    }

    /// Checks the header, the signatures, then the timestamp.
    ///
    /// # Errors
    /// The failed step.
    pub fn authenticate(&self, inbound: &Inbound<'_>) -> Result<(), WebhookError> {
        let signature = parse_header(inbound.header(HEADER)?)?;
        let signed_at = webhook::parse_timestamp(HEADER, signature.timestamp)?;
        let parts: [&[u8]; 3] = [signature.timestamp.as_bytes(), b".", inbound.body];
        let verified = self
            .secrets
            .iter()
            .any(|k| signature.v1.iter().any(|tag| k.verifies(&parts, tag)));
        if !verified {
            return Err(WebhookError::BadSignature);
        }
        webhook::check_timestamp(
            signed_at,
            inbound.received_at,
            self.tolerance_secs,
            self.future_tolerance_secs,
        )
    }

    /// The `Stripe-Signature` value for `body` at `timestamp` under the
    /// first secret (the simulator's signer).
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> Option<String> {
        let ts = timestamp.to_string();
        let tag = self.secrets.first()?.sign(&[ts.as_bytes(), b".", body]);
        Some(format!("t={ts},v1={}", hex::encode(tag)))
    }

    /// The Stripe object id of a body that may not verify, for the logs.
    pub fn txn_id(body: &[u8]) -> Option<String> {
        Json::parse(body).ok()?.text("/data/object/id").ok()
    }
}

/// An id field that Stripe sends as a string, or as an expanded object.
fn id_of(json: &Json, pointer: &str) -> Option<String> {
    json.text(pointer)
        .ok()
        .or_else(|| json.text(&format!("{pointer}/id")).ok())
        .filter(|s| !s.is_empty())
}

/// Maps a verified event body.
fn map(source: &str, body: &[u8], merchants: &[String]) -> Result<Verified, WebhookError> {
    let json = Json::parse(body)?;
    let event_type = json.text("/type")?;
    let (kind, outcome, amount_at, payment_at) = match event_type.as_str() {
        "payment_intent.succeeded" => (
            EventKind::Payment,
            EventOutcome::Succeeded,
            "/data/object/amount_received",
            "/data/object/id",
        ),
        "payment_intent.payment_failed" => (
            EventKind::Payment,
            EventOutcome::Failed,
            "/data/object/amount",
            "/data/object/id",
        ),
        "charge.refunded" => (
            EventKind::RefundTotal,
            EventOutcome::Succeeded,
            "/data/object/amount_refunded",
            "/data/object/payment_intent",
        ),
        "charge.dispute.created" => (
            EventKind::Dispute,
            EventOutcome::Succeeded,
            "/data/object/amount",
            "/data/object/payment_intent",
        ),
        _ => return Ok(Verified::Ignored(event_type)),
    };
    let event_id = json.text("/id")?;
    // A charge without a PaymentIntent (the older Charges API) is its own
    // payment; a dispute names its charge.
    let payment_ref = id_of(&json, payment_at)
        .or_else(|| id_of(&json, "/data/object/charge"))
        .or_else(|| id_of(&json, "/data/object/id"))
        .ok_or_else(|| WebhookError::MissingField(payment_at.to_owned()))?;
    let merchant = webhook::merchant(json.text("/account").ok(), merchants)?;
    let amount = json.money(json.minor_units(amount_at)?, "/data/object/currency")?;
    let psp_time = match json.get("/created") {
        Some(_) => Some(
            json.minor_units("/created")
                .ok()
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t as i64).ok())
                .ok_or_else(|| WebhookError::MalformedField {
                    field: "/created".into(),
                    why: "not a Unix time".into(),
                })?,
        ),
        None => None,
    };
    let (result_code, result_message) = match event_type.as_str() {
        "payment_intent.payment_failed" => (
            json.text("/data/object/last_payment_error/code").ok(),
            json.text("/data/object/last_payment_error/message").ok(),
        ),
        "charge.dispute.created" => (json.text("/data/object/reason").ok(), None),
        _ => (None, None),
    };
    Ok(Verified::Event(Box::new(PaymentEvent {
        source: source.to_owned(),
        payment_key: PaymentKey::new(source, &merchant, &payment_ref),
        merchant,
        payment_ref,
        event_key: EventKey::new(event_id),
        kind,
        outcome,
        amount,
        currency_defaulted: false,
        psp_txn_id: id_of(&json, "/data/object/id"),
        psp_time,
        result_code: result_code.or(Some(event_type)),
        result_message,
        settle_date: None,
        // Stripe has no order field: merchants name theirs in the
        // PaymentIntent's metadata.
        order_id: order_id_of(
            kind,
            json.text("/data/object/metadata/order_id").ok().as_deref(),
        ),
        legacy_key: None,
    })))
}

/// Signature settings of a Stripe source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeConfig {
    /// The endpoints' signing secrets (`whsec_…`); several while one is
    /// rolled (Stripe signs with both for a while).
    pub secrets: Vec<SecretRef>,
    /// How old a signature's `t` may be at the receive time.
    #[serde(default = "default_tolerance_secs")]
    pub tolerance_secs: u64,
    /// How far `t` may be ahead of the receive time. Stripe's own libraries
    /// set no bound; a signature from the future is refused by default.
    #[serde(default = "default_tolerance_secs")]
    pub future_tolerance_secs: u64,
}

impl crate::SchemeSettings for StripeConfig {
    fn check(&self) -> Result<(), String> {
        if self.secrets.is_empty() {
            return Err("stripe needs at least one signing secret in `secrets`".into());
        }
        Ok(())
    }

    fn secret_refs(&self) -> Vec<&SecretRef> {
        self.secrets.iter().collect()
    }

    fn build(
        &self,
        secrets: &crate::Secrets,
        merchants: &[String],
    ) -> Result<Box<dyn crate::Scheme>, String> {
        let keys = secrets.texts(&self.secrets)?;
        Ok(Box::new(StripeVerifier::new(self, &keys, merchants)))
    }
}

impl crate::Scheme for StripeVerifier {
    fn verify(&self, source: &str, inbound: &Inbound<'_>) -> Result<Verified, crate::Rejected> {
        Ok(StripeVerifier::verify(self, source, inbound)?)
    }

    fn explain(&self, inbound: &Inbound<'_>) -> serde_json::Value {
        serde_json::json!({
            "scheme": "stripe",
            "stripe-signature": inbound.header("stripe-signature").map_err(|e| e.to_string()),
            "signed_content": "{t}.{body}",
            "authenticated": self.authenticate(inbound).map_err(|e| e.to_string()),
        })
    }

    fn txn_id(&self, body: &[u8]) -> Option<String> {
        StripeVerifier::txn_id(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/vectors/stripe/vectors.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn config(future: u64) -> StripeConfig {
        StripeConfig {
            secrets: vec![],
            tolerance_secs: 300,
            future_tolerance_secs: future,
        }
    }

    fn check(v: &StripeVerifier, case: &serde_json::Value) -> Result<(), WebhookError> {
        let headers = vec![(
            "Stripe-Signature".to_owned(),
            case["header"].as_str().unwrap().to_owned(),
        )];
        v.authenticate(&Inbound {
            body: case["payload"].as_str().unwrap().as_bytes(),
            headers: &headers,
            received_at: OffsetDateTime::from_unix_timestamp(case["now"].as_i64().unwrap())
                .unwrap(),
        })
    }

    #[test]
    fn every_vector_gives_its_manifest_verdict() {
        let strict = StripeVerifier::new(&config(300), &["whsec_test_secret".into()], &[]);
        let like_stripe =
            StripeVerifier::new(&config(u64::MAX), &["whsec_test_secret".into()], &[]);
        let cases = vectors()["cases"].as_array().unwrap().clone();
        assert_eq!(cases.len(), 7);
        for case in &cases {
            let name = case["name"].as_str().unwrap();
            let expected = match name {
                "valid" | "valid_with_rolled_secret_and_v0" => Ok(()),
                "expired_301s" => Err("timestamp_outside_tolerance"),
                "reserialized_body" | "wrong_secret" => Err("bad_signature"),
                "v0_only" => Err("malformed_header"),
                // Valid for stripe-python; refused here by default.
                "future_timestamp_1h" => Err("timestamp_outside_tolerance"),
                other => panic!("a case the test does not know: {other}"),
            };
            assert_eq!(
                check(&strict, case).map_err(|e| e.name()),
                expected,
                "{name}"
            );
            // With no future bound, stripe-python's verdicts exactly.
            let python = case["stripe_python_result"].as_str().unwrap() == "valid";
            assert_eq!(check(&like_stripe, case).is_ok(), python, "{name}");
        }
        // The signer reproduces the vector.
        assert_eq!(
            strict
                .sign(
                    1_614_265_330,
                    cases[0]["payload"].as_str().unwrap().as_bytes()
                )
                .unwrap(),
            cases[0]["header"].as_str().unwrap()
        );
        // A rolled secret first, the right one second.
        let rolled = StripeVerifier::new(
            &config(300),
            &["whsec_old".into(), "whsec_test_secret".into()],
            &[],
        );
        assert!(check(&rolled, &cases[0]).is_ok());
    }

    #[test]
    fn malformed_headers_are_named() {
        let v = StripeVerifier::new(&config(300), &["whsec_x".into()], &[]);
        for (value, name) in [
            ("v1=00", "malformed_header"),
            ("t=1,t=2,v1=00", "malformed_header"),
            ("t=abc,v1=00", "malformed_header"),
            ("garbage", "malformed_header"),
            ("t=1,v1=zz", "malformed_header"),
        ] {
            let headers = vec![("stripe-signature".to_owned(), value.to_owned())];
            let i = Inbound {
                body: b"{}",
                headers: &headers,
                received_at: OffsetDateTime::UNIX_EPOCH,
            };
            assert_eq!(v.authenticate(&i).unwrap_err().name(), name, "{value}");
        }
        let i = Inbound {
            body: b"{}",
            headers: &[],
            received_at: OffsetDateTime::UNIX_EPOCH,
        };
        assert_eq!(v.authenticate(&i).unwrap_err().name(), "missing_header");
    }

    #[test]
    fn events_map_to_payments_refund_totals_and_disputes() {
        let m = ["acct_1".to_owned()];
        let event = |t: &str, object: serde_json::Value| {
            serde_json::json!({"id": "evt_1", "type": t, "created": 1_700_000_000, "data": {"object": object}})
                .to_string()
        };
        let paid = event(
            "payment_intent.succeeded",
            serde_json::json!({"id": "pi_1", "amount": 2000, "amount_received": 2000, "currency": "usd"}),
        );
        let Verified::Event(e) = map("stripe", paid.as_bytes(), &m).unwrap() else {
            panic!()
        };
        assert_eq!(e.payment_key.as_str(), "stripe#acct_1#pi_1");
        assert_eq!(
            (e.kind, e.outcome),
            (EventKind::Payment, EventOutcome::Succeeded)
        );
        assert_eq!(e.amount.to_string(), "20.00 USD");
        assert_eq!(e.event_key.as_str(), "evt_1");
        assert_eq!(e.order_id, None, "no metadata, no order");
        let ordered = event(
            "payment_intent.succeeded",
            serde_json::json!({"id": "pi_1", "amount": 2000, "amount_received": 2000, "currency": "usd", "metadata": {"order_id": "ORD-7"}}),
        );
        let Verified::Event(e) = map("stripe", ordered.as_bytes(), &m).unwrap() else {
            panic!()
        };
        assert_eq!(e.order_id.as_deref(), Some("ORD-7"));

        let refunded = event(
            "charge.refunded",
            serde_json::json!({"id": "ch_1", "payment_intent": "pi_1", "amount": 2000, "amount_refunded": 500, "currency": "usd"}),
        );
        let Verified::Event(e) = map("stripe", refunded.as_bytes(), &m).unwrap() else {
            panic!()
        };
        assert_eq!(
            (e.kind, e.payment_ref.as_str(), e.amount.minor),
            (EventKind::RefundTotal, "pi_1", 500)
        );
        assert_eq!(e.psp_txn_id.as_deref(), Some("ch_1"));
        assert_eq!(e.order_id, None);

        let dispute = event(
            "charge.dispute.created",
            serde_json::json!({"id": "dp_1", "charge": "ch_1", "payment_intent": {"id": "pi_1"}, "amount": 2000, "currency": "usd", "reason": "fraudulent"}),
        );
        let Verified::Event(e) = map("stripe", dispute.as_bytes(), &m).unwrap() else {
            panic!()
        };
        assert_eq!(
            (e.kind, e.payment_ref.as_str()),
            (EventKind::Dispute, "pi_1")
        );
        assert_eq!(e.result_code.as_deref(), Some("fraudulent"));

        let failed = event(
            "payment_intent.payment_failed",
            serde_json::json!({"id": "pi_2", "amount": 900, "currency": "eur", "last_payment_error": {"code": "card_declined"}}),
        );
        let Verified::Event(e) = map("stripe", failed.as_bytes(), &m).unwrap() else {
            panic!()
        };
        assert_eq!(
            (e.outcome, e.result_code.as_deref()),
            (EventOutcome::Failed, Some("card_declined"))
        );

        assert_eq!(
            map(
                "stripe",
                event("customer.created", serde_json::json!({"id": "cus_1"})).as_bytes(),
                &m
            )
            .unwrap(),
            Verified::Ignored("customer.created".into())
        );
        let other_account = paid.replacen("{", "{\"account\":\"acct_2\",", 1);
        assert_eq!(
            map("stripe", other_account.as_bytes(), &m)
                .unwrap_err()
                .name(),
            "unknown_merchant"
        );
        let no_amount = paid.replace("\"amount_received\":2000,", "");
        assert_eq!(
            map("stripe", no_amount.as_bytes(), &m).unwrap_err().name(),
            "missing_field"
        );
    }

    #[test]
    fn bytes_not_text_and_spaced_headers() {
        let v = StripeVerifier::new(&config(300), &["whsec_x".into()], &["m".into()]);
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        // Signed bytes that are not UTF-8: authentic, but not an event.
        let body = b"{\"id\": \"\xff\"}";
        let signed = v.sign(1_700_000_000, body).unwrap();
        let spaced = signed.replace(',', " , ");
        for header in [signed, spaced] {
            let headers = vec![("Stripe-Signature".to_owned(), header)];
            let i = Inbound {
                body,
                headers: &headers,
                received_at: at,
            };
            assert_eq!(v.authenticate(&i), Ok(()));
            assert_eq!(v.verify("s", &i).unwrap_err().name(), "malformed_body");
        }
        // Truncated: the signature no longer matches.
        let headers = vec![(
            "stripe-signature".to_owned(),
            v.sign(1_700_000_000, body).unwrap(),
        )];
        let i = Inbound {
            body: &body[..5],
            headers: &headers,
            received_at: at,
        };
        assert_eq!(v.authenticate(&i), Err(WebhookError::BadSignature));
    }
}
