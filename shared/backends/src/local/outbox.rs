//! The outbox and deliveries in the ledger's SQLite database: the outbox
//! rows are written by the ledger write itself ([`append`]), deliveries and
//! endpoint cursors by the deliverer.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use time::OffsetDateTime;

use super::db::{exec, row};
use super::ledger::{invalid, LocalLedger};
use crate::outgoing::{EventType, OutgoingEvent};
use crate::ports::{
    Attempt, Deliveries, Delivery, DeliveryFilter, DeliveryStatus, EndpointStatus, LedgerError,
    OutboxRecord,
};
use crate::{stored_time, unix_ms};

/// Adds `events` to the outbox, in order (inside a ledger write).
pub(super) fn append(c: &Connection, events: &[OutgoingEvent]) -> rusqlite::Result<()> {
    for e in events {
        let body = serde_json::to_string(e)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        exec(
            c,
            "INSERT INTO outbox (event_id, payment_key, event_type, source, merchant, recorded_at, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                e.id,
                e.payment.key,
                e.event_type.as_str(),
                e.payment.source,
                e.payment.merchant,
                unix_ms(e.recorded_at),
                body
            ],
        )?;
    }
    Ok(())
}

const RECORD_COLUMNS: &str =
    "o.seq, o.event_id, o.payment_key, o.event_type, o.source, o.merchant, o.recorded_at, o.body";

/// An outbox record from the first eight columns of `r` ([`RECORD_COLUMNS`]).
fn outbox_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRecord> {
    Ok(OutboxRecord {
        seq: r.get::<_, i64>(0)? as u64,
        event_id: r.get(1)?,
        payment_key: r.get(2)?,
        event_type: EventType::parse(&r.get::<_, String>(3)?)
            .ok_or_else(|| invalid("event_type"))?,
        source: r.get(4)?,
        merchant: r.get(5)?,
        recorded_at: stored_time(r.get(6)?),
        body: r.get(7)?,
    })
}

const DELIVERY_COLUMNS: &str = "d.endpoint, d.status, d.attempts, d.next_at, d.last_error, \
                                d.last_attempt_at, d.delivered_at";

/// A delivery from [`RECORD_COLUMNS`] then [`DELIVERY_COLUMNS`].
fn delivery(r: &rusqlite::Row<'_>) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        record: outbox_record(r)?,
        endpoint: r.get(8)?,
        status: DeliveryStatus::parse(&r.get::<_, String>(9)?).ok_or_else(|| invalid("status"))?,
        attempts: r.get::<_, i64>(10)? as u32,
        next_at: stored_time(r.get(11)?),
        last_error: r.get(12)?,
        last_attempt_at: r.get::<_, Option<i64>>(13)?.map(stored_time),
        delivered_at: r.get::<_, Option<i64>>(14)?.map(stored_time),
    })
}

fn select_deliveries() -> String {
    format!(
        "SELECT {RECORD_COLUMNS}, {DELIVERY_COLUMNS} FROM deliveries d
         JOIN outbox o ON o.seq = d.seq"
    )
}

fn ensure_endpoint(c: &Connection, endpoint: &str) -> rusqlite::Result<()> {
    exec(
        c,
        "INSERT INTO endpoints (endpoint) VALUES (?1) ON CONFLICT (endpoint) DO NOTHING",
        params![endpoint],
    )
    .map(|_| ())
}

fn claim(
    c: &Connection,
    endpoint: &str,
    now: i64,
    lease_until: i64,
    limit: usize,
) -> rusqlite::Result<Vec<Delivery>> {
    // The head of each payment's line: no earlier delivery of the payment
    // to this endpoint is still open.
    let sql = format!(
        "{} WHERE d.endpoint = ?1 AND d.status = 'pending' AND d.next_at <= ?2
             AND d.leased_until <= ?2
             AND NOT EXISTS (SELECT 1 FROM deliveries e
                             WHERE e.endpoint = d.endpoint AND e.payment_key = d.payment_key
                               AND e.seq < d.seq AND e.status != 'delivered')
         ORDER BY d.seq LIMIT ?3",
        select_deliveries()
    );
    let mut s = c.prepare_cached(&sql)?;
    let claimed = s
        .query_map(params![endpoint, now, limit as i64], delivery)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for d in &claimed {
        exec(
            c,
            "UPDATE deliveries SET leased_until = ?3 WHERE endpoint = ?1 AND seq = ?2",
            params![endpoint, d.record.seq as i64, lease_until],
        )?;
    }
    Ok(claimed)
}

