//! The two SQS batch calls: `SendMessageBatch` and `DeleteMessageBatch`,
//! each returning one result per entry, in order.

use aws_sdk_sqs::types::{
    BatchResultErrorEntry, DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry,
};

use super::describe;
use crate::ports::QueueError;

/// SQS's limit on the bodies of one `SendMessageBatch`, all entries together.
pub(super) const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Sends `bodies` in as few calls as SQS's total-size limit allows (one,
/// unless they add up to more than 256 KiB); entry `i` of the result is body
/// `i`'s message id.
pub(super) async fn send_batch(
    client: &aws_sdk_sqs::Client,
    url: &str,
    bodies: Vec<String>,
) -> Vec<Result<String, QueueError>> {
    let mut results = Vec::with_capacity(bodies.len());
    for chunk in by_total_size(bodies, MAX_BATCH_BYTES) {
        results.extend(send_one_batch(client, url, chunk).await);
    }
    results
}

/// Splits `bodies`, in order, into runs whose sizes add up to at most `max`
/// (a body larger than `max` alone in its run, for SQS to refuse).
fn by_total_size(bodies: Vec<String>, max: usize) -> Vec<Vec<String>> {
    let mut runs: Vec<Vec<String>> = Vec::new();
    let mut size = 0;
    for body in bodies {
        match runs.last_mut() {
            Some(run) if size + body.len() <= max => {
                size += body.len();
                run.push(body);
            }
            _ => {
                size = body.len();
                runs.push(vec![body]);
            }
        }
    }
    runs
}

async fn send_one_batch(
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
                None => Err(QueueError::Unavailable(
                    format!("{}: {}", f.code, f.message.unwrap_or_default()).into(),
                )),
            };
        }
    }
    results
}

fn all_failed<T>(n: usize, why: &str) -> Vec<Result<T, QueueError>> {
    (0..n)
        .map(|_| Err(QueueError::Unavailable(why.into())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_split_by_total_size_in_order() {
        let body = |n: usize, c: char| c.to_string().repeat(n);
        let runs = by_total_size(
            vec![
                body(100, 'a'),
                body(100, 'b'),
                body(100, 'c'),
                body(300, 'd'),
                body(50, 'e'),
            ],
            250,
        );
        let firsts: Vec<Vec<char>> = runs
            .iter()
            .map(|r| r.iter().map(|b| b.chars().next().unwrap()).collect())
            .collect();
        assert_eq!(
            firsts,
            vec![vec!['a', 'b'], vec!['c'], vec!['d'], vec!['e']]
        );
        assert!(by_total_size(vec![], 10).is_empty());
    }
}
