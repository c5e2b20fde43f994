//! References to keys and certificates (`file:PATH` or
//! `secretsmanager:ARN[#json-key]`, never inline values; the type lives with
//! the schemes that read them), and reading one from Secrets Manager.

pub use paynotify_schemes::secret::{Secret, SecretError, SecretRef};

/// Reads the reference: files locally, `secretsmanager:` through `secrets`.
///
/// # Errors
/// `Read`, `NeedsAws` without a client, `SecretsManager` when the secret or
/// its JSON key cannot be read.
pub async fn read(
    r: &SecretRef,
    secrets: Option<&aws_sdk_secretsmanager::Client>,
) -> Result<Secret, SecretError> {
    let SecretRef::SecretsManager { arn, json_key } = r else {
        return r.read_local();
    };
    let client = secrets.ok_or_else(|| SecretError::NeedsAws(arn.clone()))?;
    let fail = |why: String| SecretError::SecretsManager {
        arn: arn.clone(),
        why,
    };
    let out = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| fail(crate::backend::aws::describe(&e)))?;
    let bytes = match (out.secret_string, out.secret_binary) {
        (Some(s), _) => s.into_bytes(),
        (None, Some(b)) => b.into_inner(),
        (None, None) => return Err(fail("the secret has no value".into())),
    };
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
