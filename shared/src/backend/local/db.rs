//! A SQLite database shared by async callers, with group commit.
//!
//! Every write runs on one writer thread. The thread takes all writes that
//! are waiting, runs each inside its own savepoint of a single transaction,
//! and commits once: one fsync makes many callers' writes durable, and a
//! caller is answered only after the commit. A failed write rolls back to its
//! savepoint without affecting the others. Reads run on a separate connection
//! (WAL lets them proceed while the writer writes).

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::oneshot;

/// Writes committed together at most; more wait for the next commit.
const MAX_GROUP: usize = 512;

type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
type WriteJob = Box<dyn FnOnce(&Connection) -> (bool, Completion) + Send>;

/// One SQLite database file in WAL mode with full fsync on commit.
#[derive(Clone)]
pub(crate) struct Db {
    writer: mpsc::Sender<WriteJob>,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: Arc<std::sync::atomic::AtomicUsize>,
}

/// Reader connections; reads are short and served from SQLite's page cache,
/// so they run inline on the calling thread instead of hopping to a pool.
const READERS: usize = 2;

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // A commit that returned is on disk: every acknowledged write is durable.
    conn.pragma_update(None, "synchronous", "FULL")?;
    // 1 MiB of page cache per connection: the hot pages (queue head, index
    // roots, recent payments) fit, and memory stays flat under load.
    conn.pragma_update(None, "cache_size", -1024)?;
    Ok(conn)
}

impl Db {
    /// Opens `path`, runs `schema` and starts the writer thread.
    pub(crate) fn open(path: &Path, schema: &str) -> rusqlite::Result<Self> {
        let write_conn = connect(path)?;
        write_conn.execute_batch(schema)?;
        let readers = (0..READERS)
            .map(|_| connect(path).map(Mutex::new))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let (tx, rx) = mpsc::channel::<WriteJob>();
        std::thread::Builder::new()
            .name(format!(
                "sqlite-writer-{}",
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ))
            .spawn(move || writer_loop(write_conn, rx))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Self {
            writer: tx,
            readers: Arc::new(readers),
            next_reader: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        })
    }

    /// Runs `f` atomically in the next group commit and returns its result
    /// once the commit is durable.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: WriteJob = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let complete: Completion = Box::new(move |commit| {
                let _ = tx.send(match commit {
                    Ok(()) => result.map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                });
            });
            (ok, complete)
        });
        self.writer
            .send(job)
            .map_err(|_| "database writer stopped".to_owned())?;
        rx.await
            .map_err(|_| "database writer dropped the request".to_owned())?
    }

    /// Runs a read-only `f` on a reader connection. Reads are point lookups
    /// and small scans that take microseconds, so they run on the calling
    /// thread: a hop to a blocking pool would cost more than the read.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let i = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % self.readers.len();
        let guard = self.readers[i]
            .lock()
            .map_err(|_| "database lock poisoned".to_owned())?;
        f(&guard).map_err(|e| e.to_string())
    }
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<WriteJob>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = exec(&conn, "BEGIN IMMEDIATE", []) {
            // Dropping the jobs unrun answers each caller with an error.
            tracing::warn!(error = %e, "database writer cannot begin a transaction");
            drop(jobs);
            continue;
        }
        let mut completions = Vec::with_capacity(jobs.len());
        for job in jobs {
            let savepoint = exec(&conn, "SAVEPOINT op", []);
            let (ok, complete) = job(&conn);
            if savepoint.is_ok() {
                if !ok {
                    let _ = exec(&conn, "ROLLBACK TO op", []);
                }
                let _ = exec(&conn, "RELEASE op", []);
            }
            completions.push(complete);
        }
        let commit = exec(&conn, "COMMIT", [])
            .map(|_| ())
            .map_err(|e| format!("commit: {e}"));
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for complete in completions {
            complete(commit.clone());
        }
    }
}

/// Executes a cached prepared statement (parsed once per connection).
pub(crate) fn exec<P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// Reads one row with a cached prepared statement.
pub(crate) fn row<T, P, F>(conn: &Connection, sql: &str, params: P, f: F) -> rusqlite::Result<T>
where
    P: rusqlite::Params,
    F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
{
    conn.prepare_cached(sql)?.query_row(params, f)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}
