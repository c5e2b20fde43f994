//! The queue on SQS: concurrent sends coalesced into `SendMessageBatch`,
//! long-poll receives with `ApproximateReceiveCount`, batched deletes,
//! `ChangeMessageVisibility` for delays, and a dead-letter queue written with
//! the reason, the error and the receive count as message attributes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};

use super::batch::Batcher;
use super::sqs_batches::{delete_batch, send_batch};
use super::{cause, describe, Clients};
use crate::config::AwsConfig;
use crate::ports::{
    check_message_size, same_reason, DeadLetter, DeadLetterReason, DeadLetters, Progress, Queue,
    QueueError, QueueMessage, QueueStats, Receipt, MAX_DELAY_SECS, MAX_MESSAGE_BYTES,
};
use crate::{from_unix_ms, stored_time};

mod port;

use port::*;

/// Dead-letter attributes are cut to this length.
const MAX_ATTRIBUTE_CHARS: usize = 1024;

fn unavailable<E, R>(e: aws_sdk_sqs::error::SdkError<E, R>) -> QueueError
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    QueueError::Unavailable(cause(e))
}

/// A main queue and its dead-letter queue.
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
    dlq_url: String,
    sends: Batcher<String, String>,
    deletes: Batcher<String, ()>,
    /// The configuration's limits, for a receive's timeouts (its long-poll
    /// wait on top).
    config: AwsConfig,
}

impl SqsQueue {
    /// A receive's settings: the configured timeouts with its wait on top.
    fn long_poll(&self, wait: Duration) -> aws_sdk_sqs::config::Builder {
        aws_sdk_sqs::config::Builder::default().timeout_config(super::timeouts(&self.config, wait))
    }

    /// Looks up both queues' URLs and starts the batching tasks.
    ///
    /// # Errors
    /// `BackendError::Aws` when a queue does not exist.
    pub async fn open(clients: &Clients, config: &AwsConfig) -> Result<Self, crate::BackendError> {
        let client = clients.sqs.clone();
        let lookup = |name: String| {
            let client = client.clone();
            async move {
                client
                    .get_queue_url()
                    .queue_name(&name)
                    .send()
                    .await
                    .map_err(|e| {
                        crate::BackendError::Aws(format!("queue {name:?}: {}", describe(&e)))
                    })?
                    .queue_url
                    .ok_or_else(|| crate::BackendError::Aws(format!("queue {name:?} has no URL")))
            }
        };
        let url = lookup(config.queue.clone()).await?;
        let dlq_url = lookup(config.dead_letter_queue.clone()).await?;
        let window = Duration::from_millis(config.send_batch_window_ms);
        let (c, u) = (client.clone(), url.clone());
        let sends = Batcher::spawn(
            10,
            window,
            Arc::new(move |bodies: Vec<String>| {
                let (c, u) = (c.clone(), u.clone());
                Box::pin(async move { send_batch(&c, &u, bodies).await })
            }),
        );
        let (c, u) = (client.clone(), url.clone());
        let deletes = Batcher::spawn(
            10,
            window,
            Arc::new(move |receipts: Vec<String>| {
                let (c, u) = (c.clone(), u.clone());
                Box::pin(async move { delete_batch(&c, &u, receipts).await })
            }),
        );
        Ok(Self {
            client,
            url,
            dlq_url,
            sends,
            deletes,
            config: config.clone(),
        })
    }

    /// Receives from the DLQ, hiding what it read for `hide_secs`, until
    /// `limit` messages, or two long polls in a row return nothing new, or
    /// a bounded number of calls. SQS has no non-destructive listing:
    /// messages in flight elsewhere are not seen, and callers release what
    /// they do not consume.
    async fn scan_dlq(
        &self,
        limit: usize,
        hide_secs: i32,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>, QueueError> {
        let expected = self
            .approximate(
                &self.dlq_url,
                &[QueueAttributeName::ApproximateNumberOfMessages],
            )
            .await? as usize;
        let mut calls = expected.min(limit) / 10 * 2 + 10;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut empty = 0;
        // Seeing as many as SQS counts is enough; its count is approximate,
        // so the scan also stops on its own.
        while out.len() < limit.min(expected.max(1)) && empty < 2 && calls > 0 {
            calls -= 1;
            let got = self
                .client
                .receive_message()
                .queue_url(&self.dlq_url)
                .max_number_of_messages(10)
                .visibility_timeout(hide_secs)
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .customize()
                .config_override(self.long_poll(Duration::from_secs(1)))
                .send()
                .await
                .map_err(unavailable)?;
            let mut new = 0;
            for m in got.messages.unwrap_or_default() {
                if seen.insert(m.message_id.clone().unwrap_or_default()) && out.len() < limit {
                    out.push(m);
                    new += 1;
                }
            }
            empty = if new == 0 { empty + 1 } else { 0 };
        }
        Ok(out)
    }

    /// Receives every dead letter with `reason` (all when `None`), hidden
    /// long enough for a whole scan and the moves or deletes after it, and
    /// releases the others at once.
    async fn take_dead_letters(
        &self,
        reason: Option<&str>,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>, QueueError> {
        self.take_dead_letters_where(|m| reason.is_none_or(|r| same_reason(&reason_of(m), r)))
            .await
    }

    /// Receives every dead letter `chosen` selects, as
    /// [`Self::take_dead_letters`] does.
    async fn take_dead_letters_where(
        &self,
        chosen: impl Fn(&aws_sdk_sqs::types::Message) -> bool,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>, QueueError> {
        let messages = self.scan_dlq(usize::MAX, 300).await?;
        let (chosen, others): (Vec<_>, Vec<_>) = messages.into_iter().partition(|m| chosen(m));
        self.release(&others).await;
        Ok(chosen)
    }

    /// The named attributes of a queue.
    async fn attributes(
        &self,
        url: &str,
        names: &[QueueAttributeName],
    ) -> Result<HashMap<QueueAttributeName, String>, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.attributes.unwrap_or_default())
    }

    /// The sum of the named `Approximate…` counts of a queue.
    async fn approximate(
        &self,
        url: &str,
        names: &[QueueAttributeName],
    ) -> Result<u64, QueueError> {
        Ok(self
            .attributes(url, names)
            .await?
            .values()
            .filter_map(|v| v.parse::<u64>().ok())
            .sum())
    }

    async fn release(&self, messages: &[aws_sdk_sqs::types::Message]) {
        for m in messages {
            if let Some(r) = &m.receipt_handle {
                let _ = self
                    .client
                    .change_message_visibility()
                    .queue_url(&self.dlq_url)
                    .receipt_handle(r)
                    .visibility_timeout(0)
                    .send()
                    .await;
            }
        }
    }
}
