//! The archive and the queue with faults.

use super::*;

/// An archive with faults.
pub struct FaultyArchive {
    pub inner: Arc<dyn Archive>,
    pub faults: Arc<Faults>,
}

#[async_trait]
impl Archive for FaultyArchive {
    fn fatal(&self) -> Option<String> {
        self.faults.fatal().or_else(|| self.inner.fatal())
    }

    async fn put(&self, key: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        faulty!(
            self,
            "put",
            ArchiveError::Unavailable,
            self.inner.put(key, bytes)
        )
    }
    async fn get(&self, key: &str) -> Result<Vec<u8>, ArchiveError> {
        faulty!(self, "get", ArchiveError::Unavailable, self.inner.get(key))
    }
    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<u8>, ArchiveError> {
        faulty!(
            self,
            "get",
            ArchiveError::Unavailable,
            self.inner.get_range(key, offset, length)
        )
    }
    async fn list(
        &self,
        prefix: &str,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
    ) -> Result<Vec<String>, ArchiveError> {
        faulty!(
            self,
            "list",
            ArchiveError::Unavailable,
            self.inner.list(prefix, from, to)
        )
    }
}

/// A queue with faults.
pub struct FaultyQueue {
    pub inner: Arc<dyn Queue>,
    pub faults: Arc<Faults>,
}

#[async_trait]
impl Queue for FaultyQueue {
    fn fatal(&self) -> Option<String> {
        self.faults.fatal().or_else(|| self.inner.fatal())
    }

    async fn send(&self, body: &[u8]) -> Result<String, QueueError> {
        faulty!(self, "send", QueueError::Unavailable, self.inner.send(body))
    }
    async fn send_batch(&self, bodies: &[Vec<u8>]) -> Result<Vec<String>, QueueError> {
        faulty!(
            self,
            "send",
            QueueError::Unavailable,
            self.inner.send_batch(bodies)
        )
    }
    async fn send_delayed(&self, body: &[u8], seconds: u32) -> Result<String, QueueError> {
        faulty!(
            self,
            "send",
            QueueError::Unavailable,
            self.inner.send_delayed(body, seconds)
        )
    }
    fn max_delay_secs(&self) -> u32 {
        self.inner.max_delay_secs()
    }
    fn max_message_bytes(&self) -> usize {
        match self.faults.max_message_bytes.load(Ordering::SeqCst) {
            0 => self.inner.max_message_bytes(),
            n => self.inner.max_message_bytes().min(n as usize),
        }
    }
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<QueueMessage>, QueueError> {
        faulty!(
            self,
            "receive",
            QueueError::Unavailable,
            self.inner.receive(max, wait)
        )
    }
    async fn delete(&self, receipt: &Receipt) -> Result<(), QueueError> {
        faulty!(
            self,
            "delete",
            QueueError::Unavailable,
            self.inner.delete(receipt)
        )
    }
    async fn delete_batch(&self, receipts: &[Receipt]) -> Result<(), QueueError> {
        faulty!(
            self,
            "delete",
            QueueError::Unavailable,
            self.inner.delete_batch(receipts)
        )
    }
    async fn delay(&self, receipt: &Receipt, seconds: u32) -> Result<(), QueueError> {
        faulty!(
            self,
            "delay",
            QueueError::Unavailable,
            self.inner.delay(receipt, seconds)
        )
    }
    async fn dead_letter(
        &self,
        message: &QueueMessage,
        reason: &str,
        error: &str,
    ) -> Result<(), QueueError> {
        faulty!(
            self,
            "dead_letter",
            QueueError::Unavailable,
            self.inner.dead_letter(message, reason, error)
        )
    }
    async fn dlq_list(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        faulty!(
            self,
            "dlq_list",
            QueueError::Unavailable,
            self.inner.dlq_list(limit)
        )
    }
    async fn redrive_with(
        &self,
        reason: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<usize, QueueError> {
        faulty!(
            self,
            "redrive",
            QueueError::Unavailable,
            self.inner.redrive_with(reason, progress)
        )
    }
    async fn purge_dead_letters(
        &self,
        reason: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        faulty!(
            self,
            "purge",
            QueueError::Unavailable,
            self.inner.purge_dead_letters(reason, progress)
        )
    }
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        faulty!(self, "stats", QueueError::Unavailable, self.inner.stats())
    }
    async fn depth(&self) -> Result<u64, QueueError> {
        let depth: Result<u64, QueueError> =
            faulty!(self, "depth", QueueError::Unavailable, self.inner.depth());
        match depth {
            Ok(_) if self.faults.misses_depth() => Ok(0),
            other => other,
        }
    }
    async fn dlq_depth(&self) -> Result<u64, QueueError> {
        faulty!(
            self,
            "dlq_depth",
            QueueError::Unavailable,
            self.inner.dlq_depth()
        )
    }
}
