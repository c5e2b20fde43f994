//! One typed configuration: defaults, then the TOML file, then `PAYNOTIFY__*`
//! environment variables (`PAYNOTIFY__SOURCES__UNIONPAY__SUCCESS_BODY=ok`).
//! Keys and certificates are only ever references ([`SecretRef`](crate::secret::SecretRef)).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod deliveries;

pub use deliveries::{DeliveriesConfig, EndpointConfig, SinkConfig, SinkKind};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use paynotify_schemes::SchemeSettings;
use serde::Deserialize;

pub use paynotify_schemes::adyen::{AdyenConfig, CaptureMode};
pub use paynotify_schemes::standard_webhooks::{
    EventPointers, MappedEvent, StandardWebhooksConfig,
};
pub use paynotify_schemes::stripe::StripeConfig;
pub use paynotify_schemes::unionpay::{GatewayConfig, UnionPayConfig, UNIONPAY_IDENTITY};

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("configuration: source {source_name:?}: {why}")]
    Source { source_name: String, why: String },
    #[error("configuration: unknown source {0:?}")]
    UnknownSource(String),
    #[error("configuration: {0}")]
    Setting(String),
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub backend: BackendConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    /// PSP endpoints by name: `POST /notify/{name}`.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Where every ledger transition is delivered (docs/events.md).
    #[serde(default)]
    pub deliveries: DeliveriesConfig,
}

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
}

impl Default for AwsConfig {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            endpoint_url: None,
            bucket: "paynotify-archive".into(),
            queue: "paynotify".into(),
            dead_letter_queue: "paynotify-dlq".into(),
            table: "paynotify-ledger".into(),
            sse: Sse::Kms,
            kms_key_id: None,
            send_batch_window_ms: 10,
            secrets_refresh_secs: 300,
            attempt_timeout_ms: 2_000,
            operation_timeout_ms: 4_500,
            call_log: None,
            ledger_stream: true,
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

/// The HTTP ingest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Where PSPs POST notifications.
    pub listen: String,
    /// `/healthz`, `/readyz`, `/metrics`; keep it off the public network.
    pub admin_listen: String,
    /// Larger bodies get 413.
    pub max_body_bytes: usize,
    /// A client must send its whole body within this time (else 408).
    pub read_timeout_ms: u64,
    /// A notification must be archived and enqueued within this long after
    /// its body was read, else 503 (the PSP sends it again; what was
    /// stored meanwhile makes that a duplicate). Above the AWS backend's
    /// `operation_timeout_ms`, below the load balancer's idle timeout.
    pub store_deadline_ms: u64,
    /// A client must send a whole request head within this time, and a
    /// keep-alive connection is closed after this long without a request;
    /// the connection is closed without an answer.
    pub header_read_timeout_ms: u64,
    /// Connections open at once on the public listener; more are closed as
    /// they are accepted.
    pub max_connections: usize,
    /// Request bodies held at once, in bytes (declared by `Content-Length`,
    /// or `max_body_bytes` for a body without one), from before a body is
    /// read until it is stored: a request past it is answered 503 unread.
    /// Bodies over 64 KiB may take three quarters of it, so a flood of
    /// large bodies leaves room for notifications (a few KiB each). Each
    /// byte held costs up to about three in memory (the body, its envelope,
    /// the segment); size it to a third of what the task may use beyond
    /// its baseline.
    pub max_inflight_bytes: usize,
    /// After SIGTERM, requests in flight get this long to finish before
    /// their connections are closed (below ECS's 30 s stop timeout).
    pub drain_secs: u64,
    /// Archive segments: notifications of one source and hour received
    /// within this window are archived as one object (one `PutObject`).
    /// Every notification waits up to this long more for its 200; 0 groups
    /// only what arrives while the segment writers are busy. Unset: 1 ms on
    /// the local backend, 50 ms on AWS (where each object is a billed
    /// request and the put itself takes tens of milliseconds).
    pub segment_window_ms: Option<u64>,
    /// Whether a group skips the window when no segment is being written:
    /// nothing would be waited behind, and under load a put is always in
    /// flight, so the window still gathers the groups there. Unset: on for
    /// the local backend, off on AWS (where, at low rates, it would save
    /// the 50 ms window and cost a `PutObject` per notification).
    pub segment_seal_when_idle: Option<bool>,
    /// A segment is written once it holds this many notifications…
    pub segment_max_records: usize,
    /// …or this many bytes, whichever comes first.
    pub segment_max_bytes: usize,
    /// Segments being written at once; more wait (and keep filling).
    /// Unset: on the local backend one per core, 4 to 16 (each is an
    /// `fdatasync`); 16 on AWS.
    pub segment_writers: Option<usize>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            max_body_bytes: 1 << 20,
            read_timeout_ms: 10_000,
            store_deadline_ms: 5_000,
            header_read_timeout_ms: 10_000,
            max_connections: 10_000,
            max_inflight_bytes: 64 << 20,
            drain_secs: 20,
            segment_window_ms: None,
            segment_seal_when_idle: None,
            segment_max_records: 1_000,
            segment_max_bytes: 8 << 20,
            segment_writers: None,
        }
    }
}

