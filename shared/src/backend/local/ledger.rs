//! The ledger in SQLite: recorded events, parked events and the payment row
//! (state, version, alias) of one key are written in one transaction,
//! guarded by the event key and the version.

use std::path::Path;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use time::OffsetDateTime;

use super::db::{exec, now_ms, row, Db};
use crate::backend::{stored_time, unix_ms};
use crate::event::{EventKey, PaymentEvent, PaymentKey};
use crate::money::Currency;
use crate::ports::{
    outgoing_events, ApplyOutcome, EventRecord, Freshness, Incoming, Ledger, LedgerError,
    LedgerWrite, Loaded, ParkedEntry, ParkedEvent, PaymentEntry, RecordedEvent, Watch, WatchStore,
};
use crate::state::{PaymentState, PaymentStatus};

const SCHEMA: &str = "
-- Atomic, so another process never sees half of it.
BEGIN IMMEDIATE;
-- One row per key: a payment (status set), a key with only parked events
-- (status NULL), or a completion's id pointing at its payment (alias_of).
CREATE TABLE IF NOT EXISTS payments (
    payment_key TEXT PRIMARY KEY,
    status TEXT,
    currency TEXT,
    authorized_minor INTEGER NOT NULL DEFAULT 0,
    paid_minor INTEGER NOT NULL DEFAULT 0,
    refunded_minor INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL,
    alias_of TEXT,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    payment_key TEXT NOT NULL,
    event_key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    notification_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    outcome TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    status_after TEXT,
    recorded_at INTEGER NOT NULL,
    event_json TEXT NOT NULL,
    -- The event's source and PSP time (unix ms), for `events_between`.
    source TEXT,
    psp_ms INTEGER,
    PRIMARY KEY (payment_key, event_key)
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (source, psp_ms) WHERE psp_ms IS NOT NULL;
-- Status queries owed to a PSP (`Watch`); due_at is NULL once finished.
CREATE TABLE IF NOT EXISTS watches (
    id TEXT PRIMARY KEY,
    due_at INTEGER,
    version INTEGER NOT NULL,
    watch_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS watches_due ON watches (due_at) WHERE due_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS parked (
    payment_key TEXT NOT NULL,
    event_key TEXT NOT NULL,
    notification_id TEXT NOT NULL,
    parked_at INTEGER NOT NULL,
    event_json TEXT NOT NULL,
    conflict TEXT,
    PRIMARY KEY (payment_key, event_key)
);
CREATE INDEX IF NOT EXISTS parked_by_age ON parked (parked_at);
-- The outbox: each write's outgoing events (docs/events.md), in its
-- transaction; seq follows commit order (one writer at a time).
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    payment_key TEXT NOT NULL,
    event_type TEXT NOT NULL,
    source TEXT NOT NULL,
    merchant TEXT NOT NULL,
    recorded_at INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_payment ON outbox (payment_key, seq);
-- One row per outbox event and endpoint it matches.
CREATE TABLE IF NOT EXISTS deliveries (
    endpoint TEXT NOT NULL,
    seq INTEGER NOT NULL,
    payment_key TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    leased_until INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    last_attempt_at INTEGER,
    delivered_at INTEGER,
    PRIMARY KEY (endpoint, seq)
);
CREATE INDEX IF NOT EXISTS deliveries_open ON deliveries (endpoint, payment_key, seq)
    WHERE status != 'delivered';
-- Pending deliveries in line order: a claim walks it and stops at its
-- limit, however many are delivered before them.
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (endpoint, seq)
    WHERE status = 'pending';
-- When this ledger got its outbox: writes before have no events.
CREATE TABLE IF NOT EXISTS outbox_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO outbox_meta (name, value)
    VALUES ('since', CAST(unixepoch('subsec') * 1000 AS INTEGER))
    ON CONFLICT (name) DO NOTHING;
CREATE TABLE IF NOT EXISTS endpoints (
    endpoint TEXT PRIMARY KEY,
    cursor INTEGER NOT NULL DEFAULT 0,
    last_success INTEGER,
    failing_since INTEGER,
    disabled TEXT
);
PRAGMA user_version = 4;
COMMIT;
";

/// Brings a ledger written by an earlier version to the current schema:
/// v1 payments without `alias_of` (status required), v2 events without
/// `source` and `psp_ms`. Each step is decided by what the tables hold, not
/// by `user_version`, and all of it runs under SQLite's write lock, so
/// processes opening one data directory at once (a worker and an ingest
/// starting together) never apply a step twice or to a schema they did not
/// read.
fn migrate(path: &Path) -> rusqlite::Result<()> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    super::db::set_wal(&conn)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let has_column = |table: &str, column: &str| -> rusqlite::Result<bool> {
        let mut s = tx.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?;
        s.exists(params![table, column])
    };
    let has_table = |table: &str| -> rusqlite::Result<bool> {
        let mut s = tx.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?;
        s.exists(params![table])
    };
    if has_table("payments")? && !has_column("payments", "alias_of")? {
        tx.execute_batch(
            "ALTER TABLE payments RENAME TO payments_v1;
             CREATE TABLE payments (
                 payment_key TEXT PRIMARY KEY, status TEXT, currency TEXT,
                 authorized_minor INTEGER NOT NULL DEFAULT 0, paid_minor INTEGER NOT NULL DEFAULT 0,
                 refunded_minor INTEGER NOT NULL DEFAULT 0, version INTEGER NOT NULL,
                 alias_of TEXT, updated_at INTEGER NOT NULL);
             INSERT INTO payments SELECT payment_key, status, currency, authorized_minor, paid_minor,
                 refunded_minor, version, NULL, updated_at FROM payments_v1;
             DROP TABLE payments_v1;",
        )?;
    }
    if has_table("events")? && !has_column("events", "source")? {
        tx.execute_batch(
            "ALTER TABLE events ADD COLUMN source TEXT;
             ALTER TABLE events ADD COLUMN psp_ms INTEGER;",
        )?;
    }
    tx.commit()
}

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
    LedgerError::Unavailable(e)
}

