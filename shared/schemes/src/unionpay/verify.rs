//! UnionPay ACP signature verification, exactly as the official SDKs do it
//! (DESIGN §6), over the exact bytes ingest received.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use aws_lc_rs::digest;
use base64::Engine;
use serde::Serialize;
use time::OffsetDateTime;

use super::certs::{CertInfo, ChainValidator, TrustConfig};
use super::error::VerifyError;
use super::fields::{canonical_string, parse_form, parse_raw, BodyFormat, Fields};

/// Everything one UnionPay source needs to verify its notifications.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    pub trust: TrustConfig,
    /// UnionPay's signing certificates for 5.0.0 messages, chosen by `certId`.
    pub verify_certs: Vec<Vec<u8>>,
    /// `merId`s this source accepts.
    pub merchants: Vec<String>,
    pub body_format: BodyFormat,
}

/// A message whose signature and certificate checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    pub fields: Fields,
    pub version: String,
    pub certificate: Arc<CertInfo>,
}

/// What `paynotify verify --explain` shows: the inputs to every step.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub version: Option<String>,
    pub sign_method: Option<String>,
    /// The canonical string S (lossy UTF-8 if the charset is not UTF-8).
    pub canonical_string: String,
    /// The lowercase hex digest of S that the RSA signature covers.
    pub digest: Option<String>,
    pub digest_algorithm: Option<&'static str>,
    /// Signing certificate first, then middle and root (5.1.0).
    pub chain: Vec<CertInfo>,
}

/// Verifies UnionPay messages for one configured source.
#[derive(Debug)]
pub struct UnionPayVerifier {
    chain: ChainValidator,
    by_cert_id: HashMap<String, Arc<CertInfo>>,
    merchants: HashSet<String>,
    format: BodyFormat,
}

enum SignVersion {
    /// 5.1.0 `signMethod=01`: SHA-256, certificate carried in the message.
    V510,
    /// 5.0.0 `signMethod=01`: SHA-1, certificate chosen by `certId`.
    V500,
}

impl UnionPayVerifier {
    /// Builds a verifier; checks the trust configuration once.
    ///
    /// # Errors
    /// Certificate errors when the configured root, middle or 5.0.0
    /// certificates cannot be parsed or do not chain.
    pub fn new(config: &VerifierConfig) -> Result<Self, VerifyError> {
        let chain = ChainValidator::new(&config.trust)?;
        let mut by_cert_id = HashMap::new();
        for bytes in &config.verify_certs {
            let info = CertInfo::parse(bytes)?;
            by_cert_id.insert(info.serial.clone(), Arc::new(info));
        }
        Ok(Self {
            chain,
            by_cert_id,
            merchants: config.merchants.iter().cloned().collect(),
            format: config.body_format,
        })
    }

    /// Parses a body in this source's format.
    ///
    /// # Errors
    /// Parse errors (`MalformedBody`, `DuplicateField`, `UnsupportedEncoding`).
    pub fn parse(&self, body: &[u8]) -> Result<Fields, VerifyError> {
        match self.format {
            BodyFormat::Form => parse_form(body),
            BodyFormat::Raw => parse_raw(body),
        }
    }

    /// Verifies one raw body as received at `received_at`.
    ///
    /// # Errors
    /// The first failed step, as a [`VerifyError`].
    pub fn verify(
        &self,
        body: &[u8],
        received_at: OffsetDateTime,
    ) -> Result<Verified, VerifyError> {
        self.verify_fields(self.parse(body)?, received_at)
    }

