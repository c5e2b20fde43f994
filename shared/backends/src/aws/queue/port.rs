//! The `Queue` and `DeadLetters` ports on SQS, and how a dead letter's attributes are read.

use super::*;

pub(super) fn text(s: &str) -> Option<MessageAttributeValue> {
    let s: String = s.chars().take(MAX_ATTRIBUTE_CHARS).collect();
    let s = if s.is_empty() { "-".to_owned() } else { s };
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(s)
        .build()
        .ok()
}

pub(super) fn attr(m: &aws_sdk_sqs::types::Message, name: &str) -> String {
    m.message_attributes
        .as_ref()
        .and_then(|a| a.get(name))
        .and_then(|v| v.string_value.clone())
        .unwrap_or_default()
}

/// Why a message is in the DLQ: the reason the worker wrote, or, for one
/// SQS's redrive policy moved there (no attributes), that it was received
/// `max_receives` times without being settled.
pub(super) fn reason_of(m: &aws_sdk_sqs::types::Message) -> String {
    let reason = attr(m, "reason");
    if reason.is_empty() {
        DeadLetterReason::MaxReceivesExceeded.as_str().to_owned()
    } else {
        reason
    }
}

/// A message received from the DLQ as a dead letter.
pub(super) fn dead_letter(m: &aws_sdk_sqs::types::Message) -> DeadLetter {
    let sent_ms: i64 = m
        .attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let moved_by_sqs = attr(m, "reason").is_empty();
    let id = match attr(m, "original_id") {
        id if id.is_empty() => m.message_id.clone().unwrap_or_default(),
        id => id,
    };
    let error = if moved_by_sqs {
        "received too many times without being deleted".to_owned()
    } else {
        attr(m, "error")
    };
    DeadLetter {
        id,
        reason: reason_of(m),
        error,
        receive_count: attr(m, "receive_count").parse().unwrap_or(0),
        dead_at: stored_time(sent_ms),
        body: m.body.clone().unwrap_or_default().into_bytes(),
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, body: &[u8]) -> Result<String, QueueError> {
        let body = String::from_utf8(body.to_vec())
            .map_err(|_| QueueError::Unavailable("SQS message bodies must be UTF-8".into()))?;
        check_message_size(body.as_bytes())?;
        self.sends.submit(body).await
    }

    async fn send_batch(&self, bodies: &[Vec<u8>]) -> Result<Vec<String>, QueueError> {
        if bodies.len() > 10 {
            return Err(QueueError::BatchTooLarge(bodies.len()));
        }
        for body in bodies {
            check_message_size(body)?;
        }
        let texts: Result<Vec<String>, _> = bodies
            .iter()
            .map(|b| String::from_utf8(b.clone()))
            .collect();
        let texts = texts
            .map_err(|_| QueueError::Unavailable("SQS message bodies must be UTF-8".into()))?;
        send_batch(&self.client, &self.url, texts)
            .await
            .into_iter()
            .collect()
    }

    async fn send_delayed(&self, body: &[u8], seconds: u32) -> Result<String, QueueError> {
        check_message_size(body)?;
        let body = String::from_utf8(body.to_vec())
            .map_err(|_| QueueError::Unavailable("SQS message bodies must be UTF-8".into()))?;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .delay_seconds(seconds.min(MAX_DELAY_SECS) as i32)
            .send()
            .await
            .map_err(unavailable)?
            .message_id
            .ok_or_else(|| QueueError::Unavailable("SendMessage returned no id".into()))
    }

    fn max_delay_secs(&self) -> u32 {
        MAX_DELAY_SECS
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<QueueMessage>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(
                MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
            )
            .customize()
            .config_override(self.long_poll(wait.min(Duration::from_secs(20))))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let count = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                let first_received_at = m
                    .attributes
                    .as_ref()
                    .and_then(|a| {
                        a.get(&MessageSystemAttributeName::ApproximateFirstReceiveTimestamp)
                    })
                    .and_then(|t| t.parse::<i64>().ok())
                    .and_then(from_unix_ms);
                Some(QueueMessage {
                    id: m.message_id?,
                    receipt: Receipt(m.receipt_handle?),
                    body: m.body.unwrap_or_default().into_bytes(),
                    receive_count: count,
                    first_received_at,
                })
            })
            .collect())
    }

    async fn delete(&self, receipt: &Receipt) -> Result<(), QueueError> {
        self.deletes.submit(receipt.0.clone()).await
    }

    async fn delete_batch(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        for chunk in receipts.chunks(10) {
            let handles = chunk.iter().map(|r| r.0.clone()).collect();
            for result in delete_batch(&self.client, &self.url, handles).await {
                result?;
            }
        }
        Ok(())
    }

    async fn delay(&self, receipt: &Receipt, seconds: u32) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(&receipt.0)
            .visibility_timeout(seconds.min(43_200) as i32)
            .send()
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn dead_letter(
        &self,
        message: &QueueMessage,
        reason: &str,
        error: &str,
    ) -> Result<(), QueueError> {
        let body = String::from_utf8_lossy(&message.body).into_owned();
        let mut attributes = HashMap::new();
        for (k, v) in [
            ("reason", reason.to_owned()),
            ("error", error.to_owned()),
            ("receive_count", message.receive_count.to_string()),
            ("original_id", message.id.clone()),
        ] {
            if let Some(a) = text(&v) {
                attributes.insert(k.to_owned(), a);
            }
        }
        self.client
            .send_message()
            .queue_url(&self.dlq_url)
            .message_body(body)
            .set_message_attributes(Some(attributes))
            .send()
            .await
            .map_err(unavailable)?;
        self.delete(&message.receipt).await
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        use QueueAttributeName::{
            ApproximateNumberOfMessages as Visible, ApproximateNumberOfMessagesDelayed as Delayed,
            ApproximateNumberOfMessagesNotVisible as InFlight,
        };
        let (main, dlq) = tokio::try_join!(
            self.attributes(&self.url, &[Visible, InFlight, Delayed]),
            self.attributes(&self.dlq_url, &[Visible]),
        )?;
        let get = |m: &HashMap<QueueAttributeName, String>, k: &QueueAttributeName| {
            m.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        };
        Ok(QueueStats {
            visible: get(&main, &Visible),
            in_flight: get(&main, &InFlight),
            delayed: get(&main, &Delayed),
            dead_letters: get(&dlq, &Visible),
            oldest_age: None,
        })
    }

    fn max_message_bytes(&self) -> usize {
        MAX_MESSAGE_BYTES
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        self.approximate(
            &self.url,
            &[
                QueueAttributeName::ApproximateNumberOfMessages,
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                QueueAttributeName::ApproximateNumberOfMessagesDelayed,
            ],
        )
        .await
    }
}

