//! Stopping a process whose stores can no longer work.

use crate::ports::Backends;

/// Watches the stores of `backends` and, when one can no longer work, logs
/// why and cancels `shutdown`; the returned task ends with that reason (or
/// `None` when `shutdown` was cancelled for another reason).
pub fn watch(
    backends: &Backends,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Option<String>> {
    let backends = backends.clone();
    tokio::spawn(async move {
        loop {
            if let Some(why) = backends.fatal() {
                tracing::error!(error = %why, "a store can no longer be written; stopping");
                shutdown.cancel();
                return Some(why);
            }
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
                () = shutdown.cancelled() => return backends.fatal(),
            }
        }
    })
}
