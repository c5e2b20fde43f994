//! Validation of the signing certificate a UnionPay 5.1.0 message carries in
//! `signPubKeyCert`: it must chain to the configured root through the
//! configured middle certificate, be valid when the message was received, and
//! name the configured identity in its CN. Chain and identity results are
//! cached per certificate (keyed by a SHA-256 of its bytes); validity is checked on every call
//! because it depends on the receive time.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use aws_lc_rs::signature::{self, ParsedPublicKey, UnparsedPublicKey};
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{OID_PKCS1_SHA1WITHRSA, OID_PKCS1_SHA256WITHRSA};
use x509_parser::prelude::FromDer;

use super::error::VerifyError;

/// Entries kept in the leaf cache; beyond this it is cleared, so a flood of
/// distinct certificates cannot grow memory without bound.
const LEAF_CACHE_CAPACITY: usize = 1024;

/// The trust anchors of one UnionPay source.
#[derive(Debug, Clone)]
pub struct TrustConfig {
    /// Root certificate (DER or PEM), e.g. `CFCA TEST CS CA`.
    pub root: Vec<u8>,
    /// Middle certificate (DER or PEM) that issues UnionPay's signing certificates.
    pub middle: Vec<u8>,
    /// The third `@` field of the signing certificate's CN.
    pub identity: String,
}

/// What paynotify knows about one certificate, for checks and `--explain`.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// Decimal serial number: UnionPay's `certId`.
    pub serial: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    pub signature_algorithm: String,
    /// Lowercase hex SHA-256 of the DER encoding.
    pub fingerprint: String,
    #[serde(skip)]
    pub(crate) public_key: Vec<u8>,
    /// The key parsed once for each message digest, so a verification does
    /// not parse it again (`None` when the key is not RSA-2048..8192).
    #[serde(skip)]
    pub(crate) key_sha256: Option<ParsedPublicKey>,
    #[serde(skip)]
    pub(crate) key_sha1: Option<ParsedPublicKey>,
    #[serde(skip)]
    subject_raw: Vec<u8>,
}

impl CertInfo {
    /// Parses a certificate from DER or PEM bytes.
    ///
    /// # Errors
    /// `MalformedCertificate` when it is neither.
    pub fn parse(bytes: &[u8]) -> Result<Self, VerifyError> {
        let der = to_der(bytes)?;
        let cert = parse_der(&der)?;
        Ok(Self::from_cert(&cert, &der))
    }

    fn from_cert(cert: &X509Certificate<'_>, der: &[u8]) -> Self {
        let alg = &cert.signature_algorithm.algorithm;
        let signature_algorithm = if *alg == OID_PKCS1_SHA1WITHRSA {
            "sha1WithRSAEncryption".to_owned()
        } else if *alg == OID_PKCS1_SHA256WITHRSA {
            "sha256WithRSAEncryption".to_owned()
        } else {
            alg.to_id_string()
        };
        Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.tbs_certificate.serial.to_string(),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            signature_algorithm,
            fingerprint: hex::encode(Sha256::digest(der)),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
            key_sha256: ParsedPublicKey::new(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                &cert.public_key().subject_public_key.data,
            )
            .ok(),
            key_sha1: ParsedPublicKey::new(
                &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                &cert.public_key().subject_public_key.data,
            )
            .ok(),
            subject_raw: cert.subject().as_raw().to_vec(),
        }
    }

    /// `CertificateExpired` unless `at` is within the validity period.
    ///
    /// # Errors
    /// `CertificateExpired`.
    pub fn check_validity(&self, at: OffsetDateTime) -> Result<(), VerifyError> {
        if at < self.not_before || at > self.not_after {
            return Err(VerifyError::CertificateExpired {
                subject: self.subject.clone(),
                not_before: self.not_before,
                not_after: self.not_after,
                at,
            });
        }
        Ok(())
    }
}

/// Validates signing certificates against one root and middle certificate.
#[derive(Debug)]
pub struct ChainValidator {
    root: CertInfo,
    middle: CertInfo,
    identity: String,
    cache: RwLock<HashMap<[u8; 32], Arc<CertInfo>>>,
}

impl ChainValidator {
    /// Checks that the middle certificate is issued and signed by the root.
    ///
    /// # Errors
    /// `MalformedCertificate` or `UntrustedCertificate` for a bad trust configuration.
    pub fn new(config: &TrustConfig) -> Result<Self, VerifyError> {
        let root = CertInfo::parse(&config.root)?;
        let middle_der = to_der(&config.middle)?;
        let middle_cert = parse_der(&middle_der)?;
        verify_link(&middle_cert, &root, "configured middle certificate")?;
        Ok(Self {
            middle: CertInfo::from_cert(&middle_cert, &middle_der),
            root,
            identity: config.identity.clone(),
            cache: RwLock::new(HashMap::new()),
        })
    }

