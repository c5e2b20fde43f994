//! Standard Webhooks signatures of an outgoing request: `v1,` and the
//! base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under each of the
//! endpoint's secrets, space-separated (two while a secret rotates).

use base64::Engine as _;
use paynotify_schemes::webhook::HmacKey;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why a configured secret cannot sign.
#[derive(Debug, thiserror::Error)]
#[error("a whsec_ secret must be base64 of 24 to 64 bytes: {0}")]
pub struct SecretFormat(String);

/// The signing keys of one endpoint.
#[derive(Clone, Debug)]
pub struct Signer(Vec<HmacKey>);

impl Signer {
    /// Keys from `whsec_…` values (the prefix optional).
    ///
    /// # Errors
    /// A value that is not base64 of 24 to 64 bytes (the specification's
    /// range), or no value at all.
    pub fn new(secrets: &[Vec<u8>]) -> Result<Self, SecretFormat> {
        if secrets.is_empty() {
            return Err(SecretFormat("none configured".into()));
        }
        let keys = secrets
            .iter()
            .map(|s| {
                let text = std::str::from_utf8(s)
                    .map_err(|_| SecretFormat("not text".into()))?
                    .trim();
                let b64 = text.strip_prefix("whsec_").unwrap_or(text);
                let bytes = B64.decode(b64).map_err(|e| SecretFormat(e.to_string()))?;
                if !(24..=64).contains(&bytes.len()) {
                    return Err(SecretFormat(format!("{} bytes", bytes.len())));
                }
                Ok(HmacKey::new(&bytes))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self(keys))
    }

    /// The `webhook-signature` value for `body` sent as `id` at `timestamp`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let ts = timestamp.to_string();
        let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts.as_bytes(), b".", body];
        self.0
            .iter()
            .map(|k| format!("v1,{}", B64.encode(k.sign(&parts))))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_specification_s_example() {
        // The reference libraries' own signing test (vector
        // sw_python_go_js_php_ruby_java_csharp_sign of
        // ../shared/vectors/standard-webhooks/vectors.json).
        let signer = Signer::new(&[b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_vec()]).unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn rotation_signs_with_every_secret_and_bad_secrets_are_refused() {
        let a = B64.encode([1u8; 32]);
        let b = B64.encode([2u8; 32]);
        let two =
            Signer::new(&[a.clone().into_bytes(), format!("whsec_{b}").into_bytes()]).unwrap();
        let sig = two.sign("evt_1", 1, b"{}");
        assert_eq!(sig.split(' ').count(), 2);
        assert!(sig.split(' ').all(|s| s.starts_with("v1,")));
        assert!(Signer::new(&[]).is_err());
        assert!(Signer::new(&[b"whsec_not base64!".to_vec()]).is_err());
        assert!(Signer::new(&[B64.encode([0u8; 8]).into_bytes()]).is_err());
    }
}
