//! UnionPay as a [`Scheme`]: its settings table and its verifier.

use super::{to_event, TrustConfig, UnionPayConfig, UnionPayVerifier, VerifierConfig};
use crate::scheme::{Rejected, Scheme, SchemeSettings, Secrets};
use crate::secret::SecretRef;
use crate::webhook::Inbound;
use crate::Verified;

impl SchemeSettings for UnionPayConfig {
    fn check(&self) -> Result<(), String> {
        self.gateway.as_ref().map_or(Ok(()), |g| g.check())
    }

    fn secret_refs(&self) -> Vec<&SecretRef> {
        let mut refs: Vec<&SecretRef> = self.verify_certs.iter().collect();
        refs.extend([&self.root_cert, &self.middle_cert]);
        refs
    }

    fn default_success_body(&self) -> &'static str {
        "ok"
    }

    fn build(&self, secrets: &Secrets, merchants: &[String]) -> Result<Box<dyn Scheme>, String> {
        let config = VerifierConfig {
            trust: TrustConfig {
                root: secrets.bytes(&self.root_cert)?,
                middle: secrets.bytes(&self.middle_cert)?,
                identity: self.identity.clone(),
            },
            verify_certs: self
                .verify_certs
                .iter()
                .map(|r| secrets.bytes(r))
                .collect::<Result<_, _>>()?,
            merchants: merchants.to_vec(),
            body_format: self.body_format,
        };
        let verifier =
            UnionPayVerifier::new(&config).map_err(|e| format!("trust configuration: {e}"))?;
        Ok(Box::new(verifier))
    }
}

impl Scheme for UnionPayVerifier {
    fn verify(&self, source: &str, inbound: &Inbound<'_>) -> Result<Verified, Rejected> {
        let verified = UnionPayVerifier::verify(self, inbound.body, inbound.received_at)?;
        let event = to_event(source, &verified.fields)?;
        Ok(Verified::Event(Box::new(event)))
    }

    fn explain(&self, inbound: &Inbound<'_>) -> serde_json::Value {
        serde_json::to_value(UnionPayVerifier::explain(self, inbound.body)).unwrap_or_default()
    }

    fn txn_id(&self, body: &[u8]) -> Option<String> {
        self.parse(body).ok()?.get("queryId").map(str::to_owned)
    }

    fn txn_id_field(&self) -> Option<&'static str> {
        Some("unionpay_txn_id")
    }

    fn as_unionpay(&self) -> Option<&UnionPayVerifier> {
        Some(self)
    }
}
