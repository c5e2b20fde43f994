//! References to keys and certificates: `file:PATH` or
//! `secretsmanager:ARN[#json-key]`, never inline values.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where a key or certificate lives.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SecretRef {
    /// A file; a relative path is resolved against the config file's directory.
    File(PathBuf),
    /// An AWS Secrets Manager secret, optionally one key of its JSON value.
    SecretsManager {
        arn: String,
        json_key: Option<String>,
    },
}

/// Why a reference cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{0} is not a reference: use `file:PATH` or `secretsmanager:ARN[#key]` (inline secrets are not accepted)")]
    NotAReference(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`secretsmanager:{0}` needs the AWS backend (`backend.kind = \"aws\"`)")]
    NeedsAws(String),
    #[error("reading secret {arn}: {why}")]
    SecretsManager { arn: String, why: String },
}

impl SecretRef {
    /// Parses `file:…` or `secretsmanager:…`.
    ///
    /// # Errors
    /// `NotAReference` for anything else, including inline PEM.
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        if let Some(path) = s.strip_prefix("file:").filter(|p| !p.is_empty()) {
            return Ok(Self::File(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("secretsmanager:").filter(|p| !p.is_empty()) {
            let (arn, key) = match rest.split_once('#') {
                Some((arn, key)) => (arn, Some(key.to_owned())),
                None => (rest, None),
            };
            return Ok(Self::SecretsManager {
                arn: arn.to_owned(),
                json_key: key,
            });
        }
        Err(SecretError::NotAReference(describe_unreferenced(s)))
    }

    /// Resolves a relative file path against `base`.
    pub fn relative_to(&self, base: &Path) -> Self {
        match self {
            Self::File(p) if p.is_relative() => Self::File(base.join(p)),
            other => other.clone(),
        }
    }

    /// Reads a `file:` reference.
    ///
    /// # Errors
    /// `Read` when the file cannot be read; `NeedsAws` for Secrets Manager.
    pub fn read_local(&self) -> Result<Secret, SecretError> {
        match self {
            Self::File(path) => {
                std::fs::read(path)
                    .map(Secret)
                    .map_err(|source| SecretError::Read {
                        path: path.clone(),
                        source,
                    })
            }
            Self::SecretsManager { arn, .. } => Err(SecretError::NeedsAws(arn.clone())),
        }
    }
}

impl TryFrom<String> for SecretRef {
    type Error = SecretError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SecretRef> for String {
    fn from(r: SecretRef) -> String {
        r.to_string()
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "file:{}", p.display()),
            Self::SecretsManager {
                arn,
                json_key: None,
            } => write!(f, "secretsmanager:{arn}"),
            Self::SecretsManager {
                arn,
                json_key: Some(k),
            } => write!(f, "secretsmanager:{arn}#{k}"),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRef({self})")
    }
}

/// Bytes of a key or certificate; `Debug` never shows them.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl Secret {
    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret([redacted; {} bytes])", self.0.len())
    }
}

/// What an error may say of a value that is not a reference: its scheme
/// when it has a short one (`http:` for a mistyped reference), else only its
/// length; never a character of what may be an inline key or password.
fn describe_unreferenced(s: &str) -> String {
    match s.split_once(':') {
        Some((scheme, _))
            if (1..=20).contains(&scheme.len())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-') =>
        {
            format!("a `{scheme}:` value")
        }
        _ => format!("a value of {} characters", s.chars().count()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references_and_refuses_inline_values() {
        assert_eq!(
            SecretRef::parse("file:certs/root.pem").unwrap(),
            SecretRef::File("certs/root.pem".into())
        );
        assert_eq!(
            SecretRef::parse("secretsmanager:arn:aws:secretsmanager:x#pem").unwrap(),
            SecretRef::SecretsManager {
                arn: "arn:aws:secretsmanager:x".into(),
                json_key: Some("pem".into())
            }
        );
        let err = SecretRef::parse("-----BEGIN PRIVATE KEY-----\nMIIE")
            .unwrap_err()
            .to_string();
        assert!(err.contains("inline"), "{err}");
        assert!(
            !err.contains("MIIE"),
            "error must not echo the secret: {err}"
        );
        assert!(SecretRef::parse("file:").is_err());
        // An inline HMAC key, a password: not one of its characters is shown.
        for inline in [
            "8c3f0e1d2b4a69788c3f0e1d2b4a6978",
            "000000",
            "s3cr3t-pa55w0rd",
        ] {
            let err = SecretRef::parse(inline).unwrap_err().to_string();
            assert!(
                !err.contains(&inline[..4]),
                "error must not echo the secret: {err}"
            );
            assert!(
                err.contains(&format!("{} characters", inline.len())),
                "{err}"
            );
        }
        let err = SecretRef::parse("http://vault/key")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`http:`") && !err.contains("vault"), "{err}");
        assert_eq!(
            format!("{:?}", Secret(b"key".to_vec())),
            "Secret([redacted; 3 bytes])"
        );
    }
}