    /// The configured middle and root certificates.
    pub fn anchors(&self) -> [&CertInfo; 2] {
        [&self.middle, &self.root]
    }

    /// Validates a PEM signing certificate at `at` and returns it.
    ///
    /// # Errors
    /// `MalformedCertificate`, `UntrustedCertificate`, `IdentityMismatch`,
    /// `CertificateExpired`.
    pub fn validate(&self, leaf: &[u8], at: OffsetDateTime) -> Result<Arc<CertInfo>, VerifyError> {
        // Keyed by the exact bytes received, so a cache hit skips PEM decoding;
        // a miss validates from scratch.
        let key: [u8; 32] = Sha256::digest(leaf).into();
        let cached = self.cache.read().ok().and_then(|c| c.get(&key).cloned());
        let info = match cached {
            Some(info) => info,
            None => {
                let info = Arc::new(self.validate_uncached(&to_der(leaf)?)?);
                if let Ok(mut cache) = self.cache.write() {
                    if cache.len() >= LEAF_CACHE_CAPACITY {
                        cache.clear();
                    }
                    cache.insert(key, info.clone());
                }
                info
            }
        };
        info.check_validity(at)?;
        self.middle.check_validity(at)?;
        self.root.check_validity(at)?;
        Ok(info)
    }

    fn validate_uncached(&self, der: &[u8]) -> Result<CertInfo, VerifyError> {
        let cert = parse_der(der)?;
        verify_link(&cert, &self.middle, "signing certificate")?;
        let found = identity_of(&cert).unwrap_or_default();
        if found != self.identity {
            return Err(VerifyError::IdentityMismatch {
                expected: self.identity.clone(),
                found,
            });
        }
        Ok(CertInfo::from_cert(&cert, der))
    }
}

/// The third `@`-separated field of the subject CN, e.g. `中国银联股份有限公司`
/// in `041@8310000000083040@中国银联股份有限公司@00016495`.
fn identity_of(cert: &X509Certificate<'_>) -> Option<String> {
    let attr = cert.subject().iter_common_name().next()?;
    // CFCA encodes some CNs as T61String, which x509-parser does not decode;
    // their bytes are ASCII.
    let cn = attr
        .as_str()
        .ok()
        .or_else(|| std::str::from_utf8(attr.as_slice()).ok())?;
    cn.split('@').nth(2).map(str::to_owned)
}

/// Checks that `issuer` issued `child`: names match and the signature
/// (sha1WithRSA or sha256WithRSA, verified explicitly) is valid.
fn verify_link(
    child: &X509Certificate<'_>,
    issuer: &CertInfo,
    what: &str,
) -> Result<(), VerifyError> {
    if child.issuer().as_raw() != issuer.subject_raw.as_slice() {
        return Err(VerifyError::UntrustedCertificate(format!(
            "{what} is issued by {:?}, not by the configured {:?}",
            child.issuer().to_string(),
            issuer.subject
        )));
    }
    let oid = &child.signature_algorithm.algorithm;
    let algorithm: &'static dyn signature::VerificationAlgorithm = if *oid == OID_PKCS1_SHA1WITHRSA
    {
        &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY
    } else if *oid == OID_PKCS1_SHA256WITHRSA {
        &signature::RSA_PKCS1_2048_8192_SHA256
    } else {
        return Err(VerifyError::UntrustedCertificate(format!(
            "{what} is signed with unsupported algorithm {}",
            oid.to_id_string()
        )));
    };
    UnparsedPublicKey::new(algorithm, &issuer.public_key)
        .verify(child.tbs_certificate.as_ref(), &child.signature_value.data)
        .map_err(|_| {
            VerifyError::UntrustedCertificate(format!(
                "{what}'s signature does not verify with the key of {:?}",
                issuer.subject
            ))
        })
}

fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, VerifyError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(VerifyError::MalformedCertificate(
            "trailing bytes after the certificate".into(),
        )),
        Err(e) => Err(VerifyError::MalformedCertificate(e.to_string())),
    }
}

/// Accepts DER, or one PEM `CERTIFICATE` block (CRLF or LF line ends).
fn to_der(bytes: &[u8]) -> Result<Vec<u8>, VerifyError> {
    let trimmed = bytes.trim_ascii_start();
    if !trimmed.starts_with(b"-----BEGIN") {
        return Ok(bytes.to_vec());
    }
    let (_, pem) = x509_parser::pem::parse_x509_pem(trimmed)
        .map_err(|e| VerifyError::MalformedCertificate(format!("bad PEM: {e}")))?;
    if pem.label != "CERTIFICATE" {
        return Err(VerifyError::MalformedCertificate(format!(
            "PEM block is {:?}, not CERTIFICATE",
            pem.label
        )));
    }
    Ok(pem.contents)
}
