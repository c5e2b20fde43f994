//! PSP signature schemes: verification over the exact raw bytes and the
//! mapping of a verified notification to a [`crate::PaymentEvent`].

pub use paynotify_schemes::{adyen, standard_webhooks, stripe, unionpay, webhook, Verified};

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::config::{ConfigError, SchemeKind, SourceConfig};
use crate::secret::SecretRef;
use adyen::AdyenVerifier;
use standard_webhooks::StandardWebhooksVerifier;
use stripe::StripeVerifier;
use unionpay::{TrustConfig, UnionPayVerifier, VerifierConfig, VerifyError};
pub use webhook::{Inbound, WebhookError};

/// The verifier of one configured source, whatever its scheme.
#[derive(Debug)]
// One per source, built at start and on reloads: the size difference
// between schemes costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum SourceVerifier {
    UnionPay(UnionPayVerifier),
    StandardWebhooks(StandardWebhooksVerifier),
    Stripe(StripeVerifier),
    Adyen(AdyenVerifier),
}

/// Why a notification was rejected, whatever its scheme.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error(transparent)]
    UnionPay(#[from] VerifyError),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
}

impl Rejected {
    /// The variant name, as shown to operators and used as dead-letter reason.
    pub fn name(&self) -> &'static str {
        match self {
            Self::UnionPay(e) => e.name(),
            Self::Webhook(e) => e.name(),
        }
    }

    /// The verification step that failed.
    pub fn step(&self) -> &'static str {
        match self {
            Self::UnionPay(e) => e.step(),
            Self::Webhook(e) => e.step(),
        }
    }
}

impl SourceVerifier {
    /// The verifier of every configured source, by name.
    ///
    /// # Errors
    /// As [`SourceVerifier::load`].
    pub async fn all(
        config: &crate::config::Config,
        secrets: Option<&dyn crate::ports::SecretStore>,
    ) -> Result<BTreeMap<String, Self>, ConfigError> {
        let mut out = BTreeMap::new();
        for (name, source) in &config.sources {
            out.insert(name.clone(), Self::load(name, source, secrets).await?);
        }
        Ok(out)
    }

    /// Builds the verifier of `name`, reading its certificates from files or
    /// Secrets Manager.
    ///
    /// # Errors
    /// `ConfigError::Source` when a reference cannot be read or the trust
    /// configuration is invalid.
    pub async fn load(
        name: &str,
        source: &SourceConfig,
        secrets: Option<&dyn crate::ports::SecretStore>,
    ) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Source {
            source_name: name.to_owned(),
            why,
        };
        match source.scheme {
            SchemeKind::Unionpay => {
                let up = source
                    .unionpay
                    .as_ref()
                    .ok_or_else(|| bad("missing [unionpay] table".into()))?;
                let read = |r: &SecretRef| {
                    let r = r.clone();
                    async move { crate::secret::read(&r, secrets).await.map(|s| s.0) }
                };
                let mut verify_certs = Vec::new();
                for r in &up.verify_certs {
                    verify_certs.push(read(r).await.map_err(|e| bad(e.to_string()))?);
                }
                let config = VerifierConfig {
                    trust: TrustConfig {
                        root: read(&up.root_cert).await.map_err(|e| bad(e.to_string()))?,
                        middle: read(&up.middle_cert)
                            .await
                            .map_err(|e| bad(e.to_string()))?,
                        identity: up.identity.clone(),
                    },
                    verify_certs,
                    merchants: source.merchants.clone(),
                    body_format: up.body_format,
                };
                UnionPayVerifier::new(&config)
                    .map(Self::UnionPay)
                    .map_err(|e| bad(format!("trust configuration: {e}")))
            }
            SchemeKind::StandardWebhooks => {
                let sw = source
                    .standard_webhooks
                    .as_ref()
                    .ok_or_else(|| bad("missing [standard_webhooks] table".into()))?;
                let keys = read_texts(&sw.secrets, secrets)
                    .await
                    .map_err(|e| bad(e.to_string()))?;
                let public = read_texts(&sw.public_keys, secrets)
                    .await
                    .map_err(|e| bad(e.to_string()))?;
                StandardWebhooksVerifier::new(sw, &keys, &public, &source.merchants)
                    .map(Self::StandardWebhooks)
                    .map_err(|e| bad(format!("keys: {e}")))
            }
            SchemeKind::Stripe => {
                let st = source
                    .stripe
                    .as_ref()
                    .ok_or_else(|| bad("missing [stripe] table".into()))?;
                let keys = read_texts(&st.secrets, secrets)
                    .await
                    .map_err(|e| bad(e.to_string()))?;
                Ok(Self::Stripe(StripeVerifier::new(
                    st,
                    &keys,
                    &source.merchants,
                )))
            }
            SchemeKind::Adyen => {
                let a = source
                    .adyen
                    .as_ref()
                    .ok_or_else(|| bad("missing [adyen] table".into()))?;
                let keys = read_texts(&a.hmac_keys, secrets)
                    .await
                    .map_err(|e| bad(e.to_string()))?;
                AdyenVerifier::new(a, &keys, &source.merchants)
                    .map(Self::Adyen)
                    .map_err(|e| bad(e.to_string()))
            }
        }
    }

    /// Verifies a notification (its exact body, and the headers a webhook
    /// scheme signs) received at `inbound.received_at`, and maps it.
    ///
    /// # Errors
    /// The failed step as [`Rejected`].
    pub fn verify(&self, source: &str, inbound: &Inbound<'_>) -> Result<Verified, Rejected> {
        match self {
            Self::UnionPay(v) => {
                let verified = v.verify(inbound.body, inbound.received_at)?;
                let event = unionpay::to_event(source, &verified.fields)?;
                Ok(Verified::Event(Box::new(event)))
            }
            Self::StandardWebhooks(v) => Ok(v.verify(source, inbound)?),
            Self::Stripe(v) => Ok(v.verify(source, inbound)?),
            Self::Adyen(v) => Ok(v.verify(source, inbound)?),
        }
    }

    /// Verifies item `index` of a notification that [`SourceVerifier::verify`]
    /// answered with [`Verified::Items`].
    ///
    /// # Errors
    /// The failed step; a scheme without items rejects an index other than 0.
    pub fn verify_item(
        &self,
        source: &str,
        inbound: &Inbound<'_>,
        index: u32,
    ) -> Result<Verified, Rejected> {
        match self {
            Self::Adyen(v) => Ok(v.verify_item(source, inbound, index)?),
            _ if index == 0 => self.verify(source, inbound),
            _ => Err(WebhookError::MalformedBody(format!(
                "item {index} of a notification without items"
            ))
            .into()),
        }
    }
}

