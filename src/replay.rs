//! `replay`: sends archived notifications to the queue again. Always safe:
//! applying is idempotent, so what was applied before becomes a duplicate.

use paynotify_shared::backend::Backends;
use paynotify_shared::envelope::{Envelope, QueuedBody};
use paynotify_shared::segment;
use tracing::warn;

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Replayed {
    /// Notifications sent to the queue.
    pub sent: usize,
    /// Torn segments skipped: written partly by a process that died, none
    /// of their notifications acknowledged.
    pub torn: usize,
}

/// Enqueues every notification archived in the objects at `keys`, ten per
/// batch; an envelope too large for the queue travels as a pointer to its
/// place in the archive. `progress` is told how many objects were read.
///
/// # Errors
/// Archive or queue errors; what was sent before the error stays sent.
pub async fn replay(
    backends: &Backends,
    keys: &[String],
    mut progress: impl FnMut(usize),
) -> anyhow::Result<Replayed> {
    let max = backends.queue.max_message_bytes();
    let mut done = Replayed::default();
    let mut bodies = Vec::with_capacity(10);
    for (i, key) in keys.iter().enumerate() {
        let records = match segment::read_object(backends.archive.as_ref(), key).await? {
            Ok(r) => r,
            Err(torn) => {
                warn!(error = %torn, "skipped a torn segment: none of its notifications was acknowledged");
                done.torn += 1;
                continue;
            }
        };
        for (at, json) in records {
            // A line that is not an envelope is sent as it is: the worker
            // dead-letters it with its reason.
            let id = Envelope::from_json(&json).map(|e| e.id).unwrap_or_default();
            bodies.push(QueuedBody::for_queue(json, &at, &id, max));
            if bodies.len() == 10 {
                done.sent += backends.queue.send_batch(&bodies).await?.len();
                bodies.clear();
            }
        }
        progress(i + 1);
    }
    if !bodies.is_empty() {
        done.sent += backends.queue.send_batch(&bodies).await?.len();
    }
    Ok(done)
}
