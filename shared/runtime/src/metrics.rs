//! Prometheus metrics of one process, served as text on its admin listener.
//!
//! One [`Metrics`] per process, shared by the ingest and the workers it
//! runs: counters and histograms are updated where things happen; gauges
//! are sampled from the backend when `/metrics` is scraped
//! ([`Metrics::render`]). Label values are bounded: configured source names
//! (anything else is [`UNKNOWN_SOURCE`]), the fixed sets of outcomes and
//! dead-letter reasons, HTTP status codes and port operations, so a hostile
//! sender cannot grow the series.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::ports::CallCounter;
use crate::ports::{Ledger, ParkedCounts, Queue, PARKED_SCAN_LIMIT};

mod collectors;
mod deliveries;
use collectors::{AwsCalls, Sampled};

/// The `source` label of a request or message whose source is not configured.
pub const UNKNOWN_SOURCE: &str = "_unknown";

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    source: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    source: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    source: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabels {
    source: String,
    answer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    port: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: &'static str,
    state: &'static str,
}

/// Buckets for a histogram of seconds from `start`, doubling `count` times.
#[derive(Clone, Copy)]
struct Buckets {
    start: f64,
    count: u16,
}

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(self.start, 2.0, self.count))
    }
}

type Counters<L> = Family<L, Counter>;
type Histograms<L> = Family<L, Histogram, Buckets>;

