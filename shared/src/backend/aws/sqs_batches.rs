//! The two SQS batch calls: `SendMessageBatch` and `DeleteMessageBatch`,
//! each returning one result per entry, in order.

use aws_sdk_sqs::types::{
    BatchResultErrorEntry, DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry,
};

use super::describe;
use crate::ports::QueueError;

/// Sends `bodies` in one call; entry `i` of the result is body `i`'s message id.
pub(super) async fn send_batch(
    client: &aws_sdk_sqs::Client,
    url: &str,
    bodies: Vec<String>,
) -> Vec<Result<String, QueueError>> {
    let n = bodies.len();
    let entries: Result<Vec<_>, _> = bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body)
                .build()
        })
        .collect();
    let entries = match entries {
        Ok(e) => e,
        Err(e) => return all_failed(n, &e.to_string()),
    };
    match client
        .send_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(out) => per_entry(
            n,
            out.successful.into_iter().map(|ok| (ok.id, ok.message_id)),
            out.failed,
            |_| None,
        ),
        Err(e) => all_failed(n, &describe(&e)),
    }
}

/// Deletes `receipts` in one call. A stale receipt is a no-op, by contract.
pub(super) async fn delete_batch(
    client: &aws_sdk_sqs::Client,
    url: &str,
    receipts: Vec<String>,
) -> Vec<Result<(), QueueError>> {
    let n = receipts.len();
    let entries: Result<Vec<_>, _> = receipts
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(r)
                .build()
        })
        .collect();
    let entries = match entries {
        Ok(e) => e,
        Err(e) => return all_failed(n, &e.to_string()),
    };
    match client
        .delete_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(out) => per_entry(
            n,
            out.successful.into_iter().map(|ok| (ok.id, ())),
            out.failed,
            |code| (code == "ReceiptHandleIsInvalid").then_some(()),
        ),
        Err(e) => all_failed(n, &describe(&e)),
    }
}

/// Places each success and failure at the index its entry id names; a failure
/// whose code `tolerate` accepts counts as a success; an entry SQS did not
/// mention is an error.
fn per_entry<T>(
    n: usize,
    successes: impl IntoIterator<Item = (String, T)>,
    failed: Vec<BatchResultErrorEntry>,
    tolerate: impl Fn(&str) -> Option<T>,
) -> Vec<Result<T, QueueError>> {
    let mut results: Vec<Result<T, QueueError>> = (0..n)
        .map(|_| {
            Err(QueueError::Unavailable(
                "SQS returned no result for this entry".into(),
            ))
        })
        .collect();
    for (id, value) in successes {
        if let Some(slot) = id.parse::<usize>().ok().and_then(|i| results.get_mut(i)) {
            *slot = Ok(value);
        }
    }
    for f in failed {
        if let Some(slot) = f.id.parse::<usize>().ok().and_then(|i| results.get_mut(i)) {
            *slot = match tolerate(&f.code) {
                Some(value) => Ok(value),
                None => Err(QueueError::Unavailable(format!(
                    "{}: {}",
                    f.code,
                    f.message.unwrap_or_default()
                ))),
            };
        }
    }
    results
}

fn all_failed<T>(n: usize, why: &str) -> Vec<Result<T, QueueError>> {
    (0..n)
        .map(|_| Err(QueueError::Unavailable(why.to_owned())))
        .collect()
}
