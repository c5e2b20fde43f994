//! `[backend]`: which implementation of the ports, and the AWS resources.

use super::*;

/// The most shards the local queue may be split into (`backend.queue_shards`).
pub const MAX_QUEUE_SHARDS: usize = 64;

/// Which implementation of the ports to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// A data directory: archive files and SQLite queue and ledger.
    #[default]
    Local,
    /// S3, SQS and DynamoDB (`[backend.aws]`).
    Aws,
}

/// Server-side encryption requested for every archived object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Sse {
    /// SSE-KMS, with `kms_key_id` or the account's `aws/s3` key.
    #[default]
    #[serde(rename = "aws:kms")]
    Kms,
    /// SSE-S3.
    #[serde(rename = "AES256")]
    Aes256,
}

/// The AWS backend's resources.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    pub region: String,
    /// An emulator or VPC endpoint; the standard endpoints when absent.
    pub endpoint_url: Option<String>,
    pub bucket: String,
    /// Queue names (URLs are looked up).
    pub queue: String,
    pub dead_letter_queue: String,
    /// The FIFO queue of outgoing events to the merchant's webhook
    /// endpoints (`deliveries.endpoints`), fed by the events function from
    /// the ledger's stream and emptied by the workers' sender
    /// (docs/events.md#webhooks-on-aws).
    pub webhooks_queue: String,
    pub table: String,
    pub sse: Sse,
    pub kms_key_id: Option<String>,
    /// How long concurrent sends wait to share one `SendMessageBatch` (10 ms:
    /// ≤ 0.2 calls per notification at ≈ 700/s, BENCHMARKS.md).
    pub send_batch_window_ms: u64,
    /// How often certificates from Secrets Manager are read again.
    pub secrets_refresh_secs: u64,
    /// One HTTP attempt of an AWS call gives up after this long (the SDK
    /// sets no limit: a reply that never comes would hold a segment writer
    /// or a receive loop forever). A long-polling receive gets its wait on
    /// top.
    pub attempt_timeout_ms: u64,
    /// An AWS call with all its retries gives up after this long (a
    /// long-polling receive gets its wait on top). Below
    /// `ingest.store_deadline_ms`, so ingest answers 503 from a failed call
    /// rather than from its own deadline.
    pub operation_timeout_ms: u64,
    /// Appends every AWS call this process makes (its IAM actions and the
    /// resources they name, the HTTP status; never a payload) to this file
    /// as JSON lines: what a role needs (`infra/tests/test_iam.py` checks
    /// the stack's policies against such logs). Unset: not written.
    pub call_log: Option<PathBuf>,
    /// Whether `paynotify init` gives the ledger table its stream
    /// (`NEW_AND_OLD_IMAGES`), the outbox the events function reads
    /// (`docs/events.md#on-aws`). The data stack always does. Off only where
    /// nothing reads it: the emulator slows every write of a table with a
    /// stream.
    pub ledger_stream: bool,
    /// The most items one `Scan` page of a payment search reads
    /// (DynamoDB's `Limit`). Unset: DynamoDB's own 1 MB pages. Only for
    /// tests of the paging, which an emulator's small tables never reach.
    pub search_page_items: Option<u32>,
    /// Whether a payment's item names the merchant's order for the table's
    /// `orders` index (payments by order id, and `order_id` in the stream's
    /// outgoing events). Off, a payment created costs one index write less
    /// (BENCHMARKS.md, "Payments by the merchant's order id"), and lookups
    /// by order id are refused.
    pub order_index: bool,
}

impl Default for AwsConfig {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            endpoint_url: None,
            bucket: "paynotify-archive".into(),
            queue: "paynotify".into(),
            dead_letter_queue: "paynotify-dlq".into(),
            webhooks_queue: "paynotify-webhooks.fifo".into(),
            table: "paynotify-ledger".into(),
            sse: Sse::Kms,
            kms_key_id: None,
            send_batch_window_ms: 10,
            secrets_refresh_secs: 300,
            attempt_timeout_ms: 2_000,
            operation_timeout_ms: 4_500,
            call_log: None,
            ledger_stream: true,
            search_page_items: None,
            order_index: true,
        }
    }
}

/// Where archive, queue and ledger live, and the queue's semantics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    pub kind: BackendKind,
    /// Data directory of the local backend.
    pub data_dir: PathBuf,
    /// How long a received message stays invisible before redelivery.
    pub visibility_timeout_secs: u32,
    /// Receives before a message goes to the dead-letter queue.
    pub max_receives: u32,
    /// Local backend: SQLite files the queue is split into, each with its
    /// own writer thread, so that ingest and workers on many cores do not
    /// wait on one writer. Unset: the machine's cores, at most 8.
    pub queue_shards: Option<usize>,
    pub aws: AwsConfig,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            kind: BackendKind::Local,
            data_dir: PathBuf::from("paynotify-data"),
            visibility_timeout_secs: 30,
            max_receives: 8,
            queue_shards: None,
            aws: AwsConfig::default(),
        }
    }
}