pub(super) fn invalid(what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("stored {what} is invalid").into(),
    )
}

fn event_json(event: &PaymentEvent) -> rusqlite::Result<String> {
    serde_json::to_string(event).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn parse_event(json: &str) -> rusqlite::Result<PaymentEvent> {
    serde_json::from_str(json).map_err(|_| invalid("event"))
}

/// The payment row of `key`: its state (when the payment has arrived), version and alias.
type Row = (Option<PaymentState>, u64, Option<String>);

fn load_row(c: &Connection, key: &PaymentKey) -> rusqlite::Result<Row> {
    let row_ = row(
        c,
        "SELECT status, currency, authorized_minor, paid_minor, refunded_minor, version, alias_of
         FROM payments WHERE payment_key = ?1",
        params![key.as_str()],
        |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, Option<String>>(1)?,
                [
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ],
                r.get::<_, i64>(5)?,
                r.get::<_, Option<String>>(6)?,
            ))
        },
    )
    .optional()?;
    let Some((status, currency, [authorized, paid, refunded], version, alias)) = row_ else {
        return Ok((None, 0, None));
    };
    let state = match status {
        Some(status) => Some(PaymentState {
            payment_key: key.clone(),
            status: PaymentStatus::parse(&status).ok_or_else(|| invalid("status"))?,
            currency: currency
                .as_deref()
                .and_then(Currency::from_alpha)
                .ok_or_else(|| invalid("currency"))?,
            authorized_minor: authorized as u64,
            paid_minor: paid as u64,
            refunded_minor: refunded as u64,
            version: version as u64,
        }),
        None => None,
    };
    Ok((state, version as u64, alias))
}