    /// Verifies already parsed fields.
    ///
    /// # Errors
    /// The first failed step, as a [`VerifyError`].
    pub fn verify_fields(
        &self,
        fields: Fields,
        received_at: OffsetDateTime,
    ) -> Result<Verified, VerifyError> {
        let signature = decode_signature(fields.require("signature")?)?;
        let (version, certificate) = match sign_version(&fields)? {
            SignVersion::V510 => {
                let pem = fields.require("signPubKeyCert")?;
                (
                    SignVersion::V510,
                    self.chain.validate(pem.as_bytes(), received_at)?,
                )
            }
            SignVersion::V500 => {
                let cert_id = fields.require("certId")?;
                let cert = self
                    .by_cert_id
                    .get(cert_id)
                    .ok_or_else(|| VerifyError::UnknownCertId(cert_id.to_owned()))?;
                cert.check_validity(received_at)?;
                (SignVersion::V500, cert.clone())
            }
        };
        let digest_hex = hex_digest(&version, &canonical_string(&fields));
        let key = match version {
            SignVersion::V510 => certificate.key_sha256.as_ref(),
            SignVersion::V500 => certificate.key_sha1.as_ref(),
        };
        key.ok_or_else(|| {
            VerifyError::MalformedCertificate(
                "the certificate's key is not an RSA key of 2048 to 8192 bits".into(),
            )
        })?
        .verify_sig(digest_hex.as_bytes(), &signature)
        .map_err(|_| VerifyError::BadSignature)?;
        let merchant = fields.require("merId")?;
        if !self.merchants.contains(merchant) {
            return Err(VerifyError::UnknownMerchant(merchant.to_owned()));
        }
        let version = fields.require("version")?.to_owned();
        Ok(Verified {
            fields,
            version,
            certificate,
        })
    }

    /// Shows the canonical string, digest and certificate chain of a body,
    /// as far as they can be computed, without deciding validity.
    pub fn explain(&self, body: &[u8]) -> Explanation {
        let fields = self.parse(body).unwrap_or_default();
        let canonical = canonical_string(&fields);
        let version = sign_version(&fields).ok();
        let mut chain = Vec::new();
        match version {
            Some(SignVersion::V510) => {
                if let Some(leaf) = fields
                    .get("signPubKeyCert")
                    .and_then(|p| CertInfo::parse(p.as_bytes()).ok())
                {
                    chain.push(leaf);
                }
                chain.extend(self.chain.anchors().into_iter().cloned());
            }
            Some(SignVersion::V500) => {
                if let Some(cert) = fields.get("certId").and_then(|id| self.by_cert_id.get(id)) {
                    chain.push((**cert).clone());
                }
            }
            None => {}
        }
        Explanation {
            version: fields.get("version").map(str::to_owned),
            sign_method: fields.get("signMethod").map(str::to_owned),
            canonical_string: String::from_utf8_lossy(&canonical).into_owned(),
            digest: version.as_ref().map(|v| hex_digest(v, &canonical)),
            digest_algorithm: version.as_ref().map(|v| match v {
                SignVersion::V510 => "RSA-PKCS1-SHA256 over hex(SHA-256(S))",
                SignVersion::V500 => "RSA-PKCS1-SHA1 over hex(SHA-1(S))",
            }),
            chain,
        }
    }
}

fn sign_version(fields: &Fields) -> Result<SignVersion, VerifyError> {
    let version = fields.require("version")?;
    let sign_method = fields.require("signMethod")?;
    match (version, sign_method) {
        ("5.1.0", "01") => Ok(SignVersion::V510),
        ("5.0.0", "01") => Ok(SignVersion::V500),
        _ => Err(VerifyError::UnsupportedSignMethod {
            version: version.to_owned(),
            sign_method: sign_method.to_owned(),
        }),
    }
}

/// Lowercase hex of the version's digest of S: the bytes the RSA signature covers.
fn hex_digest(version: &SignVersion, canonical: &[u8]) -> String {
    let algorithm = match version {
        SignVersion::V510 => &digest::SHA256,
        SignVersion::V500 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
    };
    hex::encode(digest::digest(algorithm, canonical))
}

/// Strict standard base64: whitespace or URL-safe characters are rejected.
pub(super) fn decode_signature(signature: &str) -> Result<Vec<u8>, VerifyError> {
    base64::engine::general_purpose::STANDARD
        .decode(signature)
        .map_err(|_| VerifyError::MalformedSignature)
}

/// The hex digest a 5.1.0 signature covers; no other version is signed.
pub(super) fn digest_for_signing(version: &str, canonical: &[u8]) -> Result<String, VerifyError> {
    match version {
        "5.1.0" => Ok(hex_digest(&SignVersion::V510, canonical)),
        other => Err(VerifyError::UnsupportedSignMethod {
            version: other.to_owned(),
            sign_method: "01".into(),
        }),
    }
}
