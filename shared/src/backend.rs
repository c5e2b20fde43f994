//! Backends for the three ports, chosen once from configuration.

pub mod aws;
pub mod local;

use std::sync::Arc;

use time::OffsetDateTime;

use crate::config::{BackendConfig, BackendKind};
use crate::ports::{Archive, CallCounter, Deliveries, Ledger, Queue, SecretStore, WatchStore};

/// The archive, queue and ledger of one deployment.
#[derive(Clone)]
pub struct Backends {
    pub archive: Arc<dyn Archive>,
    pub queue: Arc<dyn Queue>,
    pub ledger: Arc<dyn Ledger>,
    /// UnionPay's status-query watches (in the ledger's database or table).
    pub watches: Arc<dyn WatchStore>,
    /// The outbox of the ledger's writes and their deliveries to the
    /// merchant's endpoints (local backend; on AWS the ledger table's stream
    /// is the outbox, read by a deliverer not built yet).
    pub deliveries: Option<Arc<dyn Deliveries>>,
    /// API call counts (AWS backend only).
    pub api_calls: Option<Arc<dyn CallCounter>>,
    /// Where `secretsmanager:` references are read (AWS backend only).
    pub secrets: Option<Arc<dyn SecretStore>>,
}

impl Backends {
    /// Why one of the stores can no longer work in this process, if so.
    pub fn fatal(&self) -> Option<String> {
        self.archive
            .fatal()
            .or_else(|| self.queue.fatal())
            .or_else(|| self.ledger.fatal())
    }

    /// Watches the stores and, when one can no longer work, logs why and
    /// cancels `shutdown`; the returned task ends with that reason (or
    /// `None` when `shutdown` was cancelled for another reason).
    pub fn watch(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<Option<String>> {
        let backends = self.clone();
        tokio::spawn(async move {
            loop {
                if let Some(why) = backends.fatal() {
                    tracing::error!(error = %why, "a store can no longer be written; stopping");
                    shutdown.cancel();
                    return Some(why);
                }
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
                    () = shutdown.cancelled() => return backends.fatal(),
                }
            }
        })
    }
}

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
}

/// The secret store of the backend `config` names, without opening its
/// stores (`paynotify verify` reads certificates and nothing else).
pub async fn secret_store(config: &BackendConfig) -> Option<Arc<dyn SecretStore>> {
    match config.kind {
        BackendKind::Local => None,
        BackendKind::Aws => {
            let clients = aws::Clients::new(&config.aws).await;
            Some(Arc::new(aws::SecretsManager(clients.secrets)))
        }
    }
}

/// Opens the backends `config` names.
///
/// # Errors
/// `BackendError` when a store cannot be opened.
pub async fn build(config: &BackendConfig) -> Result<Backends, BackendError> {
    match config.kind {
        BackendKind::Local => local::open(config),
        BackendKind::Aws => aws::open(config).await,
    }
}
