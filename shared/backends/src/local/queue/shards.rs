//! The shard files: their schema, names and opening.

use super::*;

pub(super) const SCHEMA: &str = "
-- Bodies live apart from the small, often updated delivery rows, so a
-- receive or a delay rewrites a few bytes, not the whole envelope.
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    sent_at INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    first_received_at INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bodies (
    id TEXT PRIMARY KEY,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_visible ON messages (visible_at);
CREATE UNIQUE INDEX IF NOT EXISTS messages_receipt ON messages (receipt);
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    error TEXT NOT NULL,
    receive_count INTEGER NOT NULL,
    dead_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_reason ON dead_letters (reason);
";

/// While waiting in `receive`, how often to look for messages that became
/// visible or were sent by another process.
pub(super) const POLL: Duration = Duration::from_millis(50);

/// Adds `first_received_at` to a queue written by an earlier version.
pub(super) fn add_first_received_at(path: &Path) -> rusqlite::Result<()> {
    let conn = rusqlite::Connection::open(path)?;
    let has_messages = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    let has_column = conn
        .query_row(
            "SELECT 1 FROM pragma_table_info('messages') WHERE name = 'first_received_at'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if has_messages && !has_column {
        conn.execute_batch("ALTER TABLE messages ADD COLUMN first_received_at INTEGER")?;
    }
    Ok(())
}

/// The most shards a queue may have.
pub const MAX_SHARDS: usize = crate::config::MAX_QUEUE_SHARDS;

/// The file of shard `k`: `path` itself for shard 0 (a queue of one shard
/// is the file it always was), `{stem}-{k}.{extension}` beside it for the
/// others.
pub(super) fn shard_path(path: &Path, k: usize) -> PathBuf {
    if k == 0 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{k}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{k}"),
    };
    path.with_file_name(name)
}

/// The shard number `name` has as a file beside `path` (exactly the name
/// [`shard_path`] gives, so `queue-1.sqlite3-wal` or `queue-01.sqlite3` is
/// none).
pub(super) fn shard_number(path: &Path, name: &str) -> Option<usize> {
    let stem = path.file_stem()?.to_string_lossy();
    let rest = name.strip_prefix(&*stem)?.strip_prefix('-')?;
    let digits = match path.extension() {
        Some(ext) => rest.strip_suffix(&*format!(".{}", ext.to_string_lossy()))?,
        None => rest,
    };
    let k: usize = digits.parse().ok()?;
    (k >= 1 && shard_path(path, k).file_name()? == name).then_some(k)
}

/// The highest shard number among the files beside `path` (0 when there are
/// none but `path`).
pub(super) fn highest_shard_on_disk(path: &Path) -> std::io::Result<usize> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut highest = 0;
    for entry in entries {
        if let Some(k) = shard_number(path, &entry?.file_name().to_string_lossy()) {
            highest = highest.max(k);
        }
    }
    Ok(highest)
}

/// Opens shard `k` of the queue at `path`, creating its file if needed.
pub(super) fn open_shard(path: &Path, k: usize) -> rusqlite::Result<Db> {
    let file = shard_path(path, k);
    add_first_received_at(&file)?;
    Db::open(&file, SCHEMA)
}