/// The queue workers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Receive loops; each processes up to `receive_batch` messages at once.
    pub concurrency: usize,
    /// Messages taken per receive (1..=10).
    pub receive_batch: usize,
    /// Long-poll wait of one receive.
    pub receive_wait_ms: u64,
    /// First retry delay; later ones grow exponentially with jitter.
    pub retry_min_delay_ms: u64,
    pub retry_max_delay_secs: u64,
    /// How long a transient failure (backend error, throttling) is retried,
    /// however many receives that takes, before it is dead-lettered as
    /// `retries_exhausted`.
    pub retry_for_secs: u64,
    /// A parked event older than this is reported by `reconcile` and
    /// `/metrics` (`paynotify_parked_events_overdue`).
    pub parked_alert_secs: u64,
    /// How often the workers read the parked events and log a warning when
    /// some are overdue or conflicted (what the stack's alarm counts).
    pub parked_check_secs: u64,
    /// How often a worker looks for UnionPay status queries that are due
    /// (sources with a `gateway` and `auto_query`).
    pub query_check_secs: u64,
    /// `/healthz`, `/readyz`, `/metrics` of `paynotify-worker` (a process
    /// that runs ingest too serves them on `ingest.admin_listen`).
    pub admin_listen: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            receive_batch: 10,
            receive_wait_ms: 1000,
            retry_min_delay_ms: 1000,
            retry_max_delay_secs: 300,
            retry_for_secs: 6 * 3600,
            parked_alert_secs: 24 * 3600,
            parked_check_secs: 300,
            query_check_secs: 30,
            admin_listen: "127.0.0.1:9091".into(),
        }
    }
}

