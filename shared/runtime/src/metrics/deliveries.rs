//! The deliverer's metrics, by endpoint (configured names only, so the
//! series stay bounded).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Buckets;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    endpoint: String,
    outcome: &'static str,
}

/// Counters of attempts, the lag of delivered events, and gauges the
/// deliverer sets from each endpoint's status.
pub(super) struct DeliveryMetrics {
    attempts: Family<AttemptLabels, Counter>,
    lag: Family<EndpointLabels, Histogram, Buckets>,
    backlog: Family<EndpointLabels, Gauge>,
    dead_letters: Family<EndpointLabels, Gauge>,
    oldest: Family<EndpointLabels, Gauge>,
    disabled: Family<EndpointLabels, Gauge>,
}

impl DeliveryMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        let m = Self {
            attempts: Family::default(),
            lag: Family::new_with_constructor(Buckets {
                start: 0.001,
                count: 26,
            }),
            backlog: Family::default(),
            dead_letters: Family::default(),
            oldest: Family::default(),
            disabled: Family::default(),
        };
        r.register(
            "delivery_attempts",
            "Attempts to deliver an outgoing event, by endpoint and outcome (delivered, failed, dead_lettered)",
            m.attempts.clone(),
        );
        r.register(
            "delivery_lag_seconds",
            "From an event's record in the ledger to its delivery",
            m.lag.clone(),
        );
        r.register(
            "delivery_backlog",
            "Outgoing events not yet delivered to the endpoint (pending)",
            m.backlog.clone(),
        );
        r.register(
            "delivery_dead_letters",
            "Outgoing events whose every attempt failed, waiting for deliveries resend",
            m.dead_letters.clone(),
        );
        r.register(
            "delivery_oldest_pending_seconds",
            "Age of the oldest event not yet delivered to the endpoint",
            m.oldest.clone(),
        );
        r.register(
            "delivery_endpoint_disabled",
            "1 while nothing is sent to the endpoint (failing too long, or 410 Gone)",
            m.disabled.clone(),
        );
        m
    }
}

fn labels(endpoint: &str) -> EndpointLabels {
    EndpointLabels {
        endpoint: endpoint.to_owned(),
    }
}

impl super::Metrics {
    /// One attempt to `endpoint` ended with `outcome`; a delivered one
    /// `lag` after its event was recorded.
    pub fn delivery_attempt(&self, endpoint: &str, outcome: &'static str, lag: Option<Duration>) {
        let d = &self.deliveries;
        d.attempts
            .get_or_create(&AttemptLabels {
                endpoint: endpoint.to_owned(),
                outcome,
            })
            .inc();
        if let Some(lag) = lag {
            d.lag
                .get_or_create(&labels(endpoint))
                .observe(lag.as_secs_f64());
        }
    }

    /// What the deliverer read of `endpoint`'s status.
    pub fn delivery_status(
        &self,
        endpoint: &str,
        pending: u64,
        dead_lettered: u64,
        oldest: Option<Duration>,
        disabled: bool,
    ) {
        let d = &self.deliveries;
        let l = labels(endpoint);
        d.backlog.get_or_create(&l).set(pending as i64);
        d.dead_letters.get_or_create(&l).set(dead_lettered as i64);
        d.oldest
            .get_or_create(&l)
            .set(oldest.map_or(0, |o| o.as_secs() as i64));
        d.disabled.get_or_create(&l).set(i64::from(disabled));
    }
}