/// Everything one process counts.
pub struct Metrics {
    registry: Registry,
    received: Counters<SourceLabels>,
    archived: Counters<SourceLabels>,
    enqueued: Counters<SourceLabels>,
    responses: Counters<StatusLabels>,
    ingest_seconds: Histograms<SourceLabels>,
    acknowledged: Counters<OutcomeLabels>,
    retries: Counters<SourceLabels>,
    dead_lettered: Counters<ReasonLabels>,
    status_queries: Counters<AnswerLabels>,
    verification_failures: Counters<ReasonLabels>,
    applied_seconds: Histograms<SourceLabels>,
    backend_errors: Counters<PortLabels>,
    backend_seconds: Histograms<PortLabels>,
    queue_messages: Family<QueueLabels, Gauge>,
    oldest_age: Arc<Sampled>,
    parked_overdue: Arc<Sampled>,
    parked_conflicted: Arc<Sampled>,
    sample_errors: Counters<PortLabels>,
    deliveries: deliveries::DeliveryMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// What `/metrics` samples from the backend at each scrape.
#[derive(Clone)]
pub struct Sampler {
    pub queue: Arc<dyn Queue>,
    /// For the parked-event gauges (left out when `None`).
    pub ledger: Option<Arc<dyn Ledger>>,
    /// A parked event older than this is overdue.
    pub parked_alert_secs: u64,
}

impl Metrics {
    /// A registry with every metric; `api_calls` adds the AWS call counters.
    pub fn new(api_calls: Option<Arc<dyn CallCounter>>) -> Arc<Self> {
        let latency = Buckets {
            start: 0.000_5,
            count: 16,
        };
        let mut registry = Registry::with_prefix("paynotify");
        let mut m = Self {
            received: Family::default(),
            archived: Family::default(),
            enqueued: Family::default(),
            responses: Family::default(),
            ingest_seconds: Family::new_with_constructor(latency),
            acknowledged: Family::default(),
            retries: Family::default(),
            dead_lettered: Family::default(),
            status_queries: Family::default(),
            verification_failures: Family::default(),
            applied_seconds: Family::new_with_constructor(Buckets {
                start: 0.001,
                count: 26,
            }),
            backend_errors: Family::default(),
            backend_seconds: Family::new_with_constructor(Buckets {
                start: 0.000_1,
                count: 18,
            }),
            queue_messages: Family::default(),
            oldest_age: Sampled::new(
                "queue_oldest_message_age_seconds",
                "Age of the oldest message in the queue, sampled at scrape (local backend; on SQS see CloudWatch ApproximateAgeOfOldestMessage)",
            ),
            parked_overdue: Sampled::new(
                "parked_events_overdue",
                "Events parked for longer than worker.parked_alert_secs (-1: unreadable)",
            ),
            parked_conflicted: Sampled::new(
                "parked_events_conflicted",
                "Parked events that contradict their payment (-1: unreadable)",
            ),
            sample_errors: Family::default(),
            deliveries: deliveries::DeliveryMetrics::register(&mut registry),
            registry,
        };
        let r = &mut m.registry;
        r.register(
            "worker_status_queries",
            "UnionPay status queries by answer (succeeded, failed, in_process, not_found, refused; rejected: the answer failed verification; error: no answer)",
            m.status_queries.clone(),
        );
        r.register(
            "ingest_received",
            "Notifications received for a configured source (body read)",
            m.received.clone(),
        );
        r.register(
            "ingest_archived",
            "Notifications durably archived",
            m.archived.clone(),
        );
        r.register(
            "ingest_enqueued",
            "Notifications archived and enqueued (answered with the success body)",
            m.enqueued.clone(),
        );
        r.register(
            "ingest_responses",
            "Ingest answers by HTTP status (source _unknown: not configured)",
            m.responses.clone(),
        );
        r.register(
            "ingest_duration_seconds",
            "From a request's arrival to its answer",
            m.ingest_seconds.clone(),
        );
        r.register(
            "worker_acknowledged",
            "Messages settled for good: applied, recorded, duplicate or parked",
            m.acknowledged.clone(),
        );
        r.register(
            "worker_retries",
            "Transient failures; the message is tried again later",
            m.retries.clone(),
        );
        r.register(
            "worker_dead_lettered",
            "Messages moved to the dead-letter queue, by reason",
            m.dead_lettered.clone(),
        );
        r.register(
            "verification_failures",
            "Notifications whose signature or content was rejected, by the failing step",
            m.verification_failures.clone(),
        );
        r.register(
            "receipt_to_applied_seconds",
            "From ingest receiving a notification to its effect in the ledger",
            m.applied_seconds.clone(),
        );
        r.register(
            "backend_errors",
            "Failed calls to the archive, queue and ledger",
            m.backend_errors.clone(),
        );
        r.register(
            "backend_call_duration_seconds",
            "Calls to the archive, queue and ledger (receive includes its long poll)",
            m.backend_seconds.clone(),
        );
        r.register(
            "queue_messages",
            "Messages in the queue and the dead-letter queue, sampled at scrape (-1: unreadable)",
            m.queue_messages.clone(),
        );
        r.register(
            "scrape_sample_errors",
            "Scrapes whose sample of a backend failed",
            m.sample_errors.clone(),
        );
        for sampled in [&m.oldest_age, &m.parked_overdue, &m.parked_conflicted] {
            r.register_collector(Box::new(sampled.clone()));
        }
        if let Some(calls) = api_calls {
            r.register_collector(Box::new(AwsCalls(calls)));
        }
        Arc::new(m)
    }

    /// A request for `source` (configured) has been read whole.
    pub fn received(&self, source: &str) {
        self.received.get_or_create(&source_labels(source)).inc();
    }

    /// A notification of `source` is durable in the archive.
    pub fn archived(&self, source: &str) {
        self.archived.get_or_create(&source_labels(source)).inc();
    }

    /// A notification of `source` is in the queue.
    pub fn enqueued(&self, source: &str) {
        self.enqueued.get_or_create(&source_labels(source)).inc();
    }

    /// Ingest answered `status` after `elapsed`; `source` is
    /// [`UNKNOWN_SOURCE`] when it is not configured.
    pub fn responded(&self, source: &str, status: u16, elapsed: Duration) {
        self.responses
            .get_or_create(&StatusLabels {
                source: source.to_owned(),
                status,
            })
            .inc();
        self.ingest_seconds
            .get_or_create(&source_labels(source))
            .observe(elapsed.as_secs_f64());
    }

