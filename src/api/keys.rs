//! The API's keys: read from their secret references when the listener
//! starts; only each key's SHA-256 digest is kept, and a presented key is
//! found by its digest, compared in constant time with every one.

use paynotify_shared::config::{ApiConfig, ApiScope};
use paynotify_shared::ports::SecretStore;
use sha2::{Digest, Sha256};

/// The shortest key accepted: 32 characters (e.g. `openssl rand -hex 16`
/// gives 32, `-base64 32` gives 44).
pub const MIN_KEY_LEN: usize = 32;

/// One key, known by its digest.
#[derive(Clone)]
pub struct Key {
    pub name: String,
    pub scope: ApiScope,
    digest: [u8; 32],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// A key that is not an API key: `name` and `scope` for the audit
    /// records, signing with `secret` (the console's OIDC sessions).
    pub fn from_secret(name: &str, scope: ApiScope, secret: &[u8]) -> Self {
        Self {
            name: name.to_owned(),
            scope,
            digest: digest(secret),
        }
    }

    /// HMAC-SHA256 of `data` under this key's digest: what the console's
    /// session cookie and its form tokens are signed with, so that they
    /// are worth nothing once the key is removed from the configuration,
    /// and any process holding the same keys accepts them.
    pub fn sign(&self, data: &[u8]) -> Vec<u8> {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.digest);
        aws_lc_rs::hmac::sign(&key, data).as_ref().to_vec()
    }

    /// Whether `tag` is [`Key::sign`] of `data` (compared in constant time).
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.digest);
        aws_lc_rs::hmac::verify(&key, data, tag).is_ok()
    }
}

/// Every configured key.
#[derive(Debug, Clone, Default)]
pub struct Keys(Vec<Key>);

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl Keys {
    /// Reads each key of `config` (a file's trailing newline is not part
    /// of the key).
    ///
    /// # Errors
    /// A secret that cannot be read, or a key shorter than
    /// [`MIN_KEY_LEN`] or holding whitespace or control characters.
    pub async fn load(
        config: &ApiConfig,
        secrets: Option<&dyn SecretStore>,
    ) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for k in &config.keys {
            let secret = paynotify_shared::secret::read(&k.secret, secrets)
                .await
                .map_err(|e| anyhow::anyhow!("api key {:?}: {e}", k.name))?;
            let value = secret.expose().trim_ascii();
            if value.len() < MIN_KEY_LEN || !value.iter().all(u8::is_ascii_graphic) {
                anyhow::bail!(
                    "api key {:?}: a key is at least {MIN_KEY_LEN} printable characters without spaces",
                    k.name
                );
            }
            keys.push(Key {
                name: k.name.clone(),
                scope: k.scope,
                digest: digest(value),
            });
        }
        Ok(Self(keys))
    }

    /// The key named `name`, if any.
    pub fn named(&self, name: &str) -> Option<&Key> {
        self.0.iter().find(|k| k.name == name)
    }

    /// The key `presented` is, if any. Every key is compared, each in
    /// constant time, so the time taken says nothing of which matched.
    pub fn find(&self, presented: &[u8]) -> Option<&Key> {
        let d = digest(presented);
        let mut found = None;
        for k in &self.0 {
            let same = k
                .digest
                .iter()
                .zip(d.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
            if same {
                found = Some(k);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paynotify_shared::config::{ApiKeyConfig, SecretRef};

    fn config(dir: &std::path::Path, keys: &[(&str, ApiScope, &str)]) -> ApiConfig {
        ApiConfig {
            keys: keys
                .iter()
                .map(|(name, scope, value)| {
                    let path = dir.join(format!("{name}.key"));
                    std::fs::write(&path, value).unwrap();
                    ApiKeyConfig {
                        name: (*name).into(),
                        scope: *scope,
                        secret: SecretRef::File(path),
                    }
                })
                .collect(),
            ..ApiConfig::default()
        }
    }

    #[tokio::test]
    async fn a_key_is_found_by_its_value_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let reader = "r".repeat(40);
        let operator = "o".repeat(40);
        let keys = Keys::load(
            &config(
                dir.path(),
                &[
                    ("reader", ApiScope::Read, &format!("{reader}\n")),
                    ("operator", ApiScope::Operate, &operator),
                ],
            ),
            None,
        )
        .await
        .unwrap();
        assert_eq!(keys.find(reader.as_bytes()).unwrap().name, "reader");
        assert_eq!(
            keys.find(operator.as_bytes()).unwrap().scope,
            ApiScope::Operate
        );
        assert!(keys.find(format!("{reader}x").as_bytes()).is_none());
        assert!(keys.find(&reader.as_bytes()[1..]).is_none());
        assert!(keys.find(b"").is_none());
        // Nothing of the key is in its debug form.
        assert!(!format!("{keys:?}").contains("rrrr"));
    }

    #[tokio::test]
    async fn short_or_spaced_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["short", &format!("{} {}", "a".repeat(20), "b".repeat(20))] {
            let err = Keys::load(&config(dir.path(), &[("k", ApiScope::Read, bad)]), None)
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains("at least 32"), "{err}");
        }
    }
}