impl SqsQueue {
    /// Sends `chosen` (received from the dead-letter queue) back to the
    /// queue, each then deleted there; how many.
    async fn move_back(
        &self,
        chosen: &[aws_sdk_sqs::types::Message],
        progress: Progress<'_>,
    ) -> Result<usize, QueueError> {
        let mut moved = 0;
        for m in chosen {
            let body = m.body.as_deref().unwrap_or_default();
            let body = crate::envelope::QueuedBody::redriven(body.as_bytes());
            self.client
                .send_message()
                .queue_url(&self.url)
                .message_body(String::from_utf8_lossy(&body))
                .send()
                .await
                .map_err(unavailable)?;
            if let Some(r) = &m.receipt_handle {
                self.client
                    .delete_message()
                    .queue_url(&self.dlq_url)
                    .receipt_handle(r)
                    .send()
                    .await
                    .map_err(unavailable)?;
            }
            moved += 1;
            progress(moved);
        }
        Ok(moved)
    }
}

#[async_trait]
impl DeadLetters for SqsQueue {
    /// Sent to the DLQ with the attributes a worker's dead letter has.
    async fn put_dead_letter(
        &self,
        id: &str,
        body: &[u8],
        reason: &str,
        error: &str,
    ) -> Result<(), QueueError> {
        let mut attributes = HashMap::new();
        for (k, v) in [
            ("reason", reason),
            ("error", error),
            ("receive_count", "0"),
            ("original_id", id),
        ] {
            if let Some(a) = text(v) {
                attributes.insert(k.to_owned(), a);
            }
        }
        self.client
            .send_message()
            .queue_url(&self.dlq_url)
            .message_body(String::from_utf8_lossy(body))
            .set_message_attributes(Some(attributes))
            .send()
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let messages = self.scan_dlq(limit, 5).await?;
        self.release(&messages).await;
        Ok(messages.iter().map(dead_letter).collect())
    }

    async fn redrive_with(
        &self,
        reason: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<usize, QueueError> {
        let chosen = self.take_dead_letters(reason).await?;
        self.move_back(&chosen, progress).await
    }

    async fn redrive_one(&self, id: &str) -> Result<bool, QueueError> {
        let chosen = self
            .take_dead_letters_where(|m| dead_letter(m).id == id)
            .await?;
        Ok(self.move_back(&chosen, &|_| {}).await? > 0)
    }

    async fn purge_dead_letters(
        &self,
        reason: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        let chosen = self.take_dead_letters(reason).await?;
        let mut purged = Vec::with_capacity(chosen.len());
        for chunk in chosen.chunks(10) {
            let receipts = chunk
                .iter()
                .filter_map(|m| m.receipt_handle.clone())
                .collect();
            let results = delete_batch(&self.client, &self.dlq_url, receipts).await;
            for (m, result) in chunk.iter().zip(results) {
                result?;
                purged.push(dead_letter(m));
            }
            progress(purged.len());
        }
        Ok(purged)
    }

    async fn dlq_depth(&self) -> Result<u64, QueueError> {
        self.approximate(
            &self.dlq_url,
            &[QueueAttributeName::ApproximateNumberOfMessages],
        )
        .await
    }
}
