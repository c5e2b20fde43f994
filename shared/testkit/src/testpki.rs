//! A throw-away PKI shaped like UnionPay's: a root, a middle certificate and a
//! signing leaf whose CN is `041@…@{identity}@…`, for the demo, the
//! simulator and tests. Never use it in production.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, KeyPair,
    SerialNumber, PKCS_RSA_SHA256,
};
use time::{Duration, OffsetDateTime};

use paynotify_schemes::unionpay::UNIONPAY_IDENTITY;

/// The generated certificates (PEM) and the leaf's private key (PKCS#8 PEM).
#[derive(Debug, Clone)]
pub struct TestPki {
    pub root_pem: String,
    pub middle_pem: String,
    pub leaf_pem: String,
    pub leaf_key_pem: String,
    /// The leaf's serial in decimal: its UnionPay `certId`.
    pub leaf_cert_id: String,
}

/// Validity and identity of a generated PKI.
#[derive(Debug, Clone)]
pub struct TestPkiOptions {
    /// Third `@` field of the leaf CN.
    pub identity: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Default for TestPkiOptions {
    fn default() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            identity: UNIONPAY_IDENTITY.to_owned(),
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(3 * 365),
        }
    }
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum TestPkiError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

fn params(
    cn: &str,
    ca: bool,
    serial: u64,
    options: &TestPkiOptions,
) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "CN");
    dn.push(DnType::OrganizationName, "paynotify test PKI");
    dn.push(DnType::CommonName, DnValue::Utf8String(cn.to_owned()));
    p.distinguished_name = dn;
    p.is_ca = if ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::NoCa
    };
    p.not_before = options.not_before;
    p.not_after = options.not_after;
    p.serial_number = Some(SerialNumber::from(serial.to_be_bytes().to_vec()));
    Ok(p)
}

/// Generates a root, a middle and a signing leaf (RSA-2048, sha256WithRSA links).
///
/// # Errors
/// `Generate` when key generation or signing fails.
pub fn generate(options: &TestPkiOptions) -> Result<TestPki, TestPkiError> {
    let root_key = KeyPair::generate_for(&PKCS_RSA_SHA256)?;
    let root = params("paynotify TEST ROOT CA", true, 1, options)?.self_signed(&root_key)?;
    let middle_key = KeyPair::generate_for(&PKCS_RSA_SHA256)?;
    let middle =
        params("paynotify TEST OCA", true, 2, options)?.signed_by(&middle_key, &root, &root_key)?;
    let leaf_key = KeyPair::generate_for(&PKCS_RSA_SHA256)?;
    let serial = 0x10_0000_0000 + u64::from(rand_u16(&leaf_key));
    let cn = format!(
        "041@Z{}@{}@00000001",
        options.not_before.year(),
        options.identity
    );
    let leaf = params(&cn, false, serial, options)?.signed_by(&leaf_key, &middle, &middle_key)?;
    Ok(TestPki {
        root_pem: root.pem(),
        middle_pem: middle.pem(),
        leaf_pem: leaf.pem(),
        leaf_key_pem: leaf_key.serialize_pem(),
        leaf_cert_id: serial.to_string(),
    })
}

/// A little entropy for the serial, taken from the fresh key's public bytes.
fn rand_u16(key: &KeyPair) -> u16 {
    let der = key.public_key_der();
    let tail = &der[der.len().saturating_sub(8)..der.len().saturating_sub(6)];
    u16::from_be_bytes([tail[0], tail[1]])
}

impl TestPki {
    /// Writes `root.pem`, `middle.pem`, `signer.pem`, `signer.key.pem` and a
    /// `unionpay-source.toml` snippet that trusts this root for `merchants`.
    ///
    /// # Errors
    /// `Write` when a file cannot be written.
    pub fn write(
        &self,
        dir: &Path,
        identity: &str,
        merchants: &[String],
    ) -> Result<(), TestPkiError> {
        let write = |name: &str, contents: &str| {
            let path = dir.join(name);
            std::fs::write(&path, contents).map_err(|source| TestPkiError::Write {
                path: path.display().to_string(),
                source,
            })
        };
        std::fs::create_dir_all(dir).map_err(|source| TestPkiError::Write {
            path: dir.display().to_string(),
            source,
        })?;
        write("root.pem", &self.root_pem)?;
        write("middle.pem", &self.middle_pem)?;
        write("signer.pem", &self.leaf_pem)?;
        write("signer.key.pem", &self.leaf_key_pem)?;
        write(
            "unionpay-source.toml",
            &self.config_snippet(identity, merchants),
        )
    }

    /// A `[sources.unionpay]` table trusting this PKI (paths relative to its directory).
    pub fn config_snippet(&self, identity: &str, merchants: &[String]) -> String {
        let merchants: Vec<String> = merchants.iter().map(|m| format!("{m:?}")).collect();
        format!(
            "# Trusts the paynotify TEST PKI in this directory. Never use it in production.\n\
             [sources.unionpay]\n\
             scheme = \"unionpay\"\n\
             merchants = [{}]\n\
             success_body = \"ok\"\n\n\
             [sources.unionpay.unionpay]\n\
             root_cert = \"file:root.pem\"\n\
             middle_cert = \"file:middle.pem\"\n\
             identity = {identity:?}\n",
            merchants.join(", ")
        )
    }
}
