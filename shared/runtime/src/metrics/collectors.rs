//! Metrics computed when `/metrics` is scraped rather than counted as
//! things happen: gauges that exist only once sampled, and the AWS API call
//! counts the SDK interceptor keeps.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::ports::CallCounter;

/// A gauge sampled at scrape, exported only once a sample set it: the age
/// of the oldest message where the backend can tell (on SQS it is
/// CloudWatch's `ApproximateAgeOfOldestMessage`, not a queue attribute),
/// the parked events where this process reads the ledger. Never a made-up 0.
#[derive(Debug)]
pub(super) struct Sampled {
    name: &'static str,
    help: &'static str,
    value: std::sync::Mutex<Option<f64>>,
}

impl Sampled {
    pub(super) fn new(name: &'static str, help: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            help,
            value: std::sync::Mutex::new(None),
        })
    }

    pub(super) fn set(&self, value: Option<f64>) {
        if let Ok(mut v) = self.value.lock() {
            *v = value;
        }
    }
}

impl Collector for Sampled {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(value) = self.value.lock().ok().and_then(|v| *v) else {
            return Ok(());
        };
        let metric_type = ConstGauge::new(value).metric_type();
        let metric = encoder.encode_descriptor(self.name, self.help, None, metric_type)?;
        // Counts print as integers (`1`, not `1.0`).
        if value.fract() == 0.0 && value.abs() < 1e15 {
            ConstGauge::new(value as i64).encode(metric)
        } else {
            ConstGauge::new(value).encode(metric)
        }
    }
}

/// The AWS API calls this process made, by operation (`aws_api_calls_total`).
#[derive(Debug)]
pub(super) struct AwsCalls(pub(super) Arc<dyn CallCounter>);

impl Collector for AwsCalls {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.snapshot();
        let mut family = encoder.encode_descriptor(
            "aws_api_calls",
            "AWS API calls made by this process, by operation",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (call, n) in snapshot {
            let (service, operation) = call.split_once('.').unwrap_or(("", call.as_str()));
            let labels = [("service", service), ("operation", operation)];
            let counter = ConstCounter::new(n);
            counter.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