/// A PSP signature scheme. Unknown schemes fail at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemeKind {
    Unionpay,
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`), the event read through configured JSON pointers.
    StandardWebhooks,
    /// Stripe (`Stripe-Signature: t=…,v1=…`).
    Stripe,
    /// Adyen standard notifications (an HMAC per `NotificationRequestItem`).
    Adyen,
}

/// One notification source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub scheme: SchemeKind,
    /// Merchant ids (`merId`) accepted from this source.
    pub merchants: Vec<String>,
    /// Body of the 200 answer the PSP expects; by default `ok` for UnionPay,
    /// `[accepted]` for Adyen (which it requires), empty for Stripe and
    /// Standard Webhooks (any 2xx will do).
    #[serde(default)]
    pub success_body: Option<String>,
    pub unionpay: Option<UnionPayConfig>,
    pub standard_webhooks: Option<StandardWebhooksConfig>,
    pub stripe: Option<StripeConfig>,
    pub adyen: Option<AdyenConfig>,
}

impl SourceConfig {
    /// The settings table of this source's scheme: the one place that knows
    /// which table each scheme reads (a new PSP adds one line here).
    ///
    /// # Errors
    /// The table is missing, in words.
    pub fn settings(&self) -> Result<&dyn SchemeSettings, String> {
        fn table<'a, T: SchemeSettings>(
            t: &'a Option<T>,
            name: &str,
        ) -> Result<&'a dyn SchemeSettings, String> {
            t.as_ref()
                .map(|t| t as &dyn SchemeSettings)
                .ok_or_else(|| format!("scheme \"{name}\" needs a [sources.NAME.{name}] table"))
        }
        match self.scheme {
            SchemeKind::Unionpay => table(&self.unionpay, "unionpay"),
            SchemeKind::StandardWebhooks => table(&self.standard_webhooks, "standard_webhooks"),
            SchemeKind::Stripe => table(&self.stripe, "stripe"),
            SchemeKind::Adyen => table(&self.adyen, "adyen"),
        }
    }

    /// The body of the 200 answer.
    pub fn success_body(&self) -> &str {
        match (&self.success_body, self.settings()) {
            (Some(body), _) => body,
            (None, Ok(settings)) => settings.default_success_body(),
            (None, Err(_)) => "",
        }
    }
}

impl Config {
    /// Loads `path`, applies `PAYNOTIFY__*` overrides, resolves relative
    /// `file:` references against the file's directory and validates.
    ///
    /// # Errors
    /// [`ConfigError`] naming the offending key or source.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let figment = Figment::new()
            .merge(Toml::file_exact(path))
            .merge(Env::prefixed("PAYNOTIFY__").split("__"));
        let mut config: Config = figment.extract().map_err(Box::new)?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        config.resolve(&base);
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML string (no environment overrides); relative paths are
    /// resolved against `base`.
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn from_toml(toml: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = Figment::new()
            .merge(Toml::string(toml))
            .extract()
            .map_err(Box::new)?;
        config.resolve(base);
        config.validate()?;
        Ok(config)
    }

    /// The source called `name`.
    ///
    /// # Errors
    /// `UnknownSource`.
    pub fn source(&self, name: &str) -> Result<&SourceConfig, ConfigError> {
        self.sources
            .get(name)
            .ok_or_else(|| ConfigError::UnknownSource(name.to_owned()))
    }

    fn resolve(&mut self, base: &Path) {
        if self.backend.data_dir.is_relative() {
            self.backend.data_dir = base.join(&self.backend.data_dir);
        }
        for e in &mut self.deliveries.endpoints {
            for r in &mut e.secrets {
                *r = r.relative_to(base);
            }
        }
        for source in self.sources.values_mut() {
            if let Some(up) = source.unionpay.as_mut() {
                up.root_cert = up.root_cert.relative_to(base);
                up.middle_cert = up.middle_cert.relative_to(base);
                for c in &mut up.verify_certs {
                    *c = c.relative_to(base);
                }
                if let Some(g) = up.gateway.as_mut() {
                    g.signing_key = g.signing_key.relative_to(base);
                    for r in g
                        .signing_cert
                        .iter_mut()
                        .chain(g.signing_key_password.iter_mut())
                    {
                        *r = r.relative_to(base);
                    }
                }
            }
            if let Some(sw) = source.standard_webhooks.as_mut() {
                for r in sw.secrets.iter_mut().chain(sw.public_keys.iter_mut()) {
                    *r = r.relative_to(base);
                }
            }
            if let Some(stripe) = source.stripe.as_mut() {
                for r in &mut stripe.secrets {
                    *r = r.relative_to(base);
                }
            }
            if let Some(adyen) = source.adyen.as_mut() {
                for r in &mut adyen.hmac_keys {
                    *r = r.relative_to(base);
                }
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self
            .backend
            .queue_shards
            .is_some_and(|n| n == 0 || n > crate::backend::local::MAX_QUEUE_SHARDS)
        {
            return Err(ConfigError::Setting(format!(
                "backend.queue_shards is 1 to {}",
                crate::backend::local::MAX_QUEUE_SHARDS
            )));
        }
        self.deliveries.validate().map_err(ConfigError::Setting)?;
        let i = &self.ingest;
        if i.segment_max_records == 0 || i.segment_writers == Some(0) {
            return Err(ConfigError::Setting(
                "ingest.segment_max_records and ingest.segment_writers must be positive".into(),
            ));
        }
        if i.max_inflight_bytes / 4 * 3 < i.max_body_bytes {
            // A body of the largest size must fit the share large bodies take.
            return Err(ConfigError::Setting(format!(
                "ingest.max_inflight_bytes ({}) must be at least 4/3 of ingest.max_body_bytes ({})",
                i.max_inflight_bytes, i.max_body_bytes
            )));
        }
        if i.segment_window_ms.is_some_and(|w| w > 1_000) {
            // Every notification waits for its segment: a PSP's timeout is seconds.
            return Err(ConfigError::Setting(
                "ingest.segment_window_ms is at most 1000".into(),
            ));
        }
        for (name, source) in &self.sources {
            let bad = |why: &str| ConfigError::Source {
                source_name: name.clone(),
                why: why.to_owned(),
            };
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad("source names are letters, digits, '-' and '_'"));
            }
            if source.merchants.is_empty() {
                return Err(bad(
                    "`merchants` is empty: no notification could ever be accepted",
                ));
            }
            let settings = source.settings().map_err(|why| bad(&why))?;
            settings.check().map_err(|why| bad(&why))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretRef;

    const TOML: &str = r#"
        [sources.unionpay]
        scheme = "unionpay"
        merchants = ["777290058167151"]
        [sources.unionpay.unionpay]
        root_cert = "file:certs/root.pem"
        middle_cert = "file:/etc/middle.pem"
    "#;

    #[test]
    fn loads_defaults_and_resolves_paths() {
        let c = Config::from_toml(TOML, Path::new("/cfg")).unwrap();
        let s = c.source("unionpay").unwrap();
        assert_eq!(s.success_body(), "ok");
        let up = s.unionpay.as_ref().unwrap();
        assert_eq!(up.identity, UNIONPAY_IDENTITY);
        assert_eq!(up.root_cert, SecretRef::File("/cfg/certs/root.pem".into()));
        assert_eq!(up.middle_cert, SecretRef::File("/etc/middle.pem".into()));
        assert!(matches!(
            c.source("nope"),
            Err(ConfigError::UnknownSource(_))
        ));
    }

    #[test]
    fn rejects_inline_certs_unknown_schemes_and_keys() {
        let inline = TOML.replace("file:certs/root.pem", "-----BEGIN CERTIFICATE-----");
        assert!(Config::from_toml(&inline, Path::new("/"))
            .unwrap_err()
            .to_string()
            .contains("inline"));
        let scheme = TOML.replace("scheme = \"unionpay\"", "scheme = \"paypal\"");
        assert!(Config::from_toml(&scheme, Path::new("/")).is_err());
        let typo = TOML.replace("merchants", "merchant");
        assert!(Config::from_toml(&typo, Path::new("/")).is_err());
        let empty = TOML.replace("[\"777290058167151\"]", "[]");
        assert!(Config::from_toml(&empty, Path::new("/")).is_err());
    }

    #[test]
    fn segment_settings_are_bounded() {
        let c = Config::from_toml(TOML, Path::new("/")).unwrap();
        assert_eq!(
            (c.ingest.segment_window_ms, c.ingest.segment_writers),
            (None, None),
            "unset: the backend's defaults apply"
        );
        for bad in [
            "segment_window_ms = 1001",
            "segment_writers = 0",
            "segment_max_records = 0",
        ] {
            let toml = format!("[ingest]\n{bad}\n{TOML}");
            let e = Config::from_toml(&toml, Path::new("/")).unwrap_err();
            assert!(matches!(e, ConfigError::Setting(_)), "{bad}: {e}");
        }
        let toml = format!("[ingest]\nsegment_window_ms = 1000\nsegment_writers = 2\n{TOML}");
        let c = Config::from_toml(&toml, Path::new("/")).unwrap();
        assert_eq!(
            (c.ingest.segment_window_ms, c.ingest.segment_writers),
            (Some(1000), Some(2))
        );
    }

    #[test]
    fn queue_shards_are_bounded() {
        let c = Config::from_toml(TOML, Path::new("/")).unwrap();
        assert_eq!(
            c.backend.queue_shards, None,
            "unset: one per core, at most 8"
        );
        for bad in [0, 65] {
            let toml = format!("[backend]\nqueue_shards = {bad}\n{TOML}");
            let e = Config::from_toml(&toml, Path::new("/")).unwrap_err();
            assert!(matches!(e, ConfigError::Setting(_)), "{bad}: {e}");
        }
        let toml = format!("[backend]\nqueue_shards = 64\n{TOML}");
        let c = Config::from_toml(&toml, Path::new("/")).unwrap();
        assert_eq!(c.backend.queue_shards, Some(64));
        assert!((1..=8).contains(&crate::backend::local::default_queue_shards()));
    }

    const SW: &str = r#"
        [sources.acme]
        scheme = "standard_webhooks"
        merchants = ["m"]
        [sources.acme.standard_webhooks]
        secrets = ["file:acme.whsec", "secretsmanager:arn:aws:secretsmanager:eu-west-1:1:secret:s#new"]
        [sources.acme.standard_webhooks.fields]
        event_type = "/type"
        payment_ref = "/data/payment"
        amount = "/data/amount"
        currency = "/data/currency"
        [sources.acme.standard_webhooks.events]
        "payment.succeeded" = "payment"
        "refund.failed" = "refund_failed"
        "capture.waiting" = "capture_pending"
    "#;

    #[test]
    fn standard_webhooks_sources_take_references_and_an_event_map() {
        use crate::event::{EventKind, EventOutcome};
        let c = Config::from_toml(SW, Path::new("/cfg")).unwrap();
        let sw = c
            .source("acme")
            .unwrap()
            .standard_webhooks
            .as_ref()
            .unwrap();
        assert_eq!(sw.secrets[0], SecretRef::File("/cfg/acme.whsec".into()));
        assert_eq!(sw.tolerance_secs, 300);
        assert_eq!(c.source("acme").unwrap().success_body(), "");
        assert_eq!(
            sw.events["refund.failed"],
            MappedEvent {
                kind: EventKind::Refund,
                outcome: EventOutcome::Failed
            }
        );
        assert_eq!(sw.events["capture.waiting"].outcome, EventOutcome::Pending);
        // An inline secret, an unknown kind, no keys at all, no table.
        for (from, to) in [
            ("file:acme.whsec", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            ("\"refund_failed\"", "\"chargeback\""),
        ] {
            assert!(
                Config::from_toml(&SW.replace(from, to), Path::new("/")).is_err(),
                "{to}"
            );
        }
        let no_keys = SW.replace(
            "secrets = [\"file:acme.whsec\", \"secretsmanager:arn:aws:secretsmanager:eu-west-1:1:secret:s#new\"]",
            "",
        );
        assert!(Config::from_toml(&no_keys, Path::new("/")).is_err());
        let no_table = "[sources.acme]\nscheme = \"standard_webhooks\"\nmerchants = [\"m\"]\n";
        assert!(Config::from_toml(no_table, Path::new("/")).is_err());
    }
}
