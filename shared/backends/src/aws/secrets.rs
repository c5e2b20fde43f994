//! Secrets Manager as the [`SecretStore`] of `secretsmanager:` references.

use async_trait::async_trait;

use super::describe;
use crate::ports::{SecretStore, SecretStoreError};

/// Reads secrets with `GetSecretValue`, at each call (no cache: callers
/// refresh on their own schedule, `aws.secrets_refresh_secs`).
#[derive(Debug, Clone)]
pub struct SecretsManager(pub aws_sdk_secretsmanager::Client);

#[async_trait]
impl SecretStore for SecretsManager {
    async fn get(&self, arn: &str) -> Result<Vec<u8>, SecretStoreError> {
        let out = self
            .0
            .get_secret_value()
            .secret_id(arn)
            .send()
            .await
            .map_err(|e| SecretStoreError(describe(&e)))?;
        match (out.secret_string, out.secret_binary) {
            (Some(s), _) => Ok(s.into_bytes()),
            (None, Some(b)) => Ok(b.into_inner()),
            (None, None) => Err(SecretStoreError("the secret has no value".into())),
        }
    }
}
