//! Dead letters: listing them by reason.

use super::*;

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
    pub(super) async fn count(&self, sql: &'static str) -> Result<u64, QueueError> {
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
pub(super) fn spellings(reason: Option<&str>) -> [Option<String>; 2] {
    match reason {
        None => [None, None],
        Some(r) => reason_spellings(r).map(Some),
    }
}

/// The dead letters `clause` (after `FROM dead_letters`) selects.
pub(super) fn dead_letters<P: rusqlite::Params>(
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
