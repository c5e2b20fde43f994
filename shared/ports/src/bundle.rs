//! The ports of one deployment, handed as one value to ingest, the worker,
//! the deliverer and the CLI. Which backend stands behind each is decided
//! once, by `paynotify-backends`; nothing that receives this bundle can name
//! a backend's own types.

use std::sync::Arc;

use crate::{
    Archive, CallCounter, DeadLetters, Deliveries, Ledger, Queue, SecretStore, WatchStore,
    WebhookLine,
};

/// The archive, queue and ledger of one deployment.
#[derive(Clone)]
pub struct Backends {
    pub archive: Arc<dyn Archive>,
    pub queue: Arc<dyn Queue>,
    /// The queue's dead letters (the same store as `queue`).
    pub dead_letters: Arc<dyn DeadLetters>,
    pub ledger: Arc<dyn Ledger>,
    /// UnionPay's status-query watches (in the ledger's database or table).
    pub watches: Arc<dyn WatchStore>,
    /// The outbox of the ledger's writes and their deliveries to the
    /// merchant's endpoints (local backend; on AWS the ledger table's stream
    /// is the outbox, read by the events function).
    pub deliveries: Option<Arc<dyn Deliveries>>,
    /// The queue of outgoing events to the merchant's endpoints and the
    /// deliveries it held (AWS backend, fed by the events function).
    pub webhooks: Option<Arc<dyn WebhookLine>>,
    /// API call counts (AWS backend only).
    pub api_calls: Option<Arc<dyn CallCounter>>,
    /// Where `secretsmanager:` references are read (AWS backend only).
    pub secrets: Option<Arc<dyn SecretStore>>,
}

impl Backends {
    /// Why one of the stores can no longer work in this process, if so.
    pub fn fatal(&self) -> Option<String> {
        self.archive
            .fatal()
            .or_else(|| self.queue.fatal())
            .or_else(|| self.ledger.fatal())
    }
}
