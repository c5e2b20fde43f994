//! A SQLite database shared by async callers, with group commit.
//!
//! Every write runs on one writer thread. The thread takes all writes that
//! are waiting, runs each inside its own savepoint of a single transaction,
//! and commits once: one fsync makes many callers' writes durable, and a
//! caller is answered only after the commit. A failed (or panicking) write
//! rolls back to its savepoint without affecting the others; a write whose
//! savepoint cannot be opened is not run; when a rollback to a savepoint
//! itself fails, the whole group is rolled back and every caller in it gets
//! an error, so partial writes are never committed. Reads run on a separate
//! connection (WAL lets them proceed while the writer writes). When the
//! writer thread ends for any reason, [`Db::fatal`] says so: readiness fails
//! and the process stops instead of answering 503 forever.
//!
//! Copying the WAL back into the database file (a checkpoint) is taken off
//! the writer: a checkpointer thread with its own connection runs a passive
//! checkpoint (it never blocks the writer or readers) at most every
//! [`CHECKPOINT_EVERY`] while commits arrive. By default SQLite checkpoints
//! on the committing connection, about a quarter of the writer's time under
//! load, on the one thread that every write waits for. The writer keeps a
//! backstop: when the WAL reaches [`BACKSTOP_PAGES`] (the checkpointer fell
//! behind, failed, or never caught up between two commits, which SQLite
//! needs to start the WAL over), the committing connection checkpoints what
//! is left, as SQLite would by default. A checkpoint only copies pages that
//! are already durable in the WAL: it changes no answer a caller got.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

/// Writes committed together at most; more wait for the next commit.
const MAX_GROUP: usize = 512;

/// The checkpointer's pace: at most one checkpoint this often while commits
/// arrive (each ends in an fsync of the database file), none when idle.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(20);

/// WAL pages (4 KiB each) at which the writer checkpoints by itself. SQLite's
/// default is 1,000 on every commit; with the checkpointer ahead, what is
/// left to copy at this mark is the last [`CHECKPOINT_EVERY`] of writes.
const BACKSTOP_PAGES: i64 = 2_000;

type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
type WriteJob = Box<dyn FnOnce(&Connection) -> (bool, Completion) + Send>;

/// What the writer thread receives.
enum Msg {
    Write(WriteJob),
    /// End the thread, as a crash of it would (tests).
    Stop,
}

/// One SQLite database file in WAL mode with full fsync on commit.
#[derive(Clone)]
pub(crate) struct Db {
    writer: mpsc::Sender<Msg>,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: Arc<std::sync::atomic::AtomicUsize>,
    /// Set when the writer thread has ended.
    stopped: Arc<AtomicBool>,
    name: String,
}

/// Marks the writer stopped when its thread ends, by return or by panic.
struct StopFlag(Arc<AtomicBool>);

impl Drop for StopFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Reader connections; reads are short and served from SQLite's page cache,
/// so they run inline on the calling thread instead of hopping to a pool.
const READERS: usize = 2;

/// Puts the database in WAL mode. Switching a new file's journal mode needs
/// the file to itself, and SQLite answers "busy" at once (without the busy
/// wait) when another opener holds it: tried again for up to two seconds.
/// Once in WAL, writers queue on the busy timeout.
pub(crate) fn set_wal(conn: &Connection) -> rusqlite::Result<()> {
    let mut tries = 0;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Ok(()) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && tries < 200 =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    set_wal(&conn)?;
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
        write_conn.pragma_update(None, "wal_autocheckpoint", BACKSTOP_PAGES)?;
        let checkpoint_conn = connect(path)?;
        let readers = (0..READERS)
            .map(|_| connect(path).map(Mutex::new))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stopped = Arc::new(AtomicBool::new(false));
        let flag = StopFlag(stopped.clone());
        // One pending kick is enough: a checkpoint covers every commit
        // before it. The writer holds the only sender, so the checkpointer
        // ends when the writer does.
        let (kick, kicks) = mpsc::sync_channel::<()>(1);
        let spawn_error = |e| rusqlite::Error::ToSqlConversionFailure(Box::new(e));
        std::thread::Builder::new()
            .name(format!("ckpt-{name}"))
            .spawn(move || checkpointer_loop(checkpoint_conn, kicks))
            .map_err(spawn_error)?;
        std::thread::Builder::new()
            .name(format!("db-{name}"))
            .spawn(move || {
                let _flag = flag;
                writer_loop(write_conn, rx, kick);
            })
            .map_err(spawn_error)?;
        Ok(Self {
            writer: tx,
            readers: Arc::new(readers),
            next_reader: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            stopped,
            name,
        })
    }

    /// Why this database can no longer be written, if it cannot.
    pub(crate) fn fatal(&self) -> Option<String> {
        self.stopped
            .load(Ordering::SeqCst)
            .then(|| format!("the writer of {} has stopped", self.name))
    }

    /// Ends the writer thread, as a crash of it would (tests).
    #[doc(hidden)]
    pub(crate) fn stop_writer(&self) {
        let _ = self.writer.send(Msg::Stop);
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
            .send(Msg::Write(job))
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

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Msg>, kick: mpsc::SyncSender<()>) {
    let mut stop = false;
    while let Ok(first) = rx.recv() {
        let Msg::Write(first) = first else { return };
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(Msg::Write(job)) => jobs.push(job),
                Ok(Msg::Stop) => {
                    stop = true;
                    break;
                }
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
        let mut broken = None;
        for job in jobs {
            if broken.is_some() {
                // Dropped unrun: its caller gets an error.
                continue;
            }
            if let Err(e) = exec(&conn, "SAVEPOINT op", []) {
                // Not run outside a savepoint: its writes could not be undone.
                tracing::warn!(error = %e, "database writer cannot open a savepoint");
                continue;
            }
            // A panicking job drops its completion (its caller gets an
            // error) and is rolled back like a failed one.
            let ok = match catch_unwind(AssertUnwindSafe(|| job(&conn))) {
                Ok((ok, complete)) => {
                    completions.push(complete);
                    ok
                }
                Err(_) => false,
            };
            if !ok {
                if let Err(e) = exec(&conn, "ROLLBACK TO op", []) {
                    broken = Some(format!("rollback to savepoint: {e}"));
                    continue;
                }
            }
            if let Err(e) = exec(&conn, "RELEASE op", []) {
                broken = Some(format!("release savepoint: {e}"));
            }
        }
        let commit = match broken {
            // The group's state is unknown: none of it is committed.
            Some(why) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(format!("group rolled back: {why}"))
            }
            None => exec(&conn, "COMMIT", [])
                .map(|_| ())
                .map_err(|e| format!("commit: {e}")),
        };
        if commit.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        if commit.is_ok() {
            // Full: a kick is already pending and covers this commit.
            let _ = kick.try_send(());
        }
        for complete in completions {
            complete(commit.clone());
        }
        if stop {
            return;
        }
    }
}

