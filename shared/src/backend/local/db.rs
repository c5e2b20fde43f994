//! A SQLite connection shared by async callers: each call runs on the
//! blocking pool so the runtime never waits on disk.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

/// One SQLite database file in WAL mode with full fsync on commit.
#[derive(Clone)]
pub(crate) struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    /// Opens `path` and runs `schema`.
    pub(crate) fn open(path: &Path, schema: &str) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A commit that returned is on disk: every 200 ingest sends is durable.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(schema)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| "database lock poisoned".to_owned())?;
            f(&mut guard).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("database task failed: {e}"))?
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
