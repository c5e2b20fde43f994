//! Why a UnionPay notification was rejected, naming the step that failed.

use time::OffsetDateTime;

/// A rejected notification. Every variant is permanent: retrying the same
/// bytes gives the same answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed body: {0}")]
    MalformedBody(String),
    #[error("unsupported charset in `encoding`: {0:?}")]
    UnsupportedEncoding(String),
    #[error("required field `{0}` is missing")]
    MissingField(&'static str),
    #[error("field `{0}` appears more than once")]
    DuplicateField(String),
    #[error("field `{field}` is malformed: {why}")]
    MalformedField { field: &'static str, why: String },
    #[error("unsupported version/signMethod: version={version:?} signMethod={sign_method:?}")]
    UnsupportedSignMethod {
        version: String,
        sign_method: String,
    },
    #[error("`signature` is not valid base64")]
    MalformedSignature,
    #[error("certificate cannot be parsed: {0}")]
    MalformedCertificate(String),
    #[error("certificate is not trusted: {0}")]
    UntrustedCertificate(String),
    #[error("certificate {subject:?} is valid {not_before}..{not_after}, not at {at}")]
    CertificateExpired {
        subject: String,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        at: OffsetDateTime,
    },
    #[error("certificate CN identity is {found:?}, expected {expected:?}")]
    IdentityMismatch { expected: String, found: String },
    #[error("no configured certificate has certId {0}")]
    UnknownCertId(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("merchant {0:?} is not configured for this source")]
    UnknownMerchant(String),
    #[error("transaction type {0:?} is not a payment event paynotify understands")]
    UnsupportedTransaction(String),
}

impl VerifyError {
    /// The variant name, as shown to operators and used as dead-letter reason.
    pub fn name(&self) -> &'static str {
        match self {
            Self::MalformedBody(_) => "malformed_body",
            Self::UnsupportedEncoding(_) => "unsupported_encoding",
            Self::MissingField(_) => "missing_field",
            Self::DuplicateField(_) => "duplicate_field",
            Self::MalformedField { .. } => "malformed_field",
            Self::UnsupportedSignMethod { .. } => "unsupported_sign_method",
            Self::MalformedSignature => "malformed_signature",
            Self::MalformedCertificate(_) => "malformed_certificate",
            Self::UntrustedCertificate(_) => "untrusted_certificate",
            Self::CertificateExpired { .. } => "certificate_expired",
            Self::IdentityMismatch { .. } => "identity_mismatch",
            Self::UnknownCertId(_) => "unknown_cert_id",
            Self::BadSignature => "bad_signature",
            Self::UnknownMerchant(_) => "unknown_merchant",
            Self::UnsupportedTransaction(_) => "unsupported_transaction",
        }
    }

    /// The verification step that failed (DESIGN §6 numbering in words).
    pub fn step(&self) -> &'static str {
        match self {
            Self::MalformedBody(_) | Self::UnsupportedEncoding(_) | Self::DuplicateField(_) => {
                "parse"
            }
            Self::MissingField(_)
            | Self::MalformedField { .. }
            | Self::UnsupportedSignMethod { .. }
            | Self::MalformedSignature => "fields",
            Self::MalformedCertificate(_)
            | Self::UntrustedCertificate(_)
            | Self::CertificateExpired { .. }
            | Self::IdentityMismatch { .. }
            | Self::UnknownCertId(_) => "certificate",
            Self::BadSignature => "signature",
            Self::UnknownMerchant(_) => "merchant",
            Self::UnsupportedTransaction(_) => "mapping",
        }
    }
}
