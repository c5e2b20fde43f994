//! The backends behind the ports, chosen once from configuration: `local`
//! (a data directory and SQLite) and `aws` (S3, SQS, DynamoDB, Secrets
//! Manager, and the ledger stream's reader and sinks), each behind its cargo
//! feature. Every SDK type and the AWS call counter stay inside this crate;
//! what leaves it is the bundle of ports, [`Backends`].

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "local")]
pub mod local;

use std::sync::Arc;

use time::OffsetDateTime;

use paynotify_config as config;
use paynotify_model::{event, money, outgoing, state};
use paynotify_ports as ports;
use paynotify_records::envelope;

pub use paynotify_ports::Backends;

use crate::config::{BackendConfig, BackendKind};
use crate::ports::SecretStore;

/// Milliseconds since the Unix epoch, as the stores keep times.
pub(crate) fn unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The time `ms` milliseconds after the Unix epoch; `None` out of range.
pub(crate) fn from_unix_ms(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// A stored time, the epoch when it is out of range.
pub(crate) fn stored_time(ms: i64) -> OffsetDateTime {
    from_unix_ms(ms).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Whether the `date=YYYY-MM-DD/hour=HH` partition of an archive key overlaps
/// `[from, to]`; keys without partitions match only an open range.
pub(crate) fn hour_in_range(
    key: &str,
    from: Option<OffsetDateTime>,
    to: Option<OffsetDateTime>,
) -> bool {
    let hour = (|| {
        let date = key.split("date=").nth(1)?.get(..10)?;
        let hour = key.split("hour=").nth(1)?.get(..2)?;
        OffsetDateTime::parse(
            &format!("{date}T{hour}:00:00Z"),
            &time::format_description::well_known::Rfc3339,
        )
        .ok()
    })();
    match hour {
        Some(h) => from.is_none_or(|f| h + time::Duration::HOUR > f) && to.is_none_or(|t| h <= t),
        None => from.is_none() && to.is_none(),
    }
}

/// Why the backends could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("opening the local backend in {path}: {why}")]
    Local { path: String, why: String },
    #[error("opening the AWS backend: {0}")]
    Aws(String),
    #[error("the {0} backend is not in this build (cargo feature `{0}` of paynotify-backends)")]
    NotBuilt(&'static str),
}

/// The secret store of the backend `config` names, without opening its
/// stores (`paynotify verify` reads certificates and nothing else).
pub async fn secret_store(config: &BackendConfig) -> Option<Arc<dyn SecretStore>> {
    match config.kind {
        BackendKind::Local => None,
        #[cfg(feature = "aws")]
        BackendKind::Aws => {
            let clients = aws::Clients::new(&config.aws).await;
            Some(Arc::new(aws::SecretsManager(clients.secrets)))
        }
        // Without the AWS backend nothing reads `secretsmanager:` references;
        // resolving one says so.
        #[cfg(not(feature = "aws"))]
        BackendKind::Aws => None,
    }
}

/// Opens the backends `config` names.
///
/// # Errors
/// `BackendError` when a store cannot be opened.
pub async fn build(config: &BackendConfig) -> Result<Backends, BackendError> {
    match config.kind {
        #[cfg(feature = "local")]
        BackendKind::Local => local::open(config),
        #[cfg(not(feature = "local"))]
        BackendKind::Local => Err(BackendError::NotBuilt("local")),
        #[cfg(feature = "aws")]
        BackendKind::Aws => aws::open(config).await,
        #[cfg(not(feature = "aws"))]
        BackendKind::Aws => Err(BackendError::NotBuilt("aws")),
    }
}