fn settle(
    c: &Connection,
    endpoint: &str,
    seq: u64,
    attempt: &Attempt,
    now: i64,
) -> rusqlite::Result<()> {
    // The endpoint's row exists: `enqueue` wrote it with the delivery.
    let seq = seq as i64;
    match attempt {
        Attempt::Delivered => {
            exec(
                c,
                "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1,
                     leased_until = 0, last_attempt_at = ?3, delivered_at = ?3, last_error = NULL
                 WHERE endpoint = ?1 AND seq = ?2",
                params![endpoint, seq, now],
            )?;
            exec(
                c,
                "UPDATE endpoints SET last_success = ?2, failing_since = NULL WHERE endpoint = ?1",
                params![endpoint, now],
            )?;
        }
        Attempt::Failed { error, retry_at } => {
            let (status, next) = match retry_at {
                Some(t) => (DeliveryStatus::Pending, unix_ms(*t)),
                None => (DeliveryStatus::DeadLettered, now),
            };
            exec(
                c,
                "UPDATE deliveries SET status = ?3, attempts = attempts + 1, leased_until = 0,
                     last_attempt_at = ?4, next_at = ?5, last_error = ?6
                 WHERE endpoint = ?1 AND seq = ?2",
                params![endpoint, seq, status.as_str(), now, next, error],
            )?;
            exec(
                c,
                "UPDATE endpoints SET failing_since = COALESCE(failing_since, ?2) WHERE endpoint = ?1",
                params![endpoint, now],
            )?;
        }
    }
    Ok(())
}

fn list(c: &Connection, f: &DeliveryFilter) -> rusqlite::Result<Vec<Delivery>> {
    let sql = format!(
        "{} WHERE (?1 IS NULL OR d.endpoint = ?1) AND (?2 IS NULL OR d.payment_key = ?2)
             AND (?3 IS NULL OR d.status = ?3) AND (?4 IS NULL OR o.recorded_at >= ?4)
             AND (?6 IS NULL OR o.event_id = ?6)
         ORDER BY d.seq, d.endpoint LIMIT ?5",
        select_deliveries()
    );
    let mut s = c.prepare_cached(&sql)?;
    let rows = s
        .query_map(
            params![
                f.endpoint,
                f.payment_key,
                f.status.map(|s| s.as_str()),
                f.since.map(unix_ms),
                f.limit.min(i64::MAX as usize) as i64,
                f.event_id
            ],
            delivery,
        )?
        .collect();
    rows
}

fn endpoint_status(c: &Connection, endpoint: &str) -> rusqlite::Result<EndpointStatus> {
    let (cursor, last_success, failing_since, disabled) = row(
        c,
        "SELECT cursor, last_success, failing_since, disabled FROM endpoints WHERE endpoint = ?1",
        params![endpoint],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        },
    )
    .optional()?
    .unwrap_or((0, None, None, None));
    let (pending, dead, oldest) = row(
        c,
        "SELECT COUNT(*) FILTER (WHERE d.status = 'pending'),
                COUNT(*) FILTER (WHERE d.status = 'dead_lettered'),
                MIN(o.recorded_at)
         FROM deliveries d JOIN outbox o ON o.seq = d.seq
         WHERE d.endpoint = ?1 AND d.status != 'delivered'",
        params![endpoint],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        },
    )?;
    Ok(EndpointStatus {
        endpoint: endpoint.to_owned(),
        cursor: cursor as u64,
        last_success: last_success.map(stored_time),
        failing_since: failing_since.map(stored_time),
        disabled,
        pending: pending as u64,
        dead_lettered: dead as u64,
        oldest_pending: oldest.map(stored_time),
    })
}

#[async_trait]
impl Deliveries for LocalLedger {
    async fn outbox_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, LedgerError> {
        self.db
            .read(move |c| {
                let sql = format!(
                    "SELECT {RECORD_COLUMNS} FROM outbox o WHERE o.seq > ?1 ORDER BY o.seq LIMIT ?2"
                );
                let mut s = c.prepare_cached(&sql)?;
                let rows = s
                    .query_map(params![after as i64, limit as i64], outbox_record)?
                    .collect();
                rows
            })
            .await
            .map_err(|e| LedgerError::Unavailable(e.into()))
    }

