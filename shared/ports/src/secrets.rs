//! Where `secretsmanager:` references are read, and what a backend's
//! provider API was asked: the two things generic code needs from a cloud
//! backend besides the three stores, without naming its SDK.

use std::collections::BTreeMap;

use async_trait::async_trait;

/// A secret store could not give a secret's value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SecretStoreError(pub String);

/// A store of secrets named by ARN (AWS Secrets Manager).
///
/// # Contract
/// - `get` returns the current value of the secret `arn` names (its string,
///   or its binary value), read at the call: a rotated secret's new value
///   is returned by the next call.
/// - It fails when the secret does not exist, has no value, or the store
///   cannot be reached; the error says which in words.
#[async_trait]
pub trait SecretStore: Send + Sync {
    async fn get(&self, arn: &str) -> Result<Vec<u8>, SecretStoreError>;
}

/// The calls a backend made to its provider's API in this process, for
/// `/metrics` (`paynotify_aws_api_calls_total`).
pub trait CallCounter: Send + Sync + std::fmt::Debug {
    /// Calls so far by `service.operation` (e.g. `sqs.ReceiveMessage`).
    fn snapshot(&self) -> BTreeMap<String, u64>;
}
