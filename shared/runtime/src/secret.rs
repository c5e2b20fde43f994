//! References to keys and certificates (`file:PATH` or
//! `secretsmanager:ARN[#json-key]`, never inline values; the type lives with
//! the schemes that read them), and reading one from the backend's secret
//! store.

pub use paynotify_schemes::secret::{Secret, SecretError, SecretRef};

use crate::ports::SecretStore;

/// Reads the reference: files locally, `secretsmanager:` through `secrets`.
///
/// # Errors
/// `Read`, `NeedsAws` without a store, `SecretsManager` when the secret or
/// its JSON key cannot be read.
pub async fn read(r: &SecretRef, secrets: Option<&dyn SecretStore>) -> Result<Secret, SecretError> {
    let SecretRef::SecretsManager { arn, json_key } = r else {
        return r.read_local();
    };
    let store = secrets.ok_or_else(|| SecretError::NeedsAws(arn.clone()))?;
    let fail = |why: String| SecretError::SecretsManager {
        arn: arn.clone(),
        why,
    };
    let bytes = store.get(arn).await.map_err(|e| fail(e.0))?;
    match json_key {
        None => Ok(Secret(bytes)),
        Some(key) => {
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|_| fail("the secret is not a JSON object".into()))?;
            v.get(key)
                .and_then(|v| v.as_str())
                .map(|s| Secret(s.as_bytes().to_vec()))
                .ok_or_else(|| fail(format!("the secret has no string key {key:?}")))
        }
    }
}
