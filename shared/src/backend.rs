//! Backends for the three ports, chosen once from configuration.

pub mod local;

use std::sync::Arc;

use crate::config::{BackendConfig, BackendKind};
use crate::ports::{Archive, Ledger, Queue};

/// The archive, queue and ledger of one deployment.
#[derive(Clone)]
pub struct Backends {
    pub archive: Arc<dyn Archive>,
    pub queue: Arc<dyn Queue>,
    pub ledger: Arc<dyn Ledger>,
}

/// Why the backends could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("opening the local backend in {path}: {why}")]
    Local { path: String, why: String },
}

/// Opens the backends `config` names.
///
/// # Errors
/// `BackendError` when a store cannot be opened.
pub fn build(config: &BackendConfig) -> Result<Backends, BackendError> {
    match config.kind {
        BackendKind::Local => local::open(config),
    }
}
