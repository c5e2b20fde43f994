//! Coalesces concurrent single requests into batch API calls: callers submit
//! one item each and await their own result; a task gathers up to `max`
//! items arriving within `window` and flushes them in one call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::ports::QueueError;

type Flush<I, O> = Arc<
    dyn Fn(Vec<I>) -> Pin<Box<dyn Future<Output = Vec<Result<O, QueueError>>> + Send>>
        + Send
        + Sync,
>;

/// A handle to submit items to one batching task.
pub(crate) struct Batcher<I, O> {
    tx: mpsc::Sender<(I, oneshot::Sender<Result<O, QueueError>>)>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the task. `flush` must return one result per item, in order.
    pub(crate) fn spawn(max: usize, window: Duration, flush: Flush<I, O>) -> Self {
        let (tx, mut rx) = mpsc::channel::<(I, oneshot::Sender<Result<O, QueueError>>)>(1024);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut items = vec![first];
                let deadline = tokio::time::Instant::now() + window;
                while items.len() < max {
                    tokio::select! {
                        next = rx.recv() => match next {
                            Some(item) => items.push(item),
                            None => break,
                        },
                        () = tokio::time::sleep_until(deadline) => break,
                    }
                }
                let (inputs, replies): (Vec<I>, Vec<_>) = items.into_iter().unzip();
                let flush = flush.clone();
                // Flushes run concurrently so a slow call does not hold up the next batch.
                tokio::spawn(async move {
                    let n = replies.len();
                    let mut results = flush(inputs).await.into_iter();
                    for reply in replies {
                        let r = results.next().unwrap_or_else(|| {
                            Err(QueueError::Unavailable(
                                format!("batch returned fewer than {n} results").into(),
                            ))
                        });
                        let _ = reply.send(r);
                    }
                });
            }
        });
        Self { tx }
    }

    /// Submits one item and waits for its own result.
    pub(crate) async fn submit(&self, item: I) -> Result<O, QueueError> {
        let (reply, result) = oneshot::channel();
        self.tx
            .send((item, reply))
            .await
            .map_err(|_| QueueError::Unavailable("batching task stopped".into()))?;
        result
            .await
            .map_err(|_| QueueError::Unavailable("batching task dropped the request".into()))?
    }
}
