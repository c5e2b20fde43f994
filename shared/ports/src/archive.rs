//! The raw archive port.

use async_trait::async_trait;
use time::OffsetDateTime;

/// Archive failures.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// `put` of a key that exists: the object was not overwritten.
    #[error("archive object {0} already exists")]
    AlreadyExists(String),
    #[error("archive object {0} not found")]
    NotFound(String),
    #[error("invalid archive key {0:?}")]
    InvalidKey(String),
    /// The store could not be reached or written; retry later.
    #[error("archive unavailable: {0}")]
    Unavailable(#[source] crate::Cause),
}

/// The raw archive, the source of truth for replay.
///
/// # Contract
/// - `put` is create-only: a second `put` of a key returns `AlreadyExists` and
///   leaves the first object untouched. When `put` returns `Ok`, the bytes are
///   durable (they survive a crash of the process and of the machine).
/// - `get` returns exactly the bytes put; `get_range` the `length` bytes at
///   `offset` of them (`NotFound` for a range past the end, as for a key
///   that is not there).
/// - `list` returns every key under `prefix` whose hour partition lies in
///   `[from, to]` (both optional), sorted.
#[async_trait]
pub trait Archive: Send + Sync {
    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), ArchiveError>;
    async fn get(&self, key: &str) -> Result<Vec<u8>, ArchiveError>;
    async fn get_range(&self, key: &str, offset: u64, length: u64)
        -> Result<Vec<u8>, ArchiveError>;
    async fn list(
        &self,
        prefix: &str,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    ) -> Result<Vec<String>, ArchiveError>;
    /// Why this store can no longer work in this process (a writer thread
    /// that ended), if so: readiness fails and the process stops.
    fn fatal(&self) -> Option<String> {
        None
    }
}
