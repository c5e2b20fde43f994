//! The scheduler: which transactions are asked about when, and the hook
//! through which the worker starts and ends their watches.

use super::*;

/// What a pass of the scheduler did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Watches asked about.
    pub asked: usize,
    /// Watches that reached a final answer (or ran out of schedule).
    pub finished: usize,
    /// Watches another worker held.
    pub skipped: usize,
}

/// Asks about every watch due at `now` whose source asks on its own: claims
/// it (a conditional write; a watch another worker claimed is skipped),
/// queries, and writes what comes next. Also creates the watches of refunds
/// and voids parked for a payment that has not arrived within the first
/// step of the schedule.
///
/// # Errors
/// When the ledger cannot list watches (each watch's own failures are
/// logged and retried later).
pub async fn run_due(querier: &Querier, now: OffsetDateTime) -> Result<Pass, LedgerError> {
    watch_parked_payments(querier, now).await?;
    let mut pass = Pass::default();
    for w in querier
        .watches
        .due_watches(now, paynotify_ports::WATCH_SCAN_LIMIT)
        .await?
    {
        let Some(gw) = querier.gateways.get(&w.source).cloned() else {
            continue;
        };
        if !gw.config.auto_query {
            continue;
        }
        let mut claimed = w.clone();
        claimed.version += 1;
        claimed.due_at = Some(now + gw.lease());
        match querier.watches.put_watch(&claimed).await {
            Ok(ApplyOutcome::Applied) => {}
            Ok(_) => {
                pass.skipped += 1;
                continue;
            }
            Err(e) => {
                warn!(watch = %w.id, error = %e, "claiming a status query failed");
                continue;
            }
        }
        pass.asked += 1;
        let result = querier
            .query_known(&w.source, &w.merchant, &w.target, w.query_id.as_deref())
            .await;
        let next = next_step(
            &claimed,
            &gw.config.query_schedule_secs,
            &result,
            OffsetDateTime::now_utc().max(now),
        );
        if next.finished.is_some() {
            pass.finished += 1;
            if next
                .finished
                .as_deref()
                .is_some_and(|f| f.starts_with("gave up"))
            {
                warn!(watch = %w.id, source = %w.source, answer = next.finished.as_deref().unwrap_or(""),
                      "status queries ran out of schedule without a final answer");
            }
        }
        match querier.watches.put_watch(&next).await {
            Ok(ApplyOutcome::Applied) => {}
            Ok(_) => {
                warn!(watch = %w.id, "a status query's claim expired before its answer was written")
            }
            Err(e) => {
                warn!(watch = %w.id, error = %e, "writing a status query's answer failed; it will be asked again")
            }
        }
    }
    Ok(pass)
}

