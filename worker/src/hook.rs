//! What a PSP adds around applying its events, the one place where the
//! worker's generic steps call into a scheme's extras: UnionPay's
//! status-query watches ([`crate::query::StatusQueries`]).

use async_trait::async_trait;
use paynotify_model::event::PaymentEvent;
use paynotify_ports::LedgerError;
use time::OffsetDateTime;

/// Called by the worker around each verified event.
///
/// # Contract
/// - `before_apply` runs before the event is applied; an error leaves the
///   message to be retried (nothing was applied), so it must be idempotent.
/// - `after_applied` runs after the event changed its payment's state, only
///   for events `wants_applied` chose; it is best effort (a failure is
///   logged and the message is still acknowledged).
#[async_trait]
pub trait ApplyHook: Send + Sync {
    async fn before_apply(
        &self,
        event: &PaymentEvent,
        received_at: OffsetDateTime,
    ) -> Result<(), LedgerError>;

    fn wants_applied(&self, event: &PaymentEvent) -> bool;

    async fn after_applied(
        &self,
        event: &PaymentEvent,
        notification_id: &str,
    ) -> Result<(), LedgerError>;
}