impl SourceVerifier {
    /// Every step of verifying `body`, for an operator (`verify --explain`,
    /// `dlq show`): the canonical string, the digest, the certificate chain.
    pub fn explain(&self, inbound: &Inbound<'_>) -> serde_json::Value {
        match self {
            Self::UnionPay(v) => serde_json::to_value(v.explain(inbound.body)).unwrap_or_default(),
            Self::StandardWebhooks(v) => {
                let header = |name| inbound.header(name).map_err(|e| e.to_string());
                serde_json::json!({
                    "scheme": "standard_webhooks",
                    "webhook-id": header("webhook-id"),
                    "webhook-timestamp": header("webhook-timestamp"),
                    "webhook-signature": header("webhook-signature"),
                    "signed_content": "{webhook-id}.{webhook-timestamp}.{body}",
                    "authenticated": v.authenticate(inbound).map_err(|e| e.to_string()),
                })
            }
            Self::Adyen(v) => {
                let items: Vec<serde_json::Value> = adyen::items(inbound.body)
                    .map(|items| {
                        items
                            .iter()
                            .map(|item| {
                                serde_json::json!({
                                    "signed_string": adyen::signed_string(item),
                                    "authenticated": v.authenticate(item).map_err(|e| e.to_string()),
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                serde_json::json!({ "scheme": "adyen", "items": items })
            }
            Self::Stripe(v) => serde_json::json!({
                "scheme": "stripe",
                "stripe-signature": inbound.header("stripe-signature").map_err(|e| e.to_string()),
                "signed_content": "{t}.{body}",
                "authenticated": v.authenticate(inbound).map_err(|e| e.to_string()),
            }),
        }
    }

    /// The PSP's transaction id in a body that may not verify (UnionPay
    /// `queryId`), for the logs; `None` when it cannot be read.
    pub fn txn_id(&self, body: &[u8]) -> Option<String> {
        match self {
            Self::UnionPay(v) => v.parse(body).ok()?.get("queryId").map(str::to_owned),
            Self::StandardWebhooks(v) => v.txn_id(body),
            Self::Stripe(_) => StripeVerifier::txn_id(body),
            Self::Adyen(_) => AdyenVerifier::txn_id(body),
        }
    }
}

/// The verifiers of all sources, replaceable while workers run so that a
/// rotated certificate in Secrets Manager is picked up without a restart.
#[derive(Debug, Default)]
pub struct VerifierSet {
    current: RwLock<Arc<BTreeMap<String, SourceVerifier>>>,
}

impl VerifierSet {
    /// A set holding `verifiers`.
    pub fn new(verifiers: BTreeMap<String, SourceVerifier>) -> Self {
        Self {
            current: RwLock::new(Arc::new(verifiers)),
        }
    }

    /// The verifiers now.
    pub fn current(&self) -> Arc<BTreeMap<String, SourceVerifier>> {
        self.current.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// Replaces all verifiers at once.
    pub fn replace(&self, verifiers: BTreeMap<String, SourceVerifier>) {
        if let Ok(mut c) = self.current.write() {
            *c = Arc::new(verifiers);
        }
    }
}

/// Reads text secrets (webhook signing secrets, public keys) from their
/// references.
async fn read_texts(
    refs: &[SecretRef],
    secrets: Option<&dyn crate::ports::SecretStore>,
) -> Result<Vec<String>, crate::secret::SecretError> {
    let mut out = Vec::new();
    for r in refs {
        out.push(String::from_utf8_lossy(&crate::secret::read(r, secrets).await?.0).into_owned());
    }
    Ok(out)
}

/// Whether any source reads a certificate from Secrets Manager.
pub fn uses_secrets_manager(config: &crate::config::Config) -> bool {
    config.sources.values().any(|s| {
        let unionpay = s.unionpay.iter().flat_map(|u| {
            std::iter::once(&u.root_cert)
                .chain(std::iter::once(&u.middle_cert))
                .chain(u.verify_certs.iter())
        });
        let webhooks = s
            .standard_webhooks
            .iter()
            .flat_map(|w| w.secrets.iter().chain(w.public_keys.iter()))
            .chain(s.stripe.iter().flat_map(|st| st.secrets.iter()))
            .chain(s.adyen.iter().flat_map(|a| a.hmac_keys.iter()));
        unionpay
            .chain(webhooks)
            .any(|r| matches!(r, SecretRef::SecretsManager { .. }))
    })
}

#[cfg(test)]
mod hostile_input {
    //! Whatever arrives, a webhook verifier answers with a verdict, never a
    //! panic: arbitrary bytes for the body, arbitrary header values.

    use proptest::prelude::*;
    use time::OffsetDateTime;

    use super::*;
    use crate::config::{AdyenConfig, CaptureMode, StripeConfig};

    fn verifiers() -> Vec<SourceVerifier> {
        let sw: crate::config::StandardWebhooksConfig = serde_json::from_value(serde_json::json!({
            "secrets": ["file:unused"],
            "fields": {"event_type": "/type", "payment_ref": "/data/payment",
                       "amount": "/data/amount", "currency": "/data/currency"},
            "events": {"payment.succeeded": "payment"}
        }))
        .unwrap();
        let merchants = ["m".to_owned()];
        vec![
            SourceVerifier::StandardWebhooks(
                StandardWebhooksVerifier::new(&sw, &["whsec_AAAA".into()], &[], &merchants)
                    .unwrap(),
            ),
            SourceVerifier::Stripe(StripeVerifier::new(
                &StripeConfig {
                    secrets: vec![],
                    tolerance_secs: 300,
                    future_tolerance_secs: 300,
                },
                &["whsec_x".into()],
                &merchants,
            )),
            SourceVerifier::Adyen(
                AdyenVerifier::new(
                    &AdyenConfig {
                        hmac_keys: vec![],
                        capture: CaptureMode::Manual,
                    },
                    &["00".repeat(32)],
                    &merchants,
                )
                .unwrap(),
            ),
        ]
    }

    proptest! {
        #[test]
        fn any_body_and_headers_get_a_verdict(
            body in prop::collection::vec(any::<u8>(), 0..512),
            json_items in "\\{\"notificationItems\":\\[\\{\"NotificationRequestItem\":\\{[ -~]{0,80}\\}\\}\\]\\}",
            values in prop::collection::vec("[ -~]{0,64}", 4),
            index in 0u32..4,
        ) {
            let headers: Vec<(String, String)> = ["webhook-id", "webhook-timestamp", "webhook-signature", "stripe-signature"]
                .iter()
                .zip(values)
                .map(|(k, v)| ((*k).to_owned(), v))
                .collect();
            for v in verifiers() {
                for b in [&body[..], json_items.as_bytes()] {
                    let inbound = Inbound { body: b, headers: &headers, received_at: OffsetDateTime::UNIX_EPOCH };
                    let _ = v.verify("s", &inbound);
                    let _ = v.verify_item("s", &inbound, index);
                    let _ = v.explain(&inbound);
                    let _ = v.txn_id(b);
                }
            }
        }
    }
}
