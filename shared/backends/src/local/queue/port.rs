//! The `Queue` and `DeadLetters` ports on the local queue.

use super::*;

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

    async fn depth(&self) -> Result<u64, QueueError> {
        self.count("SELECT COUNT(*) FROM messages").await
    }
}

/// Moves the dead letters `filter` selects (over `args`) back to the queue;
/// how many.
fn move_back(
    tx: &rusqlite::Connection,
    filter: &str,
    args: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<usize> {
    let now = now_ms();
    let n = exec(
        tx,
        &format!(
            "INSERT OR IGNORE INTO messages (id, sent_at, visible_at)
             SELECT id, {now}, {now} FROM dead_letters WHERE {filter}"
        ),
        args,
    )?;
    // A retry's pointer goes back without its retry state
    // (QueuedBody::redriven, as on SQS): a redrive starts a fresh retry
    // budget. One row at a time: a redrive may move every dead letter.
    {
        let mut select =
            tx.prepare(&format!("SELECT id, body FROM dead_letters WHERE {filter}"))?;
        let mut rows = select.query(args)?;
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
        args,
    )?;
    Ok(n)
}

#[async_trait]
impl DeadLetters for LocalQueue {
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
                    move_back(tx, "(?1 IS NULL OR reason IN (?1, ?2))", params![word, old])
                })
                .await
                .map_err(unavailable)?;
            self.arrived.notify_waiters();
            progress(moved);
        }
        Ok(moved)
    }

    async fn redrive_one(&self, id: &str) -> Result<bool, QueueError> {
        for db in self.shards().iter() {
            let id = id.to_owned();
            let moved = db
                .write(move |tx| move_back(tx, "id = ?1", params![id]))
                .await
                .map_err(unavailable)?;
            if moved > 0 {
                self.arrived.notify_waiters();
                return Ok(true);
            }
        }
        Ok(false)
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

    async fn dlq_depth(&self) -> Result<u64, QueueError> {
        self.count("SELECT COUNT(*) FROM dead_letters").await
    }

    /// Into the first shard's dead letters (each shard's go back to its
    /// own queue).
    async fn put_dead_letter(
        &self,
        id: &str,
        body: &[u8],
        reason: &str,
        error: &str,
    ) -> Result<(), QueueError> {
        let (id, body, reason, error) = (
            id.to_owned(),
            body.to_vec(),
            reason.to_owned(),
            error.to_owned(),
        );
        let shards = self.shards();
        shards[0]
            .write(move |tx| {
                // One dead letter per id, over every shard's table: this
                // shard's replaces its own.
                exec(
                    tx,
                    "INSERT OR REPLACE INTO dead_letters (id, body, reason, error, receive_count, dead_at)
                     VALUES (?1, ?2, ?3, ?4, 0, ?5)",
                    params![id, body, reason, error, now_ms()],
                )?;
                Ok(())
            })
            .await
            .map_err(unavailable)
    }
}