/// Reads everything stored under `key` in one snapshot.
fn load(c: &Connection, key: &PaymentKey) -> rusqlite::Result<PaymentEntry> {
    let (state, version, alias) = load_row(c, key)?;
    let mut s = c.prepare_cached(
        "SELECT notification_id, parked_at, event_json, conflict FROM parked
         WHERE payment_key = ?1 ORDER BY parked_at, event_key",
    )?;
    let parked = s
        .query_map(params![key.as_str()], |r| {
            Ok(ParkedEvent {
                notification_id: r.get(0)?,
                parked_at: stored_time(r.get(1)?),
                event: parse_event(&r.get::<_, String>(2)?)?,
                conflict: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(PaymentEntry {
        state,
        version,
        parked,
        alias_of: alias.map(PaymentKey::from_stored),
    })
}

fn stored_version(c: &Connection, key: &str) -> rusqlite::Result<u64> {
    Ok(row(
        c,
        "SELECT version FROM payments WHERE payment_key = ?1",
        params![key],
        |r| r.get::<_, i64>(0),
    )
    .optional()?
    .unwrap_or(0) as u64)
}

fn is_known(c: &Connection, key: &str, event_key: &str) -> rusqlite::Result<bool> {
    Ok(row(
        c,
        "SELECT 1 FROM events WHERE payment_key = ?1 AND event_key = ?2
         UNION ALL SELECT 1 FROM parked WHERE payment_key = ?1 AND event_key = ?2",
        params![key, event_key],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

fn is_parked(c: &Connection, key: &str, event_key: &str) -> rusqlite::Result<bool> {
    Ok(row(
        c,
        "SELECT 1 FROM parked WHERE payment_key = ?1 AND event_key = ?2",
        params![key, event_key],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

fn record(c: &Connection, key: &str, r: &RecordedEvent, now: i64) -> rusqlite::Result<()> {
    let seq: i64 = row(
        c,
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE payment_key = ?1",
        params![key],
        |r| r.get(0),
    )?;
    let e = &r.event;
    exec(
        c,
        "INSERT INTO events (payment_key, event_key, seq, notification_id, kind, outcome, amount_minor,
                             currency, status_after, recorded_at, event_json, source, psp_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            key,
            e.event_key.as_str(),
            seq,
            r.notification_id,
            e.kind.as_str(),
            e.outcome.as_str(),
            e.amount.minor as i64,
            e.amount.currency.as_str(),
            r.status_after.map(|s| s.as_str()),
            now,
            event_json(e)?,
            e.source,
            e.psp_time.map(unix_ms),
        ],
    )?;
    if let Some(from) = &r.unparked_from {
        exec(
            c,
            "DELETE FROM parked WHERE payment_key = ?1 AND event_key = ?2",
            params![from.as_str(), e.event_key.as_str()],
        )?;
    }
    Ok(())
}

fn park(c: &Connection, key: &str, p: &ParkedEvent) -> rusqlite::Result<()> {
    exec(
        c,
        "INSERT INTO parked (payment_key, event_key, notification_id, parked_at, event_json, conflict)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (payment_key, event_key) DO UPDATE SET conflict = ?6",
        params![
            key,
            p.event.event_key.as_str(),
            p.notification_id,
            unix_ms(p.parked_at),
            event_json(&p.event)?,
            p.conflict,
        ],
    )
    .map(|_| ())
}

/// Stores the row of `key` at `version`: the state when given, else a row
/// that only carries the version (and an alias when given).
fn put_row(
    c: &Connection,
    key: &str,
    state: Option<&PaymentState>,
    version: u64,
    alias_of: Option<&str>,
    now: i64,
) -> rusqlite::Result<()> {
    exec(
        c,
        "INSERT INTO payments (payment_key, status, currency, authorized_minor, paid_minor,
                               refunded_minor, version, alias_of, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (payment_key) DO UPDATE SET
             status = COALESCE(?2, status), currency = COALESCE(?3, currency),
             authorized_minor = CASE WHEN ?2 IS NULL THEN authorized_minor ELSE ?4 END,
             paid_minor = CASE WHEN ?2 IS NULL THEN paid_minor ELSE ?5 END,
             refunded_minor = CASE WHEN ?2 IS NULL THEN refunded_minor ELSE ?6 END,
             version = ?7, alias_of = COALESCE(?8, alias_of), updated_at = ?9",
        params![
            key,
            state.map(|s| s.status.as_str()),
            state.map(|s| s.currency.as_str()),
            state.map_or(0, |s| s.authorized_minor as i64),
            state.map_or(0, |s| s.paid_minor as i64),
            state.map_or(0, |s| s.refunded_minor as i64),
            version as i64,
            alias_of,
            now
        ],
    )
    .map(|_| ())
}

fn write(c: &Connection, w: &LedgerWrite) -> rusqlite::Result<ApplyOutcome> {
    let key = w.key.as_str();
    if let Some(e) = w.incoming.event() {
        if is_known(c, key, e.event_key.as_str())? {
            return Ok(ApplyOutcome::Duplicate);
        }
    }
    if stored_version(c, key)? != w.expected_version {
        return Ok(ApplyOutcome::VersionConflict);
    }
    for a in &w.aliases {
        if stored_version(c, a.key.as_str())? != a.expected_version {
            return Ok(ApplyOutcome::VersionConflict);
        }
    }
    // What it unparks or marks conflicting must still be parked: the entry
    // it was planned on may have shown parked events another write had
    // already taken.
    let parked_now = w
        .unparked
        .iter()
        .filter_map(|r| Some((r.unparked_from.as_ref()?, &r.event.event_key)))
        .chain(
            w.conflicts
                .iter()
                .map(|p| (&p.payment_key, &p.parked.event.event_key)),
        );
    for (from, event_key) in parked_now {
        if !is_parked(c, from.as_str(), event_key.as_str())? {
            return Ok(ApplyOutcome::VersionConflict);
        }
    }
    let now = now_ms();
    if w.bumps_version() {
        // The outbox: the write's outgoing events, in its transaction.
        let (previous, _, _) = load_row(c, &w.key)?;
        let events = outgoing_events(previous.as_ref(), w, stored_time(now));
        super::outbox::append(c, &events)?;
    }
    match &w.incoming {
        Incoming::Record(r) => record(c, key, r, now)?,
        Incoming::Park(p) => park(c, key, p)?,
        Incoming::Nothing => {}
    }
    for r in &w.unparked {
        record(c, key, r, now)?;
    }
    for p in &w.conflicts {
        park(c, p.payment_key.as_str(), &p.parked)?;
    }
    if w.bumps_version() {
        put_row(c, key, w.state.as_ref(), w.expected_version + 1, None, now)?;
    }
    for a in &w.aliases {
        put_row(
            c,
            a.key.as_str(),
            None,
            a.expected_version + 1,
            Some(key),
            now,
        )?;
    }
    Ok(ApplyOutcome::Applied)
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

fn parse_watch(json: &str) -> rusqlite::Result<Watch> {
    serde_json::from_str(json).map_err(|_| invalid("watch"))
}
