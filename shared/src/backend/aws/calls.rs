//! Counts the AWS API calls a process makes, by service and operation, so
//! calls per notification can be measured (BENCHMARKS.md).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

/// Calls so far, keyed `Service.Operation`.
#[derive(Debug, Default)]
pub struct ApiCalls {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl ApiCalls {
    /// An interceptor that adds to these counts.
    pub(crate) fn interceptor(&self) -> CountingInterceptor {
        CountingInterceptor {
            counts: self.counts.clone(),
        }
    }

    /// A copy of the counts.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CountingInterceptor {
    counts: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl Intercept for CountingInterceptor {
    fn name(&self) -> &'static str {
        "paynotify-api-call-counter"
    }

    // Counted per HTTP request (retries included): that is what AWS bills.
    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(m) = cfg.load::<Metadata>() {
            if let Ok(mut c) = self.counts.lock() {
                *c.entry(format!("{}.{}", m.service(), m.name()))
                    .or_default() += 1;
            }
        }
        Ok(())
    }
}
