//! UnionPay's status queries owed, as rows.

use super::*;

#[async_trait]
impl WatchStore for LocalLedger {
    async fn put_watch(&self, watch: &Watch) -> Result<ApplyOutcome, LedgerError> {
        let w = watch.clone();
        self.db
            .write(move |c| {
                let stored: u64 = c
                    .query_row(
                        "SELECT version FROM watches WHERE id = ?1",
                        params![w.id],
                        |r| r.get::<_, i64>(0),
                    )
                    .optional()?
                    .map_or(0, |v| v as u64);
                if stored + 1 != w.version {
                    return Ok(ApplyOutcome::VersionConflict);
                }
                let json = serde_json::to_string(&w).map_err(|_| invalid("watch"))?;
                exec(
                    c,
                    "INSERT INTO watches (id, due_at, version, watch_json) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (id) DO UPDATE SET due_at = ?2, version = ?3, watch_json = ?4",
                    params![w.id, w.due_at.map(unix_ms), w.version as i64, json],
                )?;
                Ok(ApplyOutcome::Applied)
            })
            .await
            .map_err(unavailable)
    }
    async fn get_watch(&self, id: &str) -> Result<Option<Watch>, LedgerError> {
        let id = id.to_owned();
        self.db
            .read(move |c| {
                c.query_row(
                    "SELECT watch_json FROM watches WHERE id = ?1",
                    params![id],
                    |r| parse_watch(&r.get::<_, String>(0)?),
                )
                .optional()
            })
            .await
            .map_err(unavailable)
    }
    async fn due_watches(
        &self,
        t: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Watch>, LedgerError> {
        self.db
            .read(move |c| {
                let mut s = c.prepare_cached(
                    "SELECT watch_json FROM watches WHERE due_at IS NOT NULL AND due_at <= ?1
                     ORDER BY due_at, id LIMIT ?2",
                )?;
                let rows = s.query_map(params![unix_ms(t), limit as i64], |r| {
                    parse_watch(&r.get::<_, String>(0)?)
                })?;
                rows.collect()
            })
            .await
            .map_err(unavailable)
    }
}

pub(super) fn parse_watch(json: &str) -> rusqlite::Result<Watch> {
    serde_json::from_str(json).map_err(|_| invalid("watch"))
}