/// The watch after one query: finished on a final answer, else due at the
/// next step of `schedule` (seconds after `since`, and at least the step's
/// gap from the one before after now); a transient failure is asked again
/// after a backoff without using a step.
pub fn next_step(
    claimed: &Watch,
    schedule: &[u64],
    result: &Result<QueryReport, QueryError>,
    now: OffsetDateTime,
) -> Watch {
    let mut next = claimed.clone();
    next.version += 1;
    // Step `n` is due `schedule[n]` after `since`, and never sooner than
    // its gap from the step before after now: asking that resumes late (a
    // watch registered late, a worker outage) keeps the schedule's spacing
    // instead of firing the steps already past back to back.
    let step_at = |n: usize| {
        let at = *schedule.get(n)?;
        let gap = n
            .checked_sub(1)
            .and_then(|p| schedule.get(p))
            .map_or(at, |before| at.saturating_sub(*before));
        Some(
            (claimed.since + time::Duration::seconds(at as i64))
                .max(now + time::Duration::seconds(gap as i64)),
        )
    };
    match result {
        Ok(report) => {
            next.attempts += 1;
            next.failures = 0;
            next.last_answer = Some(match (&report.code, &report.message) {
                (Some(c), Some(m)) => format!("{} ({c} {m})", report.answer),
                _ => report.answer.to_owned(),
            });
            if report.is_final() {
                next.finished = Some(report.answer.to_owned());
                next.due_at = None;
            } else {
                next.due_at = step_at(next.attempts as usize);
                if next.due_at.is_none() {
                    next.finished = Some(format!("gave up: {}", report.answer));
                }
            }
        }
        Err(e) if e.transient() => {
            next.failures += 1;
            next.last_answer = Some(format!("error: {e}"));
            // From the first step (at most 30 s), doubling: 1, 2, … 32 minutes
            // with UnionPay's schedule.
            let base = schedule.first().copied().unwrap_or(30).clamp(1, 30) as i64;
            let backoff = time::Duration::seconds(base * (1i64 << next.failures.min(6)));
            let give_up_at = claimed.since
                + time::Duration::seconds(schedule.last().copied().unwrap_or(0) as i64)
                + time::Duration::days(1);
            if now > give_up_at {
                next.finished = Some(format!("gave up: {e}"));
                next.due_at = None;
            } else {
                next.due_at = Some(now + backoff);
            }
        }
        Err(e) => {
            // A refused answer (forged, tampered, about another order) uses
            // a step: asking again at once would get the same.
            next.attempts += 1;
            next.last_answer = Some(format!("error: {e}"));
            next.due_at = step_at(next.attempts as usize);
            if next.due_at.is_none() {
                next.finished = Some(format!("gave up: {e}"));
            }
        }
    }
    next
}

/// Creates a watch of `target` (create-only: an existing one is left as
/// it is) due at the first step after `since`.
///
/// # Errors
/// When the ledger fails.
pub async fn watch(
    watches: &dyn WatchStore,
    gw: &SourceGateway,
    merchant: &str,
    target: QueryTarget,
    reason: &str,
    since: OffsetDateTime,
) -> Result<bool, LedgerError> {
    let w = new_watch(gw, merchant, target, reason, since);
    Ok(watches.put_watch(&w).await? == ApplyOutcome::Applied)
}

/// A watch of `target` due at the first step after `since`, not yet written.
fn new_watch(
    gw: &SourceGateway,
    merchant: &str,
    target: QueryTarget,
    reason: &str,
    since: OffsetDateTime,
) -> Watch {
    let first = gw
        .config
        .query_schedule_secs
        .first()
        .copied()
        .unwrap_or(300);
    Watch {
        id: Watch::id_for(&gw.source, merchant, &target),
        source: gw.source.clone(),
        merchant: merchant.to_owned(),
        target,
        query_id: None,
        reason: reason.to_owned(),
        since,
        attempts: 0,
        failures: 0,
        due_at: Some(since + time::Duration::seconds(first as i64)),
        last_answer: None,
        finished: None,
        version: 1,
    }
}

/// Refunds and voids parked for longer than the first step: ask about the
/// payment they name (by its `queryId`).
async fn watch_parked_payments(querier: &Querier, now: OffsetDateTime) -> Result<(), LedgerError> {
    let parked = querier
        .ledger
        .parked_before(now, paynotify_ports::PARKED_SCAN_LIMIT)
        .await?;
    for p in parked {
        let e = &p.parked.event;
        let Some(gw) = querier.gateways.get(&e.source) else {
            continue;
        };
        if !gw.config.auto_query || p.parked.conflict.is_some() {
            continue;
        }
        let target = QueryTarget::QueryId {
            query_id: e.payment_ref.clone(),
        };
        if target.check().is_err() {
            continue;
        }
        // The schedule counts from when the event was parked.
        if watch(
            querier.watches.as_ref(),
            gw,
            &e.merchant,
            target,
            "parked",
            p.parked.parked_at,
        )
        .await?
        {
            info!(payment_key = %p.payment_key, source = %e.source, "a parked event's payment will be asked about");
        }
    }
    Ok(())
}

/// UnionPay's status queries as the worker's [`ApplyHook`]: an in-process
/// notification opens a watch before it is applied (so a crash after the
/// apply still leaves it), a success ends the watches of its transaction.
pub struct StatusQueries {
    watches: Arc<dyn WatchStore>,
    gateways: Arc<Gateways>,
}

