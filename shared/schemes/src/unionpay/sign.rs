//! Signing UnionPay messages with an RSA key: what a merchant does for its
//! requests, and what the simulator does in UnionPay's place with the test PKI.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeyPair;
use aws_lc_rs::signature::{self, KeyPair as _};
use base64::Engine;

use super::error::VerifyError;
use super::fields::{canonical_string, Fields};
use super::verify::digest_for_signing;

/// An RSA private key that signs UnionPay messages.
#[derive(Debug)]
pub struct MerchantSigner {
    key: KeyPair,
    rng: SystemRandom,
}

impl MerchantSigner {
    /// Loads a PKCS#8 private key from PEM (`PRIVATE KEY`) or DER.
    ///
    /// # Errors
    /// `MalformedCertificate` when the key cannot be read.
    pub fn from_pkcs8(bytes: &[u8]) -> Result<Self, VerifyError> {
        let der = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            let (_, pem) = x509_parser::pem::parse_x509_pem(bytes.trim_ascii_start())
                .map_err(|e| VerifyError::MalformedCertificate(format!("bad PEM key: {e}")))?;
            pem.contents
        } else {
            bytes.to_vec()
        };
        let key = KeyPair::from_pkcs8(&der).map_err(|e| {
            VerifyError::MalformedCertificate(format!("not an RSA PKCS#8 key: {e}"))
        })?;
        Ok(Self {
            key,
            rng: SystemRandom::new(),
        })
    }
}

/// Signs `fields` in place: replaces `signature` with the base64 RSA
/// PKCS#1 v1.5 SHA-256 signature of hex(SHA-256(S)), as version 5.1.0 does.
/// (5.0.0's SHA-1 signatures are verified but never produced.)
/// Set `certId` or `signPubKeyCert` before signing: they are signed too.
///
/// # Errors
/// `MissingField` without `version`; `UnsupportedSignMethod` for a version other than 5.1.0.
pub fn sign_fields(signer: &MerchantSigner, fields: &mut Fields) -> Result<(), VerifyError> {
    fields.remove("signature");
    let version = fields.require("version")?.to_owned();
    let digest_hex = digest_for_signing(&version, &canonical_string(fields))?;
    let mut sig = vec![0; signer.key.public_modulus_len()];
    signer
        .key
        .sign(
            &signature::RSA_PKCS1_SHA256,
            &signer.rng,
            digest_hex.as_bytes(),
            &mut sig,
        )
        .map_err(|_| VerifyError::MalformedCertificate("RSA signing failed".into()))?;
    fields.set(
        "signature",
        &base64::engine::general_purpose::STANDARD.encode(sig),
    );
    Ok(())
}

/// A merchant's signing key with its certificate's `certId` (the decimal
/// serial number), for the requests paynotify sends to UnionPay.
#[derive(Debug)]
pub struct SigningKey {
    signer: MerchantSigner,
    cert_id: String,
}

impl SigningKey {
    /// A PKCS#8 key (PEM or DER) and its certificate (PEM or DER).
    ///
    /// # Errors
    /// `MalformedCertificate` when either cannot be read, or when the key
    /// is not the certificate's.
    pub fn from_pem(key: &[u8], cert: &[u8]) -> Result<Self, VerifyError> {
        let signer = MerchantSigner::from_pkcs8(key)?;
        Self::pair(signer, cert)
    }

    /// A PKCS#12 file (`.pfx`, as UnionPay issues it; legacy RC2/3DES
    /// encryption included) holding one key and its certificate.
    ///
    /// # Errors
    /// `MalformedCertificate` for a wrong password, a file without a key
    /// and certificate, or a key that is not the certificate's.
    pub fn from_pkcs12(pfx: &[u8], password: &str) -> Result<Self, VerifyError> {
        let store = p12_keystore::KeyStore::from_pkcs12(
            pfx,
            password,
            p12_keystore::Pkcs12ImportPolicy::Strict,
        )
        .map_err(|e| VerifyError::MalformedCertificate(format!("PKCS#12: {e}")))?;
        let (_, chain) = store.private_key_chain().ok_or_else(|| {
            VerifyError::MalformedCertificate(
                "PKCS#12 holds no private key with a certificate".into(),
            )
        })?;
        let cert = chain.certs().first().ok_or_else(|| {
            VerifyError::MalformedCertificate("PKCS#12 key has no certificate".into())
        })?;
        let signer = MerchantSigner::from_pkcs8(chain.key().as_der())?;
        Self::pair(signer, cert.as_der())
    }

    fn pair(signer: MerchantSigner, cert: &[u8]) -> Result<Self, VerifyError> {
        let info = super::certs::CertInfo::parse(cert)?;
        if info.public_key != signer.key.public_key().as_ref() {
            return Err(VerifyError::MalformedCertificate(format!(
                "the signing key is not the key of certificate {:?}",
                info.subject
            )));
        }
        Ok(Self {
            signer,
            cert_id: info.serial,
        })
    }

    /// The certificate's decimal serial number, sent as `certId`.
    pub fn cert_id(&self) -> &str {
        &self.cert_id
    }

    /// Sets `certId` and signs `fields` (see [`sign_fields`]).
    ///
    /// # Errors
    /// As [`sign_fields`].
    pub fn sign(&self, fields: &mut Fields) -> Result<(), VerifyError> {
        fields.set("certId", &self.cert_id);
        sign_fields(&self.signer, fields)
    }
}

/// Verifies a merchant's 5.1.0 request against the merchant's certificate,
/// as UnionPay's gateway does (the certificate it holds for `certId`): what
/// the gateway simulator checks, and a check of our own signing.
///
/// # Errors
/// `UnknownCertId` when `certId` is not the certificate's serial, else the
/// failing step.
pub fn verify_request(fields: &Fields, merchant_cert: &[u8]) -> Result<(), VerifyError> {
    let cert = super::certs::CertInfo::parse(merchant_cert)?;
    let cert_id = fields.require("certId")?;
    if cert_id != cert.serial {
        return Err(VerifyError::UnknownCertId(cert_id.to_owned()));
    }
    let signature = super::verify::decode_signature(fields.require("signature")?)?;
    let digest_hex = digest_for_signing(fields.require("version")?, &canonical_string(fields))?;
    cert.key_sha256
        .as_ref()
        .ok_or_else(|| VerifyError::MalformedCertificate("not an RSA key".into()))?
        .verify_sig(digest_hex.as_bytes(), &signature)
        .map_err(|_| VerifyError::BadSignature)
}
