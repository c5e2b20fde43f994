//! A queue in SQLite with SQS semantics: visibility timeout, receive count,
//! delay, a dead-letter table after `max_receives`, and a long-poll `receive`
//! that wakes as soon as a message is sent (in this process) or becomes
//! visible.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use tokio::sync::Notify;

use super::db::{exec, now_ms, row, Db};
use crate::backend::{from_unix_ms, stored_time};
use crate::ports::{DeadLetter, Progress, Queue, QueueError, QueueMessage, QueueStats, Receipt};

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

/// The local queue.
#[derive(Clone)]
pub struct LocalQueue {
    db: Db,
    visibility_ms: i64,
    max_receives: u32,
    arrived: Arc<Notify>,
}

fn unavailable(e: String) -> QueueError {
    QueueError::Unavailable(e)
}

impl LocalQueue {
    /// Opens the queue database.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn open(
        path: &Path,
        visibility_timeout_secs: u32,
        max_receives: u32,
    ) -> rusqlite::Result<Self> {
        add_first_received_at(path)?;
        Ok(Self {
            db: Db::open(path, SCHEMA)?,
            visibility_ms: i64::from(visibility_timeout_secs) * 1000,
            max_receives: max_receives.max(1),
            arrived: Arc::new(Notify::new()),
        })
    }

    /// Inserts messages, visible after `delay_ms`, in one group-committed
    /// write and wakes waiting receivers.
    async fn insert(&self, bodies: Vec<Vec<u8>>, delay_ms: i64) -> Result<Vec<String>, QueueError> {
        let ids = self
            .db
            .write(move |tx| {
                let now = now_ms();
                let mut ids = Vec::with_capacity(bodies.len());
                for body in bodies {
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
            .map_err(unavailable)?;
        self.arrived.notify_waiters();
        Ok(ids)
    }

    async fn receive_now(&self, max: usize) -> Result<Vec<QueueMessage>, QueueError> {
        let (visibility, max_receives) = (self.visibility_ms, self.max_receives);
        self.db
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
                                 VALUES (?1, ?2, 'max_receives_exceeded', 'received too many times without being deleted', ?3, ?4)",
                                params![id, body, count, now],
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
                            receipt: Receipt(receipt),
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
    /// Ends the database's writer thread, as a crash of it would (tests).
    #[doc(hidden)]
    pub fn stop_writer(&self) {
        self.db.stop_writer();
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
        self.db.fatal()
    }

    async fn send(&self, body: &[u8]) -> Result<String, QueueError> {
        self.send_delayed(body, 0).await
    }

    async fn send_delayed(&self, body: &[u8], seconds: u32) -> Result<String, QueueError> {
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
        self.insert(bodies.to_vec(), 0).await
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

    async fn delete_batch(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        let receipts: Vec<String> = receipts.iter().map(|r| r.0.clone()).collect();
        self.db
            .write(move |c| {
                for r in &receipts {
                    exec(c, "DELETE FROM bodies WHERE id = (SELECT id FROM messages WHERE receipt = ?1)", params![r])?;
                    exec(c, "DELETE FROM messages WHERE receipt = ?1", params![r])?;
                }
                Ok(())
            })
            .await
            .map_err(unavailable)
    }

    async fn delay(&self, receipt: &Receipt, seconds: u32) -> Result<(), QueueError> {
        let r = receipt.0.clone();
        self.db
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
        let (id, receipt, body, count) = (
            message.id.clone(),
            message.receipt.0.clone(),
            message.body.clone(),
            message.receive_count,
        );
        let (reason, error) = (reason.to_owned(), error.to_owned());
        self.db
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

    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.db
            .read(move |c| dead_letters(c, "ORDER BY dead_at, id LIMIT ?1", params![limit as i64]))
            .await
            .map_err(unavailable)
    }

    async fn redrive_with(
        &self,
        reason: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<usize, QueueError> {
        let reason = reason.map(str::to_owned);
        let moved = self
            .db
            .write(move |tx| {
                let filter = "(?1 IS NULL OR reason = ?1)";
                let now = now_ms();
                let n = exec(tx,
                    &format!(
                        "INSERT OR IGNORE INTO messages (id, sent_at, visible_at)
                         SELECT id, ?2, ?2 FROM dead_letters WHERE {filter}"
                    ),
                    params![reason, now],
                )?;
                exec(
                    tx,
                    &format!(
                        "INSERT OR REPLACE INTO bodies (id, body) SELECT id, body FROM dead_letters WHERE {filter}"
                    ),
                    params![reason],
                )?;
                exec(tx,
                    &format!("DELETE FROM dead_letters WHERE {filter}"),
                    params![reason],
                )?;
                Ok(n)
            })
            .await
            .map_err(unavailable)?;
        self.arrived.notify_waiters();
        progress(moved);
        Ok(moved)
    }

    async fn purge_dead_letters(
        &self,
        reason: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        let reason = reason.map(str::to_owned);
        let purged = self
            .db
            .write(move |tx| {
                let filter = "(?1 IS NULL OR reason = ?1)";
                let purged = dead_letters(tx, &format!("WHERE {filter}"), params![reason])?;
                exec(
                    tx,
                    &format!("DELETE FROM dead_letters WHERE {filter}"),
                    params![reason],
                )?;
                Ok(purged)
            })
            .await
            .map_err(unavailable)?;
        progress(purged.len());
        Ok(purged)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let now = now_ms();
        self.db
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
                Ok(QueueStats {
                    visible: visible as u64,
                    in_flight: in_flight as u64,
                    delayed: delayed as u64,
                    dead_letters: dead as u64,
                    oldest_age: Some(oldest.map_or(Duration::ZERO, |t| {
                        Duration::from_millis((now - t).max(0) as u64)
                    })),
                })
            })
            .await
            .map_err(unavailable)
    }

    async fn dlq_depth(&self) -> Result<u64, QueueError> {
        self.db
            .read(|c| {
                row(c, "SELECT COUNT(*) FROM dead_letters", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .await
            .map(|n| n as u64)
            .map_err(unavailable)
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        self.db
            .read(|c| {
                row(c, "SELECT COUNT(*) FROM messages", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .await
            .map(|n| n as u64)
            .map_err(unavailable)
    }
}
