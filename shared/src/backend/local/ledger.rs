//! The ledger in SQLite: the event record and the payment state are written
//! in one transaction, guarded by the event key and the state's version.

use std::path::Path;

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::db::{exec, now_ms, row, Db};
use crate::event::{EventKey, PaymentEvent, PaymentKey};
use crate::money::Currency;
use crate::ports::{ApplyOutcome, EventRecord, Ledger, LedgerError};
use crate::state::{PaymentState, PaymentStatus};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payments (
    payment_key TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    currency TEXT NOT NULL,
    authorized_minor INTEGER NOT NULL,
    paid_minor INTEGER NOT NULL,
    refunded_minor INTEGER NOT NULL,
    version INTEGER NOT NULL,
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
    PRIMARY KEY (payment_key, event_key)
);
";

/// The local ledger.
#[derive(Clone)]
pub struct LocalLedger {
    db: Db,
}

impl LocalLedger {
    /// Opens the ledger database.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        Ok(Self {
            db: Db::open(path, SCHEMA)?,
        })
    }
}

fn unavailable(e: String) -> LedgerError {
    LedgerError::Unavailable(e)
}

#[async_trait]
impl Ledger for LocalLedger {
    async fn get_payment(&self, key: &PaymentKey) -> Result<Option<PaymentState>, LedgerError> {
        let k = key.clone();
        self.db
            .read(move |c| {
                row(
                    c,
                    "SELECT status, currency, authorized_minor, paid_minor, refunded_minor, version
                     FROM payments WHERE payment_key = ?1",
                    params![k.as_str()],
                    |r| {
                        let status: String = r.get(0)?;
                        let currency: String = r.get(1)?;
                        let bad = |what: &str| {
                            rusqlite::Error::FromSqlConversionFailure(
                                0,
                                rusqlite::types::Type::Text,
                                format!("stored {what} is invalid").into(),
                            )
                        };
                        Ok(PaymentState {
                            payment_key: k.clone(),
                            status: PaymentStatus::parse(&status).ok_or_else(|| bad("status"))?,
                            currency: Currency::from_alpha(&currency)
                                .ok_or_else(|| bad("currency"))?,
                            authorized_minor: r.get::<_, i64>(2)? as u64,
                            paid_minor: r.get::<_, i64>(3)? as u64,
                            refunded_minor: r.get::<_, i64>(4)? as u64,
                            version: r.get::<_, i64>(5)? as u64,
                        })
                    },
                )
                .optional()
            })
            .await
            .map_err(unavailable)
    }

    async fn apply(
        &self,
        event: &PaymentEvent,
        notification_id: &str,
        new_state: Option<&PaymentState>,
        expected_version: u64,
    ) -> Result<ApplyOutcome, LedgerError> {
        let event = event.clone();
        let notification_id = notification_id.to_owned();
        let new_state = new_state.cloned();
        self.db
            .write(move |tx| {
                let key = event.payment_key.as_str();
                let exists: Option<i64> = row(tx,
                        "SELECT 1 FROM events WHERE payment_key = ?1 AND event_key = ?2",
                        params![key, event.event_key.as_str()],
                        |r| r.get(0),
                    )
                    .optional()?;
                if exists.is_some() {
                    return Ok(ApplyOutcome::Duplicate);
                }
                let version: i64 = row(tx, "SELECT version FROM payments WHERE payment_key = ?1", params![key], |r| r.get(0))
                    .optional()?
                    .unwrap_or(0);
                if version as u64 != expected_version {
                    return Ok(ApplyOutcome::VersionConflict);
                }
                let now = now_ms();
                let seq: i64 = row(tx,
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE payment_key = ?1",
                    params![key],
                    |r| r.get(0),
                )?;
                exec(tx,
                    "INSERT INTO events (payment_key, event_key, seq, notification_id, kind, outcome, amount_minor,
                                         currency, status_after, recorded_at, event_json)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        key,
                        event.event_key.as_str(),
                        seq,
                        notification_id,
                        event.kind.as_str(),
                        event.outcome.as_str(),
                        event.amount.minor as i64,
                        event.amount.currency.as_str(),
                        new_state.as_ref().map(|s| s.status.as_str()),
                        now,
                        serde_json::to_string(&event).unwrap_or_default(),
                    ],
                )?;
                if let Some(s) = &new_state {
                    exec(tx,
                        "INSERT INTO payments (payment_key, status, currency, authorized_minor, paid_minor,
                                               refunded_minor, version, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT (payment_key) DO UPDATE SET status = ?2, currency = ?3, authorized_minor = ?4,
                             paid_minor = ?5, refunded_minor = ?6, version = ?7, updated_at = ?8",
                        params![
                            key,
                            s.status.as_str(),
                            s.currency.as_str(),
                            s.authorized_minor as i64,
                            s.paid_minor as i64,
                            s.refunded_minor as i64,
                            s.version as i64,
                            now
                        ],
                    )?;
                }
                Ok(ApplyOutcome::Applied)
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
            .read(move |c| {
                row(
                    c,
                    "SELECT 1 FROM events WHERE payment_key = ?1 AND event_key = ?2",
                    params![k, e],
                    |_| Ok(()),
                )
                .optional()
                .map(|r| r.is_some())
            })
            .await
            .map_err(unavailable)
    }

    async fn history(&self, key: &PaymentKey) -> Result<Vec<EventRecord>, LedgerError> {
        let k = key.clone();
        self.db
            .read(move |c| {
                let mut s = c.prepare(
                    "SELECT event_key, notification_id, kind, outcome, amount_minor, currency, status_after, recorded_at
                     FROM events WHERE payment_key = ?1 ORDER BY seq",
                )?;
                let rows = s.query_map(params![k.as_str()], |r| {
                    let ms: i64 = r.get(7)?;
                    Ok(EventRecord {
                        event_key: r.get(0)?,
                        notification_id: r.get(1)?,
                        kind: r.get(2)?,
                        outcome: r.get(3)?,
                        amount_minor: r.get::<_, i64>(4)? as u64,
                        currency: r.get(5)?,
                        status_after: r.get(6)?,
                        recorded_at: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                    })
                })?;
                rows.collect()
            })
            .await
            .map_err(unavailable)
    }
}
