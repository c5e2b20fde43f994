//! PSP signature schemes: verification over the exact raw bytes and the
//! mapping of a verified notification to a [`crate::PaymentEvent`].

pub mod unionpay;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use time::OffsetDateTime;

use crate::config::{ConfigError, SchemeKind, SourceConfig};
use crate::event::PaymentEvent;
use crate::secret::SecretRef;
use unionpay::{TrustConfig, UnionPayVerifier, VerifierConfig, VerifyError};

/// The verifier of one configured source, whatever its scheme.
#[derive(Debug)]
pub enum SourceVerifier {
    UnionPay(UnionPayVerifier),
}

impl SourceVerifier {
    /// The verifier of every configured source, by name.
    ///
    /// # Errors
    /// As [`SourceVerifier::load`].
    pub async fn all(
        config: &crate::config::Config,
        secrets: Option<&aws_sdk_secretsmanager::Client>,
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
        secrets: Option<&aws_sdk_secretsmanager::Client>,
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
                    async move { r.read(secrets).await.map(|s| s.0) }
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
        }
    }

    /// Verifies a raw body received at `received_at` and maps it to an event.
    ///
    /// # Errors
    /// The failed step as a [`VerifyError`].
    pub fn verify(
        &self,
        source: &str,
        body: &[u8],
        received_at: OffsetDateTime,
    ) -> Result<PaymentEvent, VerifyError> {
        match self {
            Self::UnionPay(v) => {
                let verified = v.verify(body, received_at)?;
                unionpay::to_event(source, &verified.fields)
            }
        }
    }
}

impl SourceVerifier {
    /// Every step of verifying `body`, for an operator (`verify --explain`,
    /// `dlq show`): the canonical string, the digest, the certificate chain.
    pub fn explain(&self, body: &[u8]) -> serde_json::Value {
        match self {
            Self::UnionPay(v) => serde_json::to_value(v.explain(body)).unwrap_or_default(),
        }
    }

    /// The PSP's transaction id in a body that may not verify (UnionPay
    /// `queryId`), for the logs; `None` when it cannot be read.
    pub fn txn_id(&self, body: &[u8]) -> Option<String> {
        match self {
            Self::UnionPay(v) => v.parse(body).ok()?.get("queryId").map(str::to_owned),
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

/// Whether any source reads a certificate from Secrets Manager.
pub fn uses_secrets_manager(config: &crate::config::Config) -> bool {
    config
        .sources
        .values()
        .filter_map(|s| s.unionpay.as_ref())
        .any(|u| {
            std::iter::once(&u.root_cert)
                .chain(std::iter::once(&u.middle_cert))
                .chain(u.verify_certs.iter())
                .any(|r| matches!(r, SecretRef::SecretsManager { .. }))
        })
}
