//! The ledger's SQLite schema and its migrations.

use super::*;

pub(super) const SCHEMA: &str = "
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
-- Payments by the merchant's order id (an event that creates a payment
-- names it), written with the event.
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT NOT NULL,
    payment_key TEXT NOT NULL,
    PRIMARY KEY (order_id, payment_key)
) WITHOUT ROWID;
-- A payment's order, read by every write that makes outgoing events and by
-- a search's rows: without it, each such read scans the table.
CREATE INDEX IF NOT EXISTS orders_by_payment ON orders (payment_key);
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
pub(super) fn migrate(path: &Path) -> rusqlite::Result<()> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    super::super::db::set_wal(&conn)?;
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
