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
use crate::envelope::QueuedBody;
use crate::ports::{
    check_message_size, reason_spellings, DeadLetter, DeadLetterReason, DeadLetters, Progress,
    Queue, QueueError, QueueMessage, QueueStats, Receipt, MAX_DELAY_SECS, MAX_MESSAGE_BYTES,
};
use crate::{from_unix_ms, stored_time};

mod dead;
mod port;
mod shards;

use dead::*;
pub use shards::MAX_SHARDS;
use shards::*;

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
    QueueError::Unavailable(e.into())
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