impl StatusQueries {
    /// The hook for `gateways`; `None` when no source has a gateway.
    pub fn hook(
        watches: Arc<dyn WatchStore>,
        gateways: &Arc<Gateways>,
    ) -> Option<Arc<dyn ApplyHook>> {
        (!gateways.0.is_empty()).then(|| {
            Arc::new(Self {
                watches,
                gateways: gateways.clone(),
            }) as Arc<dyn ApplyHook>
        })
    }
}

#[async_trait::async_trait]
impl ApplyHook for StatusQueries {
    async fn before_apply(
        &self,
        event: &PaymentEvent,
        received_at: OffsetDateTime,
    ) -> Result<(), LedgerError> {
        watch_in_process(self.watches.as_ref(), &self.gateways, event, received_at).await
    }

    fn wants_applied(&self, event: &PaymentEvent) -> bool {
        event.outcome == EventOutcome::Succeeded && self.gateways.get(&event.source).is_some()
    }

    async fn after_applied(
        &self,
        event: &PaymentEvent,
        notification_id: &str,
    ) -> Result<(), LedgerError> {
        // A watch left open is asked once more, and the answer is a duplicate.
        end_watches(
            self.watches.as_ref(),
            &self.gateways,
            event,
            notification_id,
        )
        .await
    }
}

/// After an in-process notification (UnionPay 03/04/05), ask about the
/// transaction on the source's schedule.
///
/// # Errors
/// When the ledger fails.
pub async fn watch_in_process(
    watches: &dyn WatchStore,
    gateways: &Gateways,
    event: &PaymentEvent,
    now: OffsetDateTime,
) -> Result<(), LedgerError> {
    if event.outcome != EventOutcome::Pending {
        return Ok(());
    }
    let Some(gw) = gateways.get(&event.source) else {
        return Ok(());
    };
    let Some(target) = paynotify_runtime::scheme::unionpay::order_of(event) else {
        return Ok(());
    };
    if gw.config.auto_query {
        let mut w = new_watch(gw, &event.merchant, target, "in_process", now);
        w.query_id.clone_from(&event.psp_txn_id);
        watches.put_watch(&w).await?;
    }
    Ok(())
}

/// A notification that applied a success ends the watches of its order and
/// of its `queryId`: UnionPay need not be asked about it (each query counts
/// against `max_requests_per_sec`). A failure does not: UnionPay may still
/// change a front transaction's failure, and the schedule asks until then.
/// A watch written meanwhile by a query keeps that write (its version).
///
/// # Errors
/// When the ledger fails.
pub async fn end_watches(
    watches: &dyn WatchStore,
    gateways: &Gateways,
    event: &PaymentEvent,
    notification_id: &str,
) -> Result<(), LedgerError> {
    if event.outcome != EventOutcome::Succeeded || gateways.get(&event.source).is_none() {
        return Ok(());
    }
    let by_query_id = event.psp_txn_id.as_ref().map(|q| QueryTarget::QueryId {
        query_id: q.clone(),
    });
    let targets = paynotify_runtime::scheme::unionpay::order_of(event)
        .into_iter()
        .chain(by_query_id);
    for target in targets {
        let id = Watch::id_for(&event.source, &event.merchant, &target);
        let Some(w) = watches.get_watch(&id).await? else {
            continue;
        };
        if w.finished.is_some() {
            continue;
        }
        let mut done = w.clone();
        done.version += 1;
        done.finished = Some("notified".to_owned());
        done.due_at = None;
        done.last_answer = Some(format!("notification {notification_id}"));
        // Refused: a query wrote it meanwhile; that answer stands.
        watches.put_watch(&done).await?;
    }
    Ok(())
}

/// Every `every` until `shutdown`, [`run_due`].
pub async fn watch_queries(
    querier: Querier,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {},
            () = shutdown.cancelled() => return,
        }
        if let Err(e) = run_due(&querier, OffsetDateTime::now_utc()).await {
            warn!(error = %e, "reading due status queries failed");
        }
    }
}