    /// A message was settled for good (`applied`, `recorded`, `duplicate`,
    /// `parked`).
    pub fn acknowledged(&self, source: &str, outcome: &'static str) {
        self.acknowledged
            .get_or_create(&OutcomeLabels {
                source: source.to_owned(),
                outcome,
            })
            .inc();
    }

    /// A transient failure: the message will be tried again.
    pub fn retried(&self, source: &str) {
        self.retries.get_or_create(&source_labels(source)).inc();
    }

    /// A status query to `source` got `answer`.
    pub fn status_query(&self, source: &str, answer: &str) {
        self.status_queries
            .get_or_create(&AnswerLabels {
                source: source.to_owned(),
                answer: answer.to_owned(),
            })
            .inc();
    }

    /// A message went to the dead-letter queue with `reason`.
    pub fn dead_lettered(&self, source: &str, reason: &str) {
        self.dead_lettered
            .get_or_create(&ReasonLabels {
                source: source.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Verification rejected a notification at `reason` (the error's name).
    pub fn verification_failed(&self, source: &str, reason: &str) {
        self.verification_failures
            .get_or_create(&ReasonLabels {
                source: source.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// A notification changed the ledger `latency` after ingest received it.
    pub fn applied_after(&self, source: &str, latency: Duration) {
        self.applied_seconds
            .get_or_create(&source_labels(source))
            .observe(latency.as_secs_f64());
    }

    /// One call to a port: how long it took and whether it failed.
    pub fn backend_call(
        &self,
        port: &'static str,
        operation: &'static str,
        elapsed: Duration,
        ok: bool,
    ) {
        let labels = PortLabels { port, operation };
        self.backend_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.backend_errors.get_or_create(&labels).inc();
        }
    }

    /// Samples the queue and the parked events, then renders every metric
    /// in the Prometheus text format.
    pub async fn render(&self, sampler: Option<&Sampler>) -> String {
        if let Some(s) = sampler {
            self.sample(s).await;
        }
        let mut out = String::new();
        // Writing into a String does not fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    async fn sample(&self, s: &Sampler) {
        let now = time::OffsetDateTime::now_utc();
        let parked = async {
            match &s.ledger {
                Some(l) => Some(l.parked_before(now, PARKED_SCAN_LIMIT).await),
                None => None,
            }
        };
        let (stats, parked) = tokio::join!(s.queue.stats(), parked);
        let set = |queue, state, v: i64| {
            self.queue_messages
                .get_or_create(&QueueLabels { queue, state })
                .set(v);
        };
        match stats {
            Ok(q) => {
                set("main", "visible", q.visible as i64);
                set("main", "in_flight", q.in_flight as i64);
                set("main", "delayed", q.delayed as i64);
                set("dead_letter", "visible", q.dead_letters as i64);
                self.oldest_age.set(q.oldest_age.map(|a| a.as_secs_f64()));
            }
            Err(_) => {
                for (queue, state) in [
                    ("main", "visible"),
                    ("main", "in_flight"),
                    ("main", "delayed"),
                    ("dead_letter", "visible"),
                ] {
                    set(queue, state, -1);
                }
                self.sample_errors
                    .get_or_create(&PortLabels {
                        port: "queue",
                        operation: "stats",
                    })
                    .inc();
            }
        }
        match parked {
            None => {}
            Some(Ok(parked)) => {
                let counts = ParkedCounts::of(&parked, now, s.parked_alert_secs);
                self.parked_overdue.set(Some(counts.overdue as f64));
                self.parked_conflicted.set(Some(counts.conflicted as f64));
            }
            Some(Err(_)) => {
                self.parked_overdue.set(Some(-1.0));
                self.parked_conflicted.set(Some(-1.0));
                self.sample_errors
                    .get_or_create(&PortLabels {
                        port: "ledger",
                        operation: "parked_before",
                    })
                    .inc();
            }
        }
    }
}

fn source_labels(source: &str) -> SourceLabels {
    SourceLabels {
        source: source.to_owned(),
    }
}
