//! The ledger in SQLite: recorded events, parked events and the payment row
//! (state, version, alias) of one key are written in one transaction,
//! guarded by the event key and the version.

use std::path::Path;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use time::OffsetDateTime;

use super::db::{exec, now_ms, row, Db};
use crate::event::{EventKey, PaymentEvent, PaymentKey};
use crate::money::Currency;
use crate::ports::{
    outgoing_events, ApplyOutcome, EventRecord, FoundPayment, Freshness, Incoming, Ledger,
    LedgerError, LedgerWrite, Loaded, ParkedEntry, ParkedEvent, PaymentEntry, PaymentPage,
    PaymentSearch, RecordedEvent, SearchCursor, Watch, WatchStore,
};
use crate::state::{PaymentState, PaymentStatus};
use crate::{stored_time, unix_ms};

mod rows;
mod schema;
mod watch;

use rows::*;
use schema::*;

/// The local ledger.
#[derive(Clone)]
pub struct LocalLedger {
    pub(super) db: Db,
}

impl LocalLedger {
    /// Opens the ledger database.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        migrate(path)?;
        Ok(Self {
            db: Db::open(path, SCHEMA)?,
        })
    }
}

fn unavailable(e: String) -> LedgerError {
    LedgerError::Unavailable(e.into())
}

pub(super) fn invalid(what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("stored {what} is invalid").into(),
    )
}

#[async_trait]
impl Ledger for LocalLedger {
    fn fatal(&self) -> Option<String> {
        self.db.fatal()
    }

    async fn load(&self, key: &PaymentKey) -> Result<PaymentEntry, LedgerError> {
        let k = key.clone();
        self.db
            .read(move |c| load(c, &k))
            .await
            .map_err(unavailable)
    }

    async fn write(&self, w: &LedgerWrite) -> Result<ApplyOutcome, LedgerError> {
        let w = w.clone();
        self.db
            .write(move |tx| write(tx, &w))
            .await
            .map_err(unavailable)
    }

    async fn load_to_apply(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
        _freshness: Freshness,
    ) -> Result<Loaded, LedgerError> {
        // Both reads see every committed write (SQLite has no lagging
        // replica); a key seen by the second stays seen.
        let (k, e) = (key.clone(), event_key.as_str().to_owned());
        self.db
            .read(move |c| {
                let entry = load(c, &k)?;
                let seen = is_known(c, k.as_str(), &e)?;
                Ok(Loaded { entry, seen })
            })
            .await
            .map_err(unavailable)
    }

    async fn contains_event(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
    ) -> Result<bool, LedgerError> {
        let (k, e) = (key.as_str().to_owned(), event_key.as_str().to_owned());
        self.db
            .read(move |c| is_known(c, &k, &e))
            .await
            .map_err(unavailable)
    }

    async fn remove_parked(
        &self,
        key: &PaymentKey,
        event_key: &EventKey,
    ) -> Result<Option<ParkedEvent>, LedgerError> {
        let (k, e) = (key.as_str().to_owned(), event_key.as_str().to_owned());
        self.db
            .write(move |tx| {
                let found = tx
                    .prepare_cached(
                        "SELECT notification_id, parked_at, event_json, conflict FROM parked
                         WHERE payment_key = ?1 AND event_key = ?2",
                    )?
                    .query_row(params![k, e], |r| {
                        Ok(ParkedEvent {
                            notification_id: r.get(0)?,
                            parked_at: stored_time(r.get(1)?),
                            event: parse_event(&r.get::<_, String>(2)?)?,
                            conflict: r.get(3)?,
                        })
                    })
                    .optional()?;
                if found.is_some() {
                    exec(
                        tx,
                        "DELETE FROM parked WHERE payment_key = ?1 AND event_key = ?2",
                        params![k, e],
                    )?;
                }
                Ok(found)
            })
            .await
            .map_err(unavailable)
    }

    async fn payments_by_order(
        &self,
        order_id: &str,
        limit: usize,
    ) -> Result<Vec<PaymentKey>, LedgerError> {
        let order_id = order_id.to_owned();
        self.db
            .read(move |c| {
                let mut s = c.prepare_cached(
                    "SELECT payment_key FROM orders WHERE order_id = ?1 ORDER BY payment_key LIMIT ?2",
                )?;
                let rows = s.query_map(params![order_id, limit as i64], |r| {
                    Ok(PaymentKey::from_stored(r.get::<_, String>(0)?))
                })?;
                rows.collect()
            })
            .await
            .map_err(unavailable)
    }

