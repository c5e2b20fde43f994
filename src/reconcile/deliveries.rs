//! Reconcile's check of outgoing events (docs/events.md): every transition
//! of a checked payment has its event in the outbox, and every event an
//! endpoint's filter takes is delivered, pending or dead-lettered there.

use std::collections::BTreeMap;

use paynotify_shared::backend::Backends;
use paynotify_shared::config::Config;
use paynotify_shared::event::PaymentKey;
use paynotify_shared::outgoing::EventType;
use paynotify_shared::ports::{DeliveryFilter, DeliveryStatus};
use serde::Serialize;
use time::OffsetDateTime;

use super::Report;

/// The outgoing events of the checked payments and where they stand, over
/// every endpoint.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryTotals {
    pub events: u64,
    pub delivered: u64,
    pub pending: u64,
    pub dead_lettered: u64,
}

/// On the AWS webhook line: the checked payments' held deliveries, per
/// endpoint, counted as dead-lettered (each waits for `deliveries resend`).
/// What the line has not yet delivered is on its queue, which cannot be
/// read by payment; the stream's completeness is the events function's
/// (its failures go to `EventsFailed`, alarmed).
async fn held(
    config: &Config,
    line: &dyn paynotify_shared::ports::WebhookLine,
    transitions: &BTreeMap<PaymentKey, Vec<OffsetDateTime>>,
    report: &mut Report,
) -> anyhow::Result<()> {
    for e in &config.deliveries.endpoints {
        let held = line
            .list_held(&DeliveryFilter {
                endpoint: Some(e.name.clone()),
                limit: usize::MAX,
                ..DeliveryFilter::default()
            })
            .await?;
        report.deliveries.dead_lettered += held
            .iter()
            .filter(|d| transitions.contains_key(&PaymentKey::from_stored(&d.record.payment_key)))
            .count() as u64;
    }
    Ok(())
}

/// Checks the outgoing events of the payments in `transitions` (each with
/// when its state changed); nothing when the backend keeps no outbox.
///
/// # Errors
/// Backend errors.
pub(super) async fn check(
    config: &Config,
    backends: &Backends,
    transitions: &BTreeMap<PaymentKey, Vec<OffsetDateTime>>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let Some(store) = backends.deliveries.as_ref() else {
        if let Some(line) = &backends.webhooks {
            held(config, line.as_ref(), transitions, report).await?;
        }
        return Ok(());
    };
    let since = store.outbox_since().await?;
    let mut cursors = Vec::new();
    for e in &config.deliveries.endpoints {
        cursors.push((e, store.endpoint_status(&e.name).await?.cursor));
    }
    for (key, changed_at) in transitions {
        let transitions = changed_at
            .iter()
            .filter(|t| since.is_none_or(|s| **t >= s))
            .count();
        let outbox = store.outbox_for(key.as_str()).await?;
        report.deliveries.events += outbox.len() as u64;
        let events = outbox
            .iter()
            .filter(|r| r.event_type != EventType::NeedsAttention)
            .count();
        if events != transitions {
            report.flag(
                "event_missing",
                key.to_string(),
                format!(
                    "{transitions} transitions since the outbox began, {events} outgoing events"
                ),
            );
        }
        for (endpoint, cursor) in &cursors {
            let deliveries = store
                .list(&DeliveryFilter {
                    endpoint: Some(endpoint.name.clone()),
                    payment_key: Some(key.to_string()),
                    limit: 100_000,
                    ..DeliveryFilter::default()
                })
                .await?;
            for r in outbox
                .iter()
                .filter(|r| endpoint.wants(r.event_type, &r.source, &r.merchant))
            {
                match deliveries.iter().find(|d| d.record.seq == r.seq) {
                    Some(d) => match d.status {
                        DeliveryStatus::Delivered => report.deliveries.delivered += 1,
                        DeliveryStatus::Pending => report.deliveries.pending += 1,
                        DeliveryStatus::DeadLettered => report.deliveries.dead_lettered += 1,
                    },
                    // Not yet moved into the endpoint's deliveries.
                    None if r.seq > *cursor => report.deliveries.pending += 1,
                    None => report.flag(
                        "delivery_missing",
                        key.to_string(),
                        format!(
                            "event {} ({}) is behind {}'s cursor but was never queued for it",
                            r.event_id,
                            r.event_type.as_str(),
                            endpoint.name
                        ),
                    ),
                }
            }
        }
    }
    Ok(())
}
