//! The two SQS batch calls: `SendMessageBatch` and `DeleteMessageBatch`,
//! each returning one result per entry, in order.

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry};

use super::describe;
use crate::ports::QueueError;

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
        Err(e) => {
            return (0..n)
                .map(|_| Err(QueueError::Unavailable(e.to_string())))
                .collect()
        }
    };
    match client
        .send_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(out) => {
            let mut results: Vec<Result<String, QueueError>> = (0..n)
                .map(|_| Err(QueueError::Unavailable("no result for this entry".into())))
                .collect();
            for ok in out.successful {
                if let Ok(i) = ok.id.parse::<usize>() {
                    if i < n {
                        results[i] = Ok(ok.message_id);
                    }
                }
            }
            for failed in out.failed {
                if let Ok(i) = failed.id.parse::<usize>() {
                    if i < n {
                        results[i] = Err(QueueError::Unavailable(format!(
                            "{}: {}",
                            failed.code,
                            failed.message.unwrap_or_default()
                        )));
                    }
                }
            }
            results
        }
        Err(e) => {
            let why = describe(&e);
            (0..n)
                .map(|_| Err(QueueError::Unavailable(why.clone())))
                .collect()
        }
    }
}

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
        Err(e) => {
            return (0..n)
                .map(|_| Err(QueueError::Unavailable(e.to_string())))
                .collect()
        }
    };
    match client
        .delete_message_batch()
        .queue_url(url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(out) => {
            let mut results: Vec<Result<(), QueueError>> = (0..n).map(|_| Ok(())).collect();
            for failed in out.failed {
                if let Ok(i) = failed.id.parse::<usize>() {
                    // A stale receipt is a no-op by contract; other failures are reported.
                    if i < n && failed.code != "ReceiptHandleIsInvalid" {
                        results[i] = Err(QueueError::Unavailable(format!(
                            "{}: {}",
                            failed.code,
                            failed.message.unwrap_or_default()
                        )));
                    }
                }
            }
            results
        }
        Err(e) => {
            let why = describe(&e);
            (0..n)
                .map(|_| Err(QueueError::Unavailable(why.clone())))
                .collect()
        }
    }
}
