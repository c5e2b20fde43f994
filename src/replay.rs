//! `replay`: sends archived notifications to the queue again. Always safe:
//! applying is idempotent, so what was applied before becomes a duplicate.

use paynotify_shared::backend::Backends;
use paynotify_shared::envelope::QueuedBody;

/// Enqueues the archived envelopes at `keys`, ten per batch; an envelope too
/// large for the queue travels as a pointer to its archive key. Returns how
/// many were sent.
///
/// # Errors
/// Archive or queue errors; what was sent before the error stays sent.
pub async fn replay(
    backends: &Backends,
    keys: &[String],
    mut progress: impl FnMut(usize),
) -> anyhow::Result<usize> {
    let max = backends.queue.max_message_bytes();
    let mut sent = 0;
    for chunk in keys.chunks(10) {
        let mut bodies = Vec::with_capacity(chunk.len());
        for key in chunk {
            let json = backends.archive.get(key).await?;
            bodies.push(QueuedBody::for_queue(json, key, max));
        }
        sent += backends.queue.send_batch(&bodies).await?.len();
        progress(sent);
    }
    Ok(sent)
}
