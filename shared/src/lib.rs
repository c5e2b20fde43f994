//! paynotify's crates under one name for the CLI, ingest, the worker, the
//! deliverer and the Lambda handlers: the model, schemes, configuration,
//! ports and records, the backends and the runtime, re-exported under the
//! paths the code has always used (`paynotify_shared::event`, `::config`,
//! `::backend`, `::metrics`, …), and the one function that needs both a
//! backend and the runtime: opening the backends metered.

pub use paynotify_backends as backend;
pub use paynotify_config as config;
pub use paynotify_model::{event, money, outgoing, state};
pub use paynotify_ports as ports;
pub use paynotify_records::{envelope, segment};
pub use paynotify_runtime::{
    admin, faults, gateway, metrics, notification_span, scheme, secret, serve, stores, telemetry,
};
pub use paynotify_testkit::{testing, testpki};

pub use event::{EventKey, EventKind, EventOutcome, PaymentEvent, PaymentKey};
pub use money::{Currency, Money};
pub use state::{transition, PaymentState, PaymentStatus, Transition};

/// The metering decorator of the ports, and opening the backends metered.
pub mod metered {
    use std::sync::Arc;

    pub use paynotify_runtime::metered::meter;

    use crate::backend::{self, BackendError, Backends};
    use crate::config::BackendConfig;
    use crate::metrics::Metrics;

    /// Opens the backends of `config` with every call metered into a new
    /// [`Metrics`] (which also counts AWS API calls on that backend).
    ///
    /// # Errors
    /// As [`backend::build`].
    pub async fn build(config: &BackendConfig) -> Result<(Backends, Arc<Metrics>), BackendError> {
        let mut backends = backend::build(config).await?;
        let metrics = Metrics::new(backends.api_calls.clone());
        meter(&mut backends, &metrics);
        Ok((backends, metrics))
    }
}