    async fn outbox_for(&self, payment_key: &str) -> Result<Vec<OutboxRecord>, LedgerError> {
        let key = payment_key.to_owned();
        self.db
            .read(move |c| {
                let sql = format!(
                    "SELECT {RECORD_COLUMNS} FROM outbox o WHERE o.payment_key = ?1 ORDER BY o.seq"
                );
                let mut s = c.prepare_cached(&sql)?;
                let rows = s.query_map(params![key], outbox_record)?.collect();
                rows
            })
            .await
            .map_err(|e| LedgerError::Unavailable(e.into()))
    }

    async fn outbox_since(&self) -> Result<Option<OffsetDateTime>, LedgerError> {
        self.db
            .read(|c| {
                row(
                    c,
                    "SELECT value FROM outbox_meta WHERE name = 'since'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .optional()
                .map(|v| v.map(stored_time))
            })
            .await
            .map_err(|e| LedgerError::Unavailable(e.into()))
    }

    async fn enqueue(
        &self,
        endpoint: &str,
        seqs: &[u64],
        cursor: u64,
        now: OffsetDateTime,
    ) -> Result<(), LedgerError> {
        let (endpoint, seqs, now) = (endpoint.to_owned(), seqs.to_vec(), unix_ms(now));
        self.db
            .write(move |c| {
                ensure_endpoint(c, &endpoint)?;
                for seq in seqs {
                    exec(
                        c,
                        "INSERT INTO deliveries (endpoint, seq, payment_key, status, next_at)
                         SELECT ?1, seq, payment_key, 'pending', ?3 FROM outbox WHERE seq = ?2
                         ON CONFLICT (endpoint, seq) DO NOTHING",
                        params![endpoint, seq as i64, now],
                    )?;
                }
                exec(
                    c,
                    "UPDATE endpoints SET cursor = MAX(cursor, ?2) WHERE endpoint = ?1",
                    params![endpoint, cursor as i64],
                )
                .map(|_| ())
            })
            .await
            .map_err(|e| LedgerError::Unavailable(e.into()))
    }

    async fn claim(
        &self,
        endpoint: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Delivery>, LedgerError> {
        let endpoint = endpoint.to_owned();
        let (now, until) = (unix_ms(now), unix_ms(lease_until));
        self.db
            .write(move |c| claim(c, &endpoint, now, until, limit))
            .await
            .map_err(|e| LedgerError::Unavailable(e.into()))
    }

    async fn settle(
        &self,
        endpoint: &str,
        seq: u64,
        attempt: &Attempt,
        now: OffsetDateTime,
    ) -> Result<(), LedgerError> {
        let (endpoint, attempt, now) = (endpoint.to_owned(), attempt.clone(), unix_ms(now));
        self.db
            .write(move |c| settle(c, &endpoint, seq, &attempt, now))
            .await
            .map_err(|e| LedgerError::Unavailable(e.into()))
    }

    async fn resend(
        &self,
        endpoint: &str,
        event_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, LedgerError> {
        let (endpoint, event_id, now) = (endpoint.to_owned(), event_id.to_owned(), unix_ms(now));
        self.db
            .write(move |c| {
                let n = exec(
                    c,
                    "UPDATE deliveries SET status = 'pending', attempts = 0, next_at = ?3,
                         leased_until = 0, delivered_at = NULL
                     WHERE endpoint = ?1 AND seq = (SELECT seq FROM outbox WHERE event_id = ?2)",
                    params![endpoint, event_id, now],
                )?;
                Ok(n > 0)
            })
            .await
            .map_err(|e| LedgerError::Unavailable(e.into()))
    }

    async fn list(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>, LedgerError> {
        let filter = filter.clone();
        self.db
            .read(move |c| list(c, &filter))
            .await
            .map_err(|e| LedgerError::Unavailable(e.into()))
    }

    async fn endpoint_status(&self, endpoint: &str) -> Result<EndpointStatus, LedgerError> {
        let endpoint = endpoint.to_owned();
        self.db
            .read(move |c| endpoint_status(c, &endpoint))
            .await
            .map_err(|e| LedgerError::Unavailable(e.into()))
    }

    async fn set_disabled(&self, endpoint: &str, reason: Option<&str>) -> Result<(), LedgerError> {
        let (endpoint, reason) = (endpoint.to_owned(), reason.map(str::to_owned));
        self.db
            .write(move |c| {
                ensure_endpoint(c, &endpoint)?;
                exec(
                    c,
                    "UPDATE endpoints SET disabled = ?2,
                         failing_since = CASE WHEN ?2 IS NULL THEN NULL ELSE failing_since END
                     WHERE endpoint = ?1",
                    params![endpoint, reason],
                )
                .map(|_| ())
            })
            .await
            .map_err(|e| LedgerError::Unavailable(e.into()))
    }
}