    async fn search_payments(&self, q: &PaymentSearch) -> Result<PaymentPage, LedgerError> {
        // The key's prefix names the source and merchant; compared with
        // substr, so that nothing in them is a pattern.
        let prefix = q.key_prefix();
        let status = q.status.map(|s| s.as_str());
        let from = q.updated_from.map(unix_ms);
        let to = q.updated_to.map(unix_ms);
        let after = q.after.as_ref().map(|c| c.pk.clone());
        let limit = q.limit;
        let rows = self
            .db
            .read(move |c| {
                let mut s = c.prepare_cached(
                    "SELECT payment_key, status, currency, authorized_minor, paid_minor,
                            refunded_minor, version, updated_at,
                            (SELECT MIN(order_id) FROM orders o WHERE o.payment_key = p.payment_key)
                     FROM payments p
                     WHERE status IS NOT NULL
                       AND (?1 IS NULL OR substr(payment_key, 1, length(?1)) = ?1)
                       AND (?2 IS NULL OR status = ?2)
                       AND (?3 IS NULL OR updated_at >= ?3)
                       AND (?4 IS NULL OR updated_at < ?4)
                       AND (?5 IS NULL OR payment_key > ?5)
                     ORDER BY payment_key LIMIT ?6",
                )?;
                let rows = s.query_map(
                    params![prefix, status, from, to, after, limit as i64 + 1],
                    |r| {
                        let key = PaymentKey::from_stored(r.get::<_, String>(0)?);
                        let amounts = [r.get(3)?, r.get(4)?, r.get(5)?];
                        let status: String = r.get(1)?;
                        let currency: String = r.get(2)?;
                        Ok(FoundPayment {
                            state: state_from(&key, &status, Some(&currency), amounts, r.get(6)?)?,
                            updated_at: stored_time(r.get(7)?),
                            order_id: r.get(8)?,
                        })
                    },
                )?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await
            .map_err(unavailable)?;
        let more = rows.len() > limit;
        let payments: Vec<FoundPayment> = rows.into_iter().take(limit).collect();
        let next = more
            .then(|| payments.last())
            .flatten()
            .map(|p| SearchCursor {
                pk: p.state.payment_key.as_str().to_owned(),
                sk: "STATE".into(),
            });
        Ok(PaymentPage { payments, next })
    }

    async fn parked_before(
        &self,
        t: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<ParkedEntry>, LedgerError> {
        self.db
            .read(move |c| {
                let mut s = c.prepare_cached(
                    "SELECT payment_key, notification_id, parked_at, event_json, conflict FROM parked
                     WHERE parked_at < ?1 ORDER BY parked_at, payment_key, event_key LIMIT ?2",
                )?;
                let rows = s.query_map(params![unix_ms(t), limit as i64], |r| {
                    Ok(ParkedEntry {
                        payment_key: PaymentKey::from_stored(r.get::<_, String>(0)?),
                        parked: ParkedEvent {
                            notification_id: r.get(1)?,
                            parked_at: stored_time(r.get(2)?),
                            event: parse_event(&r.get::<_, String>(3)?)?,
                            conflict: r.get(4)?,
                        },
                    })
                })?;
                rows.collect()
            })
            .await
            .map_err(unavailable)
    }

    async fn history(&self, key: &PaymentKey) -> Result<Vec<EventRecord>, LedgerError> {
        let k = key.clone();
        self.db
            .read(move |c| {
                let mut s = c.prepare(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE payment_key = ?1 ORDER BY seq"
                ))?;
                let rows = s.query_map(params![k.as_str()], event_record)?;
                rows.collect()
            })
            .await
            .map_err(unavailable)
    }

    /// Without an index by time (one more entry in every write's
    /// transaction; measured in BENCHMARKS.md): rows are inserted in
    /// `rowid` order and never deleted, so `recorded_at` rises with
    /// `rowid`, and the first row recorded at or after `since` is found by
    /// a binary search over `rowid` (a few dozen lookups for billions of
    /// rows); the rows from there are counted. A clock stepped back while
    /// writing makes the count approximate, never a scan.
    async fn recorded_since(&self, since: OffsetDateTime) -> Result<Option<u64>, LedgerError> {
        let since = unix_ms(since);
        self.db
            .read(move |c| {
                let (lo, hi): (Option<i64>, Option<i64>) =
                    c.query_row("SELECT MIN(rowid), MAX(rowid) FROM events", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?;
                let (Some(mut lo), Some(hi)) = (lo, hi) else {
                    return Ok(0);
                };
                // The first rowid whose row was recorded at or after
                // `since`; hi + 1 when none was.
                let mut end = hi + 1;
                let mut at = c.prepare(
                    "SELECT rowid, recorded_at FROM events WHERE rowid >= ?1 ORDER BY rowid LIMIT 1",
                )?;
                while lo < end {
                    let mid = lo + (end - lo) / 2;
                    let (row, recorded): (i64, i64) =
                        at.query_row(params![mid], |r| Ok((r.get(0)?, r.get(1)?)))?;
                    if recorded >= since {
                        end = mid.min(row);
                    } else {
                        lo = row + 1;
                    }
                }
                c.query_row(
                    "SELECT COUNT(*) FROM events WHERE rowid >= ?1",
                    params![end],
                    |r| r.get::<_, i64>(0),
                )
            })
            .await
            .map(|n| Some(n.max(0) as u64))
            .map_err(unavailable)
    }

    async fn events_between(
        &self,
        source: &str,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<EventRecord>, LedgerError> {
        let source = source.to_owned();
        self.db
            .read(move |c| {
                let mut s = c.prepare(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events
                     WHERE source = ?1 AND psp_ms >= ?2 AND psp_ms < ?3
                     ORDER BY psp_ms, payment_key, seq"
                ))?;
                let rows =
                    s.query_map(params![source, unix_ms(from), unix_ms(to)], event_record)?;
                rows.collect()
            })
            .await
            .map_err(unavailable)
    }
}

const EVENT_COLUMNS: &str = "event_key, notification_id, kind, outcome, amount_minor, currency, \
                             status_after, recorded_at, event_json";

fn event_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRecord> {
    Ok(EventRecord {
        event_key: r.get(0)?,
        notification_id: r.get(1)?,
        kind: r.get(2)?,
        outcome: r.get(3)?,
        amount_minor: r.get::<_, i64>(4)? as u64,
        currency: r.get(5)?,
        status_after: r.get(6)?,
        recorded_at: stored_time(r.get(7)?),
        event: serde_json::from_str(&r.get::<_, String>(8)?).ok(),
    })
}
