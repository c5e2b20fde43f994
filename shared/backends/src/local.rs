//! The embedded backend: a data directory with the archive as files and
//! SQLite databases for the queue and the ledger. It models SQS and DynamoDB
//! semantics (visibility, receive counts, DLQ, conditional writes) so that
//! tests on it mean something for the AWS backend.

mod archive;
mod db;
mod ledger;
mod outbox;
mod queue;

use std::sync::Arc;

pub use archive::LocalArchive;
pub use ledger::LocalLedger;
pub use queue::{LocalQueue, MAX_SHARDS as MAX_QUEUE_SHARDS};

/// Queue shards when the configuration leaves them unset: one per core, so
/// each core's requests can commit without waiting on another's, at most 8
/// (past that, more files mean smaller commit groups for little gain).
#[must_use]
pub fn default_queue_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

use super::{BackendError, Backends};
use crate::config::BackendConfig;

/// Opens (creating if needed) the data directory `config.data_dir`.
///
/// # Errors
/// `BackendError::Local` when the directory or a database cannot be opened.
pub fn open(config: &BackendConfig) -> Result<Backends, BackendError> {
    let dir = &config.data_dir;
    let fail = |why: String| BackendError::Local {
        path: dir.display().to_string(),
        why,
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    let archive = LocalArchive::open(dir.join("archive")).map_err(|e| fail(e.to_string()))?;
    let queue = LocalQueue::open_sharded(
        &dir.join("queue.sqlite3"),
        config.queue_shards.unwrap_or_else(default_queue_shards),
        config.visibility_timeout_secs,
        config.max_receives,
    )
    .map_err(|e| fail(e.to_string()))?;
    let ledger =
        Arc::new(LocalLedger::open(&dir.join("ledger.sqlite3")).map_err(|e| fail(e.to_string()))?);
    let queue = Arc::new(queue);
    Ok(Backends {
        archive: Arc::new(archive),
        dead_letters: queue.clone(),
        queue,
        deliveries: Some(ledger.clone()),
        webhooks: None,
        watches: ledger.clone(),
        ledger,
        api_calls: None,
        secrets: None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn unset_queue_shards_are_one_per_core_at_most_eight() {
        assert!((1..=8).contains(&super::default_queue_shards()));
    }
}
