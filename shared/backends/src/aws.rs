//! The AWS backend: the archive on S3, the queue on SQS (with its DLQ), the
//! ledger on one DynamoDB table. Built from `[backend.aws]` with the standard
//! credential chain; `endpoint_url` points it at an emulator.

mod archive;
mod batch;
mod calls;
mod ledger;
pub mod line;
mod queue;
mod secrets;
pub mod setup;
pub mod sinks;
mod sqs_batches;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

pub use archive::S3Archive;
pub use calls::ApiCalls;
pub use ledger::{DynamoLedger, INLINE_EVENTS};
pub use queue::SqsQueue;
pub use secrets::SecretsManager;

use super::{BackendError, Backends};
use crate::config::{AwsConfig, BackendConfig};
use crate::ports::Cause;

/// Loads the SDK configuration: region, endpoint and timeouts from
/// `config`, credentials from the standard chain.
pub async fn sdk_config(config: &AwsConfig) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(config.region.clone()))
        .timeout_config(timeouts(config, Duration::ZERO));
    if let Some(url) = &config.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// The SDK's timeouts for a call that may wait `extra` on the server (a
/// long-polling receive) on top of `config`'s limits.
pub(crate) fn timeouts(config: &AwsConfig, extra: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .operation_attempt_timeout(Duration::from_millis(config.attempt_timeout_ms) + extra)
        .operation_timeout(Duration::from_millis(config.operation_timeout_ms) + extra)
        .build()
}

/// The service clients, each counting its API calls.
#[derive(Clone, Debug)]
pub struct Clients {
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    /// The merchant's sinks (`[[deliveries.sinks]]`) of the events function.
    pub sns: aws_sdk_sns::Client,
    pub eventbridge: aws_sdk_eventbridge::Client,
    pub calls: Arc<ApiCalls>,
}

impl Clients {
    /// Builds the clients for `config`.
    pub async fn new(config: &AwsConfig) -> Self {
        let sdk = sdk_config(config).await;
        let calls = Arc::new(ApiCalls::new(config).unwrap_or_else(|e| {
            tracing::error!(error = %e, path = ?config.call_log, "cannot write the AWS call log");
            ApiCalls::default()
        }));
        let s3 = aws_sdk_s3::config::Builder::from(&sdk)
            // Emulators serve buckets by path, not by virtual host.
            .force_path_style(config.endpoint_url.is_some())
            .interceptor(calls.interceptor())
            .build();
        let sqs = aws_sdk_sqs::config::Builder::from(&sdk)
            .interceptor(calls.interceptor())
            .build();
        let dynamodb = aws_sdk_dynamodb::config::Builder::from(&sdk)
            .interceptor(calls.interceptor())
            .build();
        let secrets = aws_sdk_secretsmanager::config::Builder::from(&sdk)
            .interceptor(calls.interceptor())
            .build();
        let sns = aws_sdk_sns::config::Builder::from(&sdk)
            .interceptor(calls.interceptor())
            .build();
        let eventbridge = aws_sdk_eventbridge::config::Builder::from(&sdk)
            .interceptor(calls.interceptor())
            .build();
        Self {
            s3: aws_sdk_s3::Client::from_conf(s3),
            sns: aws_sdk_sns::Client::from_conf(sns),
            eventbridge: aws_sdk_eventbridge::Client::from_conf(eventbridge),
            sqs: aws_sdk_sqs::Client::from_conf(sqs),
            dynamodb: aws_sdk_dynamodb::Client::from_conf(dynamodb),
            secrets: aws_sdk_secretsmanager::Client::from_conf(secrets),
            calls,
        }
    }
}

/// Opens the AWS backends (the queue URLs are looked up once).
///
/// # Errors
/// `BackendError::Aws` when a queue cannot be found.
pub async fn open(config: &BackendConfig) -> Result<Backends, BackendError> {
    let clients = Clients::new(&config.aws).await;
    if config.aws.call_log.is_some() && !clients.calls.logging() {
        return Err(BackendError::Aws(format!(
            "cannot write the AWS call log {:?}",
            config.aws.call_log
        )));
    }
    let queue = SqsQueue::open(&clients, &config.aws).await?;
    let ledger = Arc::new(DynamoLedger::new(&clients, &config.aws));
    let queue = Arc::new(queue);
    Ok(Backends {
        archive: Arc::new(S3Archive::new(&clients, &config.aws)),
        dead_letters: queue.clone(),
        queue,
        ledger: ledger.clone(),
        watches: ledger,
        deliveries: None,
        webhooks: Some(Arc::new(line::SqsWebhookLine::new(&clients, &config.aws))),
        api_calls: Some(clients.calls.clone()),
        secrets: Some(Arc::new(SecretsManager(clients.secrets.clone()))),
    })
}

/// A readable message for an SDK error (of any service: they share the
/// smithy error types), with the service's code when it has one.
pub(crate) fn describe<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug + 'static,
{
    match e {
        aws_sdk_s3::error::SdkError::ServiceError(s) => {
            let err = s.err();
            format!(
                "{}: {}",
                err.code().unwrap_or("service error"),
                err.message().unwrap_or("")
            )
        }
        // "dispatch failure" alone says nothing: the chain beneath it
        // names the refused connection, the timeout, the TLS failure.
        other => {
            let mut text = other.to_string();
            let mut below = std::error::Error::source(other);
            while let Some(e) = below {
                text.push_str(": ");
                text.push_str(&e.to_string());
                below = e.source();
            }
            text
        }
    }
}

/// The cause of a failed call for a port's error: described as
/// [`describe`] does, with the SDK's error as its source.
pub(crate) fn cause<E, R>(e: aws_sdk_s3::error::SdkError<E, R>) -> Cause
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    Cause::with_source(describe(&e), e)
}
