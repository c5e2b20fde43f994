//! A queue in SQLite with SQS semantics: visibility timeout, receive count,
//! delay, a dead-letter table after `max_receives`, and a long-poll `receive`
//! that wakes as soon as a message is sent (in this process) or becomes
//! visible.
//!
//! The queue may be split into shards: SQLite files of the same schema, each
//! with its own writer thread and its own commits, so that sends (ingest)
//! and receives and deletes (workers) on different shards run on different
//! cores instead of queueing on one writer. Sends go round-robin over the
//! configured shards; a receive takes from the shards in turn, starting at a
//! different one each time; a receipt names its shard. Shard files left by a
//! larger shard count earlier are still received from (and their dead
//! letters listed and redriven), so lowering the count strands nothing. Like
//! an SQS standard queue, the queue as a whole keeps no order.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use tokio::sync::Notify;

use super::db::{exec, now_ms, row, Db};
use crate::backend::{from_unix_ms, stored_time};
use crate::envelope::QueuedBody;
use crate::ports::{
    check_message_size, reason_spellings, DeadLetter, DeadLetterReason, Progress, Queue,
    QueueError, QueueMessage, QueueStats, Receipt, MAX_DELAY_SECS, MAX_MESSAGE_BYTES,
};

const SCHEMA: &str = "
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
const POLL: Duration = Duration::from_millis(50);

