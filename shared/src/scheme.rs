//! PSP signature schemes: verification over the exact raw bytes and the
//! mapping of a verified notification to a [`crate::PaymentEvent`].

pub mod unionpay;

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
    /// As [`SourceVerifier::from_config`].
    pub fn all(
        config: &crate::config::Config,
    ) -> Result<std::collections::BTreeMap<String, Self>, ConfigError> {
        config
            .sources
            .iter()
            .map(|(name, source)| Ok((name.clone(), Self::from_config(name, source)?)))
            .collect()
    }

    /// Builds the verifier of `name` from its configuration, reading its
    /// certificates.
    ///
    /// # Errors
    /// `ConfigError::Source` when a reference cannot be read or the trust
    /// configuration is invalid.
    pub fn from_config(name: &str, source: &SourceConfig) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Source {
            source_name: name.to_owned(),
            why,
        };
        let read = |r: &SecretRef| r.read_local().map(|s| s.0).map_err(|e| bad(e.to_string()));
        match source.scheme {
            SchemeKind::Unionpay => {
                let up = source
                    .unionpay
                    .as_ref()
                    .ok_or_else(|| bad("missing [unionpay] table".into()))?;
                let config = VerifierConfig {
                    trust: TrustConfig {
                        root: read(&up.root_cert)?,
                        middle: read(&up.middle_cert)?,
                        identity: up.identity.clone(),
                    },
                    verify_certs: up.verify_certs.iter().map(read).collect::<Result<_, _>>()?,
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
