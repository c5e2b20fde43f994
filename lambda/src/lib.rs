//! paynotify on AWS Lambda: the same pipeline as `paynotify-ingest` and
//! `paynotify-worker`, behind other transports.
//!
//! - [`http::Ingest`] answers an API Gateway HTTP API or Function URL event
//!   (payload 2.0) with the server ingest's own [`paynotify_ingest::store`]:
//!   the same envelope, archive key, queue message and answers.
//! - [`sqs::Worker`] processes an SQS event with the server worker's
//!   [`paynotify_worker::process_batch`] and [`paynotify_worker::settle`]:
//!   the same verification, ledger write and dead-letter reasons. Lambda
//!   deletes the records it is not told about, so acknowledged records are
//!   left to it and those that must come back are reported as
//!   `batchItemFailures` (the event source mapping needs
//!   `ReportBatchItemFailures`).
//! - [`events::Events`] reads the ledger table's stream and sends each
//!   write's outgoing events to the merchant's AWS sinks and the webhook
//!   line.
//! - [`webhooks::Webhooks`] posts the webhook line's events to the
//!   merchant's endpoints with the workers' own sender.
//!
//! Configuration, verifiers and SDK clients are built once per execution
//! environment, before the first event ([`load_config`]).

pub mod events;
pub mod http;
pub mod sqs;
pub mod webhooks;

use std::path::PathBuf;

use paynotify_shared::config::{BackendConfig, Config, ConfigError};

/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "PAYNOTIFY_CONFIG";

/// Where the configuration file is: `$PAYNOTIFY_CONFIG`, else
/// `paynotify.toml` in the function's package (`$LAMBDA_TASK_ROOT`, the
/// working directory outside Lambda).
pub fn config_path() -> PathBuf {
    if let Some(path) = std::env::var_os(CONFIG_ENV) {
        return PathBuf::from(path);
    }
    let root =
        std::env::var_os("LAMBDA_TASK_ROOT").map_or_else(|| PathBuf::from("."), PathBuf::from);
    root.join("paynotify.toml")
}

/// Loads the configuration from [`config_path`], with the same
/// `PAYNOTIFY__*` overrides as the servers.
///
/// # Errors
/// When the file cannot be read or is not a valid configuration.
pub fn load_config() -> Result<Config, ConfigError> {
    Config::load(&config_path())
}

/// The backend settings of a function: `config`'s, with no send batching
/// window. An execution environment runs one invocation at a time, so an
/// ingest's send has nothing to share a `SendMessageBatch` with, and waiting
/// `send_batch_window_ms` would only add to every answer.
pub fn backend_config(config: &Config) -> BackendConfig {
    let mut backend = config.backend.clone();
    backend.aws.send_batch_window_ms = 0;
    backend
}

/// The configuration of the ingest function: `config`, with no segment
/// window, for the same reason: its segments hold one notification each
/// (valid segments; a function's cost is its invocations, not its puts).
pub fn ingest_config(config: &Config) -> Config {
    let mut config = config.clone();
    config.ingest.segment_window_ms = Some(0);
    config
}