/// Adds `first_received_at` to a queue written by an earlier version.
fn add_first_received_at(path: &Path) -> rusqlite::Result<()> {
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
pub const MAX_SHARDS: usize = 64;

/// The file of shard `k`: `path` itself for shard 0 (a queue of one shard
/// is the file it always was), `{stem}-{k}.{extension}` beside it for the
/// others.
fn shard_path(path: &Path, k: usize) -> PathBuf {
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
fn shard_number(path: &Path, name: &str) -> Option<usize> {
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
fn highest_shard_on_disk(path: &Path) -> std::io::Result<usize> {
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
fn open_shard(path: &Path, k: usize) -> rusqlite::Result<Db> {
    let file = shard_path(path, k);
    add_first_received_at(&file)?;
    Db::open(&file, SCHEMA)
}

/// How often the queue looks for shard files added by another process.
const RESCAN_MS: i64 = 1_000;

/// The local queue.
#[derive(Clone)]
pub struct LocalQueue {
    /// Shard 0's file.
    path: Arc<PathBuf>,
    /// Every shard file there is: the configured ones first, then any left
    /// by a larger shard count earlier or added since by another process on
    /// the same directory. Only ever grows.
    shards: Arc<RwLock<Arc<Vec<Db>>>>,
    /// When the directory was last looked at for new shard files (ms since
    /// the epoch).
    scanned_at: Arc<AtomicI64>,
    /// New messages go to the first `senders` shards.
    senders: usize,
    next_send: Arc<AtomicUsize>,
    next_receive: Arc<AtomicUsize>,
    visibility_ms: i64,
    max_receives: u32,
    arrived: Arc<Notify>,
}

fn unavailable(e: String) -> QueueError {
    QueueError::Unavailable(e)
}

/// A receipt as the caller sees it: its shard, then the shard's own receipt.
fn shard_receipt(k: usize, receipt: &str) -> Receipt {
    Receipt(format!("{k}:{receipt}"))
}

/// The shard and shard-local receipt of `receipt`; `None` for one this
/// queue never gave out (it then matches no message, as a stale one does).
fn split_receipt(receipt: &Receipt, shards: usize) -> Option<(usize, String)> {
    let (k, r) = receipt.0.split_once(':')?;
    let k = k.parse::<usize>().ok().filter(|&k| k < shards)?;
    Some((k, r.to_owned()))
}

/// A configuration problem found while opening the queue (shown as `why`
/// alone).
fn refused(why: String) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::other(why)))
}

impl LocalQueue {
    /// Opens the queue database at `path` as a queue of one shard (and any
    /// shards a larger count left beside it).
    ///
    /// # Errors
    /// As [`LocalQueue::open_sharded`].
    pub fn open(
        path: &Path,
        visibility_timeout_secs: u32,
        max_receives: u32,
    ) -> rusqlite::Result<Self> {
        Self::open_sharded(path, 1, visibility_timeout_secs, max_receives)
    }

    /// Opens the queue at `path` with `shards` shard files taking new
    /// messages (`path` and `{stem}-{k}.{ext}` beside it, created as
    /// needed), plus any further shard files already there, which are only
    /// drained.
    ///
    /// # Errors
    /// SQLite errors; a shard count of 0 or over [`MAX_SHARDS`], a shard
    /// file numbered past it, or a directory that cannot be listed.
    pub fn open_sharded(
        path: &Path,
        shards: usize,
        visibility_timeout_secs: u32,
        max_receives: u32,
    ) -> rusqlite::Result<Self> {
        if shards == 0 || shards > MAX_SHARDS {
            return Err(refused(format!(
                "queue shards must be 1 to {MAX_SHARDS}, not {shards}"
            )));
        }
        let on_disk = highest_shard_on_disk(path)
            .map_err(|e| refused(format!("listing the queue's directory: {e}")))?;
        if on_disk >= MAX_SHARDS {
            return Err(refused(format!(
                "{} is past the {MAX_SHARDS} shards a queue may have; move it away",
                shard_path(path, on_disk).display()
            )));
        }
        let dbs = (0..shards.max(on_disk + 1))
            .map(|k| open_shard(path, k))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Self {
            path: Arc::new(path.to_path_buf()),
            shards: Arc::new(RwLock::new(Arc::new(dbs))),
            scanned_at: Arc::new(AtomicI64::new(now_ms())),
            senders: shards,
            next_send: Arc::new(AtomicUsize::new(0)),
            next_receive: Arc::new(AtomicUsize::new(0)),
            visibility_ms: i64::from(visibility_timeout_secs) * 1000,
            max_receives: max_receives.max(1),
            arrived: Arc::new(Notify::new()),
        })
    }

    /// The shard files this queue reads, those taking new messages first.
    #[must_use]
    pub fn shard_count(&self) -> usize {
        self.shards().len()
    }

    /// The shards, after a look (at most once per [`RESCAN_MS`]) for shard
    /// files another process on the same directory has added, so that a
    /// worker started with fewer shards than an ingest still receives
    /// everything that ingest sends.
    fn shards(&self) -> Arc<Vec<Db>> {
        let now = now_ms();
        let last = self.scanned_at.load(Ordering::Relaxed);
        if now - last >= RESCAN_MS
            && self
                .scanned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.open_new_shards();
        }
        self.shards
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Opens the shard files numbered past those open. A file that cannot
    /// be opened is tried again at the next look.
    fn open_new_shards(&self) {
        let highest = match highest_shard_on_disk(&self.path) {
            Ok(k) if k >= MAX_SHARDS => {
                tracing::warn!(
                    file = %shard_path(&self.path, k).display(),
                    "a queue shard file past the {MAX_SHARDS} a queue may have is not read; move it away"
                );
                MAX_SHARDS - 1
            }
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "listing the queue's directory");
                return;
            }
        };
        let mut shards = self
            .shards
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if highest < shards.len() {
            return;
        }
        let mut grown = Vec::clone(&shards);
        for k in grown.len()..=highest {
            match open_shard(&self.path, k) {
                Ok(db) => grown.push(db),
                Err(e) => {
                    tracing::warn!(error = %e, shard = k, "opening a queue shard");
                    break;
                }
            }
        }
        if grown.len() > shards.len() {
            tracing::info!(
                shards = grown.len(),
                "queue shards added by another process"
            );
            *shards = Arc::new(grown);
        }
    }

    /// Inserts messages, visible after `delay_ms`, in one group-committed
    /// write on the next shard in turn and wakes waiting receivers. A shard
    /// whose write fails (nothing of it is committed) hands the messages to
    /// the next one; the send fails when every sending shard has failed.
    async fn insert(&self, bodies: Vec<Vec<u8>>, delay_ms: i64) -> Result<Vec<String>, QueueError> {
        let shards = self.shards();
        let first = self.next_send.fetch_add(1, Ordering::Relaxed);
        let bodies = Arc::new(bodies);
        let mut failed = None;
        for i in 0..self.senders {
            let k = (first + i) % self.senders;
            let bodies = bodies.clone();
            match shards[k]
                .write(move |tx| {
                    let now = now_ms();
                    let mut ids = Vec::with_capacity(bodies.len());
                    for body in bodies.iter() {
                        let id = ulid::Ulid::new().to_string();
                        exec(
                            tx,
                            "INSERT INTO messages (id, sent_at, visible_at) VALUES (?1, ?2, ?3)",
                            params![id, now, now + delay_ms],
                        )?;
                        exec(
                            tx,
                            "INSERT INTO bodies (id, body) VALUES (?1, ?2)",
                            params![id, body],
                        )?;
                        ids.push(id);
                    }
                    Ok(ids)
                })
                .await
            {
                Ok(ids) => {
                    self.arrived.notify_waiters();
                    return Ok(ids);
                }
                Err(e) => {
                    tracing::warn!(error = %e, shard = k, "queue shard send failed");
                    failed = Some(e);
                }
            }
        }
        Err(unavailable(
            failed.unwrap_or_else(|| "no queue shard".into()),
        ))
    }

    /// Up to `max` visible messages, from the shards in turn. A shard that
    /// fails is passed over while others give messages (what they gave is
    /// already in flight and would otherwise wait out its visibility timeout
    /// unseen); the receive fails only when no shard gave anything.
    async fn receive_now(&self, max: usize) -> Result<Vec<QueueMessage>, QueueError> {
        let shards = self.shards();
        let n = shards.len();
        let start = self.next_receive.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::new();
        let mut failed = None;
        for i in 0..n {
            let left = max - out.len();
            if left == 0 {
                break;
            }
            let k = (start + i) % n;
            match self.receive_from(&shards[k], k, left).await {
                Ok(got) => out.extend(got),
                Err(e) => {
                    tracing::warn!(error = %e, shard = k, "queue shard receive failed");
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// Up to `max` visible messages of shard `k`. A look on a reader first
    /// spares the writer a transaction when the shard has nothing to give.
    async fn receive_from(
        &self,
        db: &Db,
        k: usize,
        max: usize,
    ) -> Result<Vec<QueueMessage>, QueueError> {
        let now = now_ms();
        let any = db
            .read(move |c| {
                row(
                    c,
                    "SELECT EXISTS (SELECT 1 FROM messages WHERE visible_at <= ?1)",
                    params![now],
                    |r| r.get::<_, bool>(0),
                )
            })
            .await
            .map_err(unavailable)?;
        if !any {
            return Ok(Vec::new());
        }
        let (visibility, max_receives) = (self.visibility_ms, self.max_receives);
        db
            .write(move |tx| {
                let now = now_ms();
                let mut out = Vec::new();
                {
                    let mut select = tx.prepare_cached(
                        "SELECT m.id, b.body, m.receive_count, m.first_received_at FROM messages m JOIN bodies b ON b.id = m.id
                         WHERE m.visible_at <= ?1 ORDER BY m.visible_at LIMIT ?2",
                    )?;
                    let rows: Vec<(String, Vec<u8>, u32, Option<i64>)> = select
                        .query_map(params![now, max as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                        .collect::<Result<_, _>>()?;
                    for (id, body, count, first) in rows {
                        if count >= max_receives {
                            // SQS moves a message past maxReceiveCount to the DLQ instead of delivering it.
                            exec(tx,
                                "INSERT OR REPLACE INTO dead_letters (id, body, reason, error, receive_count, dead_at)
                                 VALUES (?1, ?2, ?3, 'received too many times without being deleted', ?4, ?5)",
                                params![id, body, DeadLetterReason::MaxReceivesExceeded.as_str(), count, now],
                            )?;
                            exec(tx, "DELETE FROM messages WHERE id = ?1", params![id])?;
                            exec(tx, "DELETE FROM bodies WHERE id = ?1", params![id])?;
                            continue;
                        }
                        let receipt = ulid::Ulid::new().to_string();
                        exec(tx,
                            "UPDATE messages SET visible_at = ?1, receive_count = receive_count + 1, receipt = ?2,
                                 first_received_at = COALESCE(first_received_at, ?4) WHERE id = ?3",
                            params![now + visibility, receipt, id, now],
                        )?;
                        let first = first.unwrap_or(now);
                        out.push(QueueMessage {
                            id,
                            receipt: shard_receipt(k, &receipt),
                            body,
                            receive_count: count + 1,
                            first_received_at: from_unix_ms(first),
                        });
                    }
                }
                Ok(out)
            })
            .await
            .map_err(unavailable)
    }
}

impl LocalQueue {
    /// Ends the writer thread of every shard, as a crash of it would
    /// (tests).
    #[doc(hidden)]
    pub fn stop_writer(&self) {
        for db in self.shards().iter() {
            db.stop_writer();
        }
    }

    /// Ends the writer thread of shard `k` only (tests).
    #[doc(hidden)]
    pub fn stop_shard_writer(&self, k: usize) {
        self.shards()[k].stop_writer();
    }

    /// The count `sql` reads, summed over the shards.
    async fn count(&self, sql: &'static str) -> Result<u64, QueueError> {
        let mut total = 0;
        for db in self.shards().iter() {
            let n = db
                .read(move |c| row(c, sql, [], |r| r.get::<_, i64>(0)))
                .await
                .map_err(unavailable)?;
            total += n.max(0) as u64;
        }
        Ok(total)
    }
}

/// The two spellings a dead letter of `reason` may be stored under (see
/// [`reason_spellings`]); both `None` for every dead letter.
fn spellings(reason: Option<&str>) -> [Option<String>; 2] {
    match reason {
        None => [None, None],
        Some(r) => reason_spellings(r).map(Some),
    }
}

/// The dead letters `clause` (after `FROM dead_letters`) selects.
fn dead_letters<P: rusqlite::Params>(
    c: &rusqlite::Connection,
    clause: &str,
    params: P,
) -> rusqlite::Result<Vec<DeadLetter>> {
    let mut s = c.prepare_cached(&format!(
        "SELECT id, reason, error, receive_count, dead_at, body FROM dead_letters {clause}"
    ))?;
    let rows = s.query_map(params, |r| {
        let ms: i64 = r.get(4)?;
        Ok(DeadLetter {
            id: r.get(0)?,
            reason: r.get(1)?,
            error: r.get(2)?,
            receive_count: r.get(3)?,
            dead_at: stored_time(ms),
            body: r.get(5)?,
        })
    })?;
    rows.collect()
}

#[async_trait]
impl Queue for LocalQueue {
    fn fatal(&self) -> Option<String> {
        self.shards().iter().find_map(Db::fatal)
    }

    async fn send(&self, body: &[u8]) -> Result<String, QueueError> {
        self.send_delayed(body, 0).await
    }

    async fn send_delayed(&self, body: &[u8], seconds: u32) -> Result<String, QueueError> {
        check_message_size(body)?;
        let seconds = seconds.min(MAX_DELAY_SECS);
        let mut ids = self
            .insert(vec![body.to_vec()], i64::from(seconds) * 1000)
            .await?;
        ids.pop()
            .ok_or_else(|| QueueError::Unavailable("send returned no id".into()))
    }

    async fn send_batch(&self, bodies: &[Vec<u8>]) -> Result<Vec<String>, QueueError> {
        if bodies.len() > 10 {
            return Err(QueueError::BatchTooLarge(bodies.len()));
        }
        for body in bodies {
            check_message_size(body)?;
        }
        self.insert(bodies.to_vec(), 0).await
    }

    /// SQS's, so the pointer path and the delay clamp run here too.
    fn max_message_bytes(&self) -> usize {
        MAX_MESSAGE_BYTES
    }

    fn max_delay_secs(&self) -> u32 {
        MAX_DELAY_SECS
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<QueueMessage>, QueueError> {
        let max = max.clamp(1, 10);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.arrived.notified();
            let got = self.receive_now(max).await?;
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            let _ = tokio::time::timeout((deadline - now).min(POLL), notified).await;
        }
    }

    async fn delete(&self, receipt: &Receipt) -> Result<(), QueueError> {
        self.delete_batch(std::slice::from_ref(receipt)).await
    }

    /// One write per shard the receipts name, the shards' writes at once.
    async fn delete_batch(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        let shards = self.shards();
        let mut by_shard: Vec<Vec<String>> = vec![Vec::new(); shards.len()];
        for (k, r) in receipts
            .iter()
            .filter_map(|r| split_receipt(r, shards.len()))
        {
            by_shard[k].push(r);
        }
        let mut writes = tokio::task::JoinSet::new();
        for (k, receipts) in by_shard.into_iter().enumerate() {
            if receipts.is_empty() {
                continue;
            }
            let db = shards[k].clone();
            writes.spawn(async move {
                db.write(move |c| {
                    for r in &receipts {
                        exec(c, "DELETE FROM bodies WHERE id = (SELECT id FROM messages WHERE receipt = ?1)", params![r])?;
                        exec(c, "DELETE FROM messages WHERE receipt = ?1", params![r])?;
                    }
                    Ok(())
                })
                .await
            });
        }
        let mut result = Ok(());
        while let Some(done) = writes.join_next().await {
            let done = done
                .map_err(|e| format!("delete task: {e}"))
                .and_then(|r| r);
            if let Err(e) = done {
                result = Err(unavailable(e));
            }
        }
        result
    }

    async fn delay(&self, receipt: &Receipt, seconds: u32) -> Result<(), QueueError> {
        let shards = self.shards();
        let Some((k, r)) = split_receipt(receipt, shards.len()) else {
            return Ok(());
        };
        shards[k]
            .write(move |c| {
                exec(
                    c,
                    "UPDATE messages SET visible_at = ?1 WHERE receipt = ?2",
                    params![now_ms() + i64::from(seconds) * 1000, r],
                )
                .map(|_| ())
            })
            .await
            .map_err(unavailable)
    }

    async fn dead_letter(
        &self,
        message: &QueueMessage,
        reason: &str,
        error: &str,
    ) -> Result<(), QueueError> {
        let shards = self.shards();
        let Some((k, receipt)) = split_receipt(&message.receipt, shards.len()) else {
            // Not a delivery of this queue: nothing to move.
            return Ok(());
        };
        let (id, body, count) = (
            message.id.clone(),
            message.body.clone(),
            message.receive_count,
        );
        let (reason, error) = (reason.to_owned(), error.to_owned());
        shards[k]
            .write(move |tx| {
                // Only the current delivery may dead-letter the message.
                let current: Option<String> = row(tx, "SELECT id FROM messages WHERE receipt = ?1", params![receipt], |r| r.get(0))
                    .optional()?;
                if current.is_some() {
                    exec(tx,
                        "INSERT OR REPLACE INTO dead_letters (id, body, reason, error, receive_count, dead_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![id, body, reason, error, count, now_ms()],
                    )?;
                    exec(tx, "DELETE FROM messages WHERE id = ?1", params![id])?;
                    exec(tx, "DELETE FROM bodies WHERE id = ?1", params![id])?;
                }
                Ok(())
            })
            .await
            .map_err(unavailable)
    }

    /// The oldest `limit` dead letters over all shards.
    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let mut all = Vec::new();
        for db in self.shards().iter() {
            all.extend(
                db.read(move |c| {
                    dead_letters(c, "ORDER BY dead_at, id LIMIT ?1", params![limit as i64])
                })
                .await
                .map_err(unavailable)?,
            );
        }
        all.sort_by(|a, b| (a.dead_at, &a.id).cmp(&(b.dead_at, &b.id)));
        all.truncate(limit);
        Ok(all)
    }

    /// Each shard's dead letters go back to that shard's queue.
    async fn redrive_with(
        &self,
        reason: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<usize, QueueError> {
        let mut moved = 0;
        for db in self.shards().iter() {
            let [word, old] = spellings(reason);
            moved += db
                .write(move |tx| {
                    let filter = "(?1 IS NULL OR reason IN (?1, ?2))";
                    let now = now_ms();
                    let n = exec(
                        tx,
                        &format!(
                            "INSERT OR IGNORE INTO messages (id, sent_at, visible_at)
                             SELECT id, ?3, ?3 FROM dead_letters WHERE {filter}"
                        ),
                        params![word, old, now],
                    )?;
                    // A retry's pointer goes back without its retry state
                    // (QueuedBody::redriven, as on SQS): a redrive starts a
                    // fresh retry budget. One row at a time: a redrive may
                    // move every dead letter.
                    {
                        let mut select = tx.prepare(&format!(
                            "SELECT id, body FROM dead_letters WHERE {filter}"
                        ))?;
                        let mut rows = select.query(params![word, old])?;
                        while let Some(r) = rows.next()? {
                            let (id, body): (String, Vec<u8>) = (r.get(0)?, r.get(1)?);
                            exec(
                                tx,
                                "INSERT OR REPLACE INTO bodies (id, body) VALUES (?1, ?2)",
                                params![id, QueuedBody::redriven(&body).as_ref()],
                            )?;
                        }
                    }
                    exec(
                        tx,
                        &format!("DELETE FROM dead_letters WHERE {filter}"),
                        params![word, old],
                    )?;
                    Ok(n)
                })
                .await
                .map_err(unavailable)?;
            self.arrived.notify_waiters();
            progress(moved);
        }
        Ok(moved)
    }

    async fn purge_dead_letters(
        &self,
        reason: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        let mut purged = Vec::new();
        for db in self.shards().iter() {
            let [word, old] = spellings(reason);
            purged.extend(
                db.write(move |tx| {
                    let filter = "(?1 IS NULL OR reason IN (?1, ?2))";
                    let purged = dead_letters(tx, &format!("WHERE {filter}"), params![word, old])?;
                    exec(
                        tx,
                        &format!("DELETE FROM dead_letters WHERE {filter}"),
                        params![word, old],
                    )?;
                    Ok(purged)
                })
                .await
                .map_err(unavailable)?,
            );
            progress(purged.len());
        }
        Ok(purged)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let now = now_ms();
        let mut total = QueueStats {
            visible: 0,
            in_flight: 0,
            delayed: 0,
            dead_letters: 0,
            oldest_age: Some(Duration::ZERO),
        };
        for db in self.shards().iter() {
            let (visible, in_flight, delayed, oldest, dead) = db
                .read(move |c| {
                    let (visible, in_flight, delayed, oldest) = row(
                        c,
                        "SELECT COALESCE(SUM(visible_at <= ?1), 0),
                                COALESCE(SUM(visible_at > ?1 AND receipt IS NOT NULL), 0),
                                COALESCE(SUM(visible_at > ?1 AND receipt IS NULL), 0),
                                MIN(sent_at)
                         FROM messages",
                        params![now],
                        |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                r.get::<_, i64>(1)?,
                                r.get::<_, i64>(2)?,
                                r.get::<_, Option<i64>>(3)?,
                            ))
                        },
                    )?;
                    let dead: i64 = row(c, "SELECT COUNT(*) FROM dead_letters", [], |r| r.get(0))?;
                    Ok((visible, in_flight, delayed, oldest, dead))
                })
                .await
                .map_err(unavailable)?;
            total.visible += visible as u64;
            total.in_flight += in_flight as u64;
            total.delayed += delayed as u64;
            total.dead_letters += dead as u64;
            let age = oldest.map_or(Duration::ZERO, |t| {
                Duration::from_millis((now - t).max(0) as u64)
            });
            total.oldest_age = total.oldest_age.max(Some(age));
        }
        Ok(total)
    }

    async fn dlq_depth(&self) -> Result<u64, QueueError> {
        self.count("SELECT COUNT(*) FROM dead_letters").await
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        self.count("SELECT COUNT(*) FROM messages").await
    }
}
