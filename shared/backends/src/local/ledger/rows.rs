//! Reads and writes of a payment's rows, in one connection.

use super::*;

pub(super) fn event_json(event: &PaymentEvent) -> rusqlite::Result<String> {
    serde_json::to_string(event).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

pub(super) fn parse_event(json: &str) -> rusqlite::Result<PaymentEvent> {
    serde_json::from_str(json).map_err(|_| invalid("event"))
}

/// The payment row of `key`: its state (when the payment has arrived), version and alias.
pub(super) type Row = (Option<PaymentState>, u64, Option<String>);

pub(super) fn load_row(c: &Connection, key: &PaymentKey) -> rusqlite::Result<Row> {
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
    let Some((status, currency, amounts, version, alias)) = row_ else {
        return Ok((None, 0, None));
    };
    let state = status
        .map(|status| state_from(key, &status, currency.as_deref(), amounts, version))
        .transpose()?;
    Ok((state, version as u64, alias))
}

/// The state a `payments` row with a status holds: its status, currency,
/// amounts (authorized, paid, refunded) and version.
pub(super) fn state_from(
    key: &PaymentKey,
    status: &str,
    currency: Option<&str>,
    [authorized, paid, refunded]: [i64; 3],
    version: i64,
) -> rusqlite::Result<PaymentState> {
    Ok(PaymentState {
        payment_key: key.clone(),
        status: PaymentStatus::parse(status).ok_or_else(|| invalid("status"))?,
        currency: currency
            .and_then(Currency::from_alpha)
            .ok_or_else(|| invalid("currency"))?,
        authorized_minor: authorized as u64,
        paid_minor: paid as u64,
        refunded_minor: refunded as u64,
        version: version as u64,
    })
}

/// Reads everything stored under `key` in one snapshot.
pub(super) fn load(c: &Connection, key: &PaymentKey) -> rusqlite::Result<PaymentEntry> {
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

pub(super) fn stored_version(c: &Connection, key: &str) -> rusqlite::Result<u64> {
    Ok(row(
        c,
        "SELECT version FROM payments WHERE payment_key = ?1",
        params![key],
        |r| r.get::<_, i64>(0),
    )
    .optional()?
    .unwrap_or(0) as u64)
}

pub(super) fn is_known(c: &Connection, key: &str, event_key: &str) -> rusqlite::Result<bool> {
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

pub(super) fn is_parked(c: &Connection, key: &str, event_key: &str) -> rusqlite::Result<bool> {
    Ok(row(
        c,
        "SELECT 1 FROM parked WHERE payment_key = ?1 AND event_key = ?2",
        params![key, event_key],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

pub(super) fn record(
    c: &Connection,
    key: &str,
    r: &RecordedEvent,
    now: i64,
) -> rusqlite::Result<()> {
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
    if let Some(order_id) = &e.order_id {
        exec(
            c,
            "INSERT INTO orders (order_id, payment_key) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![order_id, key],
        )?;
    }
    if let Some(from) = &r.unparked_from {
        exec(
            c,
            "DELETE FROM parked WHERE payment_key = ?1 AND event_key = ?2",
            params![from.as_str(), e.event_key.as_str()],
        )?;
    }
    Ok(())
}

pub(super) fn park(c: &Connection, key: &str, p: &ParkedEvent) -> rusqlite::Result<()> {
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
pub(super) fn put_row(
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

pub(super) fn write(c: &Connection, w: &LedgerWrite) -> rusqlite::Result<ApplyOutcome> {
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
        let order_id: Option<String> = row(
            c,
            "SELECT order_id FROM orders WHERE payment_key = ?1 ORDER BY order_id LIMIT 1",
            params![key],
            |r| r.get(0),
        )
        .optional()?;
        let events = outgoing_events(previous.as_ref(), w, order_id.as_deref(), stored_time(now));
        super::super::outbox::append(c, &events)?;
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
