//! Where a backend keeps its outgoing deliveries, and each endpoint's
//! status as `paynotify deliveries endpoints` prints it and the read API
//! answers.

use std::sync::Arc;

use paynotify_shared::backend::Backends;
use paynotify_shared::config::Config;
use paynotify_shared::ports::{
    Deliveries, Delivery, DeliveryFilter, DeliveryStatus, EndpointStatus, WebhookLine,
};
use serde_json::json;
use time::OffsetDateTime;

/// Where a backend keeps its deliveries: the embedded backend's outbox
/// records every one; the AWS webhook line keeps the held ones (pending ones
/// are messages on its queue, delivered ones are gone from it).
pub enum Store {
    Outbox(Arc<dyn Deliveries>),
    Line(Arc<dyn WebhookLine>),
}

impl Store {
    pub async fn list(&self, filter: &DeliveryFilter) -> anyhow::Result<Vec<Delivery>> {
        match self {
            Self::Outbox(s) => Ok(s.list(filter).await?),
            Self::Line(l) => {
                if filter
                    .status
                    .is_some_and(|s| s != DeliveryStatus::DeadLettered)
                {
                    anyhow::bail!(
                        "on AWS only held (dead_lettered) deliveries are kept: pending ones are \
                         messages on the webhooks queue, delivered ones are removed from it \
                         (`paynotify deliveries endpoints` shows the queue's depth)"
                    );
                }
                Ok(l.list_held(filter).await?)
            }
        }
    }

    pub async fn endpoint_status(&self, name: &str) -> anyhow::Result<EndpointStatus> {
        Ok(match self {
            Self::Outbox(s) => s.endpoint_status(name).await?,
            Self::Line(l) => l.endpoint_status(name).await?,
        })
    }

    pub async fn set_disabled(&self, name: &str, reason: Option<&str>) -> anyhow::Result<()> {
        match self {
            Self::Outbox(s) => s.set_disabled(name, reason).await?,
            Self::Line(l) => l.set_disabled(name, reason).await?,
        }
        Ok(())
    }
}

/// The store of `backends`.
///
/// # Errors
/// A backend that keeps no deliveries.
pub fn store_of(backends: &Backends) -> anyhow::Result<Store> {
    Ok(match (&backends.deliveries, &backends.webhooks) {
        (Some(s), _) => Store::Outbox(s.clone()),
        (None, Some(l)) => Store::Line(l.clone()),
        (None, None) => anyhow::bail!("this backend keeps no deliveries"),
    })
}

/// Each configured endpoint's status, with its URL and lag, as `deliveries
/// endpoints` and the read API give it.
///
/// # Errors
/// A backend that keeps no deliveries, or a store error.
pub async fn endpoints_value(
    config: &Config,
    backends: &Backends,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let store = store_of(backends)?;
    let mut out = Vec::new();
    for e in &config.deliveries.endpoints {
        let s = store.endpoint_status(&e.name).await?;
        let lag = s
            .oldest_pending
            .map(|t| (OffsetDateTime::now_utc() - t).whole_seconds());
        let mut v = serde_json::to_value(&s)?;
        v["url"] = json!(e.url);
        v["lag_secs"] = json!(lag);
        out.push(v);
    }
    Ok(out)
}

/// Puts a release on each of `endpoint`'s lines that holds a delivery: its
/// held events are sent in order when it comes up. How many lines.
pub async fn release_all(
    line: &dyn WebhookLine,
    endpoint: &str,
    payment: Option<&str>,
) -> anyhow::Result<usize> {
    let held = line
        .list_held(&DeliveryFilter {
            endpoint: Some(endpoint.to_owned()),
            payment_key: payment.map(str::to_owned),
            limit: usize::MAX,
            ..DeliveryFilter::default()
        })
        .await?;
    let payments: std::collections::BTreeSet<&str> =
        held.iter().map(|d| d.record.payment_key.as_str()).collect();
    for p in &payments {
        line.release(endpoint, p).await?;
    }
    Ok(payments.len())
}

/// What `resend` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resent {
    /// The outbox's delivery is pending again, due now, with a fresh retry
    /// budget (a dead-lettered one releases its payment's later events).
    Again,
    /// On the AWS webhook line: the held delivery and its payment's later
    /// held events go again, in order, when the release comes up.
    Released { payment_key: String },
    /// Nothing to resend, and why.
    NoSuchDelivery(String),
}

/// Sends `event_id` to the endpoint `name` again.
///
/// # Errors
/// A backend that keeps no deliveries, or a store error.
pub async fn resend_delivery(
    backends: &Backends,
    name: &str,
    event_id: &str,
) -> anyhow::Result<Resent> {
    match store_of(backends)? {
        Store::Outbox(s) => Ok(
            if s.resend(name, event_id, OffsetDateTime::now_utc()).await? {
                Resent::Again
            } else {
                Resent::NoSuchDelivery(format!("{name} has no delivery of {event_id}"))
            },
        ),
        Store::Line(line) => {
            let held = line
                .list_held(&DeliveryFilter {
                    endpoint: Some(name.to_owned()),
                    event_id: Some(event_id.to_owned()),
                    limit: 1,
                    ..DeliveryFilter::default()
                })
                .await?;
            let Some(d) = held.first() else {
                return Ok(Resent::NoSuchDelivery(format!(
                    "{name} holds no delivery of {event_id} (on AWS only held deliveries can be resent)"
                )));
            };
            release_all(line.as_ref(), name, Some(&d.record.payment_key)).await?;
            Ok(Resent::Released {
                payment_key: d.record.payment_key.clone(),
            })
        }
    }
}