/// Runs a passive checkpoint after commits, at most every
/// [`CHECKPOINT_EVERY`], until the writer ends. A failed checkpoint is
/// logged when checkpoints start failing and retried on the next kick; the
/// writer's backstop keeps the WAL bounded meanwhile.
fn checkpointer_loop(conn: Connection, kicks: mpsc::Receiver<()>) {
    let mut last: Option<Instant> = None;
    let mut failing = false;
    while kicks.recv().is_ok() {
        if let Some(last) = last {
            let wait = CHECKPOINT_EVERY.saturating_sub(last.elapsed());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
        // A kick that came during the wait is covered by this checkpoint.
        let _ = kicks.try_recv();
        last = Some(Instant::now());
        match checkpoint(&conn) {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(
                    error = %e,
                    "database checkpoint failed; the writer checkpoints at its backstop until one succeeds"
                );
            }
            Err(_) => {}
        }
    }
}

/// A passive checkpoint: copies what no reader still needs from the WAL
/// into the database file, without waiting for or blocking anyone (one that
/// finds another checkpoint running returns at once, not as an error).
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
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
    crate::unix_ms(time::OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn values(db: &Db) -> Vec<i64> {
        db.read(|c| {
            let mut s = c.prepare("SELECT v FROM t ORDER BY v")?;
            let v = s.query_map([], |r| r.get(0))?.collect();
            v
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_or_panicking_write_commits_nothing_and_spares_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite3"), "CREATE TABLE t (v INTEGER);").unwrap();
        let insert = |v: i64, fail: u8| {
            let db = db.clone();
            async move {
                db.write(move |c| {
                    exec(c, "INSERT INTO t (v) VALUES (?1)", [v])?;
                    match fail {
                        1 => Err(rusqlite::Error::InvalidQuery),
                        2 => panic!("a write that panics after inserting"),
                        _ => Ok(()),
                    }
                })
                .await
            }
        };
        // Submitted together, so they share groups.
        let results = tokio::join!(insert(1, 0), insert(2, 1), insert(3, 2), insert(4, 0));
        assert!(results.0.is_ok() && results.3.is_ok(), "{results:?}");
        assert!(results.1.is_err() && results.2.is_err(), "{results:?}");
        assert_eq!(values(&db).await, vec![1, 4]);
        assert!(db.fatal().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commits_reach_the_database_file_through_the_checkpointer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite3");
        let db = Db::open(&path, "CREATE TABLE t (v INTEGER, b BLOB);").unwrap();
        // About 600 WAL pages: under the writer's backstop (and under
        // SQLite's own default of 1,000), so only the checkpointer copies
        // them into the database file, which WAL mode writes nowhere else.
        for chunk in 0..6 {
            db.write(move |c| {
                for v in 0..100 {
                    exec(
                        c,
                        "INSERT INTO t (v, b) VALUES (?1, zeroblob(4000))",
                        [chunk * 100 + v],
                    )?;
                }
                Ok(())
            })
            .await
            .unwrap();
        }
        let size = || std::fs::metadata(&path).unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(5);
        while size() < 600 * 4000 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(size() >= 600 * 4000, "database file {} bytes", size());
        assert_eq!(values(&db).await.len(), 600);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_writer_is_reported_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite3"), "CREATE TABLE t (v INTEGER);").unwrap();
        db.write(|c| exec(c, "INSERT INTO t (v) VALUES (1)", []))
            .await
            .unwrap();
        db.stop_writer();
        for _ in 0..100 {
            if db.fatal().is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(db.fatal().unwrap().contains("t.sqlite3"));
        assert!(db
            .write(|c| exec(c, "INSERT INTO t (v) VALUES (2)", []))
            .await
            .is_err());
        assert_eq!(values(&db).await, vec![1]);
    }
}
