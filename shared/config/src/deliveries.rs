//! `[deliveries]`: the merchant's endpoints that hear every ledger
//! transition (docs/events.md), and how the deliverer retries them.

use std::collections::BTreeSet;

use serde::Deserialize;

use paynotify_model::outgoing::EventType;
use paynotify_schemes::secret::SecretRef;

/// Outgoing events and where they go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveriesConfig {
    /// Seconds after each failed attempt before the next; when they are
    /// used up the delivery is dead-lettered. Svix's schedule by default:
    /// 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (eight attempts).
    pub retry_schedule_secs: Vec<u64>,
    /// An endpoint whose every attempt has failed for this long is
    /// disabled: nothing more is sent to it until `deliveries enable`, and
    /// its events wait (five days, as Svix).
    pub disable_after_secs: u64,
    /// How often the deliverer looks for new events and due retries.
    pub poll_ms: u64,
    /// Deliveries in flight at once, per endpoint.
    pub concurrency: usize,
    /// AWS: how long the webhook line's sender waits for a message (SQS
    /// long polling, at most 20 s; 0 polls every `poll_ms`).
    pub line_wait_secs: u64,
    pub endpoints: Vec<EndpointConfig>,
    /// AWS destinations, fed from the ledger table's stream by the events
    /// function (AWS backend only).
    pub sinks: Vec<SinkConfig>,
}

impl Default for DeliveriesConfig {
    fn default() -> Self {
        Self {
            retry_schedule_secs: vec![5, 300, 1800, 7200, 18_000, 36_000, 36_000],
            disable_after_secs: 5 * 24 * 3600,
            poll_ms: 200,
            concurrency: 32,
            line_wait_secs: 10,
            endpoints: Vec::new(),
            sinks: Vec::new(),
        }
    }
}

/// One of the merchant's endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Its name in `deliveries` commands, metrics and logs.
    pub name: String,
    /// An `https://` URL (`http://` only with `allow_insecure_http`).
    pub url: String,
    /// `whsec_…` secrets: each request is signed with every one (while a
    /// secret rotates, receivers accept either).
    pub secrets: Vec<SecretRef>,
    /// Only these types (all when empty).
    #[serde(default)]
    pub event_types: BTreeSet<EventType>,
    /// Only events of these sources (all when empty).
    #[serde(default)]
    pub sources: BTreeSet<String>,
    /// Only events of these merchants (all when empty).
    #[serde(default)]
    pub merchants: BTreeSet<String>,
    /// Connecting and the whole answer must each finish in this time.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// At most this many requests a second to this endpoint.
    #[serde(default = "default_rate")]
    pub max_requests_per_sec: u32,
    /// Allows `http://` URLs (a receiver on loopback in tests and demos).
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Allows loopback, private (RFC 1918, ULA) and link-local addresses;
    /// the cloud metadata addresses stay refused.
    #[serde(default)]
    pub allow_private_addresses: bool,
}

/// What kind of AWS destination a sink is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// An SQS queue, by URL. A FIFO queue (`….fifo`) gets each payment's
    /// events in order (message group = payment key) and drops a resend
    /// within five minutes (deduplication id = event id); a standard queue
    /// gets them at least once, in no order.
    Sqs,
    /// An SNS topic, by ARN. A FIFO topic (`….fifo`) is ordered and
    /// deduplicated as a FIFO queue is.
    Sns,
    /// An EventBridge event bus, by name or ARN: `source` is `paynotify`,
    /// `detail-type` the event's type, `detail` the event. At least once,
    /// in no order (EventBridge keeps none).
    Eventbridge,
}

/// One of the merchant's AWS destinations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Its name in logs and metrics.
    pub name: String,
    pub kind: SinkKind,
    /// The queue URL, topic ARN, or event bus name or ARN.
    pub target: String,
    /// Only these types (all when empty).
    #[serde(default)]
    pub event_types: BTreeSet<EventType>,
    /// Only events of these sources (all when empty).
    #[serde(default)]
    pub sources: BTreeSet<String>,
    /// Only events of these merchants (all when empty).
    #[serde(default)]
    pub merchants: BTreeSet<String>,
}

impl SinkConfig {
    /// Whether an event of `event_type` about a payment of `source` and
    /// `merchant` goes to this sink.
    pub fn wants(&self, event_type: EventType, source: &str, merchant: &str) -> bool {
        wanted(
            (&self.event_types, &self.sources, &self.merchants),
            (event_type, source, merchant),
        )
    }

    /// Whether the sink keeps each payment's events in order.
    pub fn ordered(&self) -> bool {
        match self.kind {
            SinkKind::Sqs | SinkKind::Sns => self.target.ends_with(".fifo"),
            SinkKind::Eventbridge => false,
        }
    }
}

type Filter<'a> = (
    &'a BTreeSet<EventType>,
    &'a BTreeSet<String>,
    &'a BTreeSet<String>,
);

/// Whether a filter (types, sources, merchants; each empty for all) takes
/// an event.
fn wanted(
    (types, sources, merchants): Filter<'_>,
    (t, source, merchant): (EventType, &str, &str),
) -> bool {
    (types.is_empty() || types.contains(&t))
        && (sources.is_empty() || sources.contains(source))
        && (merchants.is_empty() || merchants.contains(merchant))
}

fn default_timeout_ms() -> u64 {
    15_000
}

fn default_rate() -> u32 {
    1000
}

impl EndpointConfig {
    /// Whether an event of `event_type` about a payment of `source` and
    /// `merchant` goes to this endpoint.
    pub fn wants(&self, event_type: EventType, source: &str, merchant: &str) -> bool {
        wanted(
            (&self.event_types, &self.sources, &self.merchants),
            (event_type, source, merchant),
        )
    }
}

impl DeliveriesConfig {
    /// Checks what can be checked without reading secrets.
    ///
    /// # Errors
    /// The first setting that cannot work, as text.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = BTreeSet::new();
        if self.concurrency == 0 || self.poll_ms == 0 {
            return Err("deliveries.concurrency and deliveries.poll_ms must be positive".into());
        }
        if self.line_wait_secs > 20 {
            return Err("deliveries.line_wait_secs: SQS waits at most 20 seconds".into());
        }
        let mut named = |name: &str| {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(format!(
                    "deliveries endpoint name {name:?}: letters, digits, - and _ only"
                ));
            }
            if !names.insert(name.to_owned()) {
                return Err(format!("deliveries endpoint {name:?} is named twice"));
            }
            Ok(())
        };
        for sink in &self.sinks {
            named(&sink.name)?;
            let t = &sink.target;
            let (ok, what) = match sink.kind {
                SinkKind::Sqs => (
                    t.parse::<http::Uri>()
                        .ok()
                        .filter(|u| matches!(u.scheme_str(), Some("https" | "http")))
                        .and_then(|u| u.host().map(str::to_owned))
                        .is_some_and(|h| !h.is_empty()),
                    "a queue URL",
                ),
                SinkKind::Sns => (
                    t.starts_with("arn:") && t.split(':').nth(2) == Some("sns"),
                    "an SNS topic ARN",
                ),
                SinkKind::Eventbridge => (
                    !t.is_empty()
                        && t.len() <= 1600
                        && t.chars().all(|c| c.is_ascii_graphic())
                        && (!t.starts_with("arn:") || t.split(':').nth(2) == Some("events")),
                    "an event bus name or ARN",
                ),
            };
            if !ok {
                return Err(format!(
                    "deliveries sink {:?}: {t:?} is not {what}",
                    sink.name
                ));
            }
        }
        for e in &self.endpoints {
            named(&e.name)?;
            let scheme_ok = e.url.starts_with("https://")
                || (e.allow_insecure_http && e.url.starts_with("http://"));
            if !scheme_ok {
                return Err(format!(
                    "deliveries endpoint {:?}: the URL must be https:// (http:// needs allow_insecure_http)",
                    e.name
                ));
            }
            let host = e
                .url
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.host().map(str::to_owned));
            if host.is_none_or(|h| h.is_empty()) {
                return Err(format!(
                    "deliveries endpoint {:?}: {:?} is not a URL with a host",
                    e.name, e.url
                ));
            }
            if e.secrets.is_empty() {
                return Err(format!(
                    "deliveries endpoint {:?}: at least one whsec_ secret is needed to sign",
                    e.name
                ));
            }
            if e.timeout_ms == 0 || e.max_requests_per_sec == 0 {
                return Err(format!(
                    "deliveries endpoint {:?}: timeout_ms and max_requests_per_sec must be positive",
                    e.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(name: &str, url: &str) -> EndpointConfig {
        EndpointConfig {
            name: name.into(),
            url: url.into(),
            secrets: vec![SecretRef::File("/s".into())],
            event_types: BTreeSet::new(),
            sources: BTreeSet::new(),
            merchants: BTreeSet::new(),
            timeout_ms: 1000,
            max_requests_per_sec: 10,
            allow_insecure_http: false,
            allow_private_addresses: false,
        }
    }

    fn check(endpoints: Vec<EndpointConfig>) -> Result<(), String> {
        DeliveriesConfig {
            endpoints,
            ..DeliveriesConfig::default()
        }
        .validate()
    }

    #[test]
    fn endpoints_that_cannot_work_are_refused_at_load() {
        assert!(check(vec![endpoint("orders", "https://orders.example/hook")]).is_ok());
        let refused = |e: EndpointConfig, why: &str| {
            let err = check(vec![e]).unwrap_err();
            assert!(err.contains(why), "{err}");
        };
        refused(endpoint("orders", "http://orders.example/hook"), "https://");
        refused(endpoint("orders", "https://"), "not a URL");
        refused(endpoint("orders", "https:// spaces/x"), "not a URL");
        refused(endpoint("or ders", "https://o.example/"), "letters, digits");
        refused(endpoint("", "https://o.example/"), "letters, digits");
        let mut no_secret = endpoint("orders", "https://o.example/");
        no_secret.secrets.clear();
        refused(no_secret, "secret");
        let mut no_time = endpoint("orders", "https://o.example/");
        no_time.timeout_ms = 0;
        refused(no_time, "positive");
        let err = check(vec![
            endpoint("orders", "https://a.example/"),
            endpoint("orders", "https://b.example/"),
        ])
        .unwrap_err();
        assert!(err.contains("named twice"), "{err}");
        let mut insecure = endpoint("local", "http://127.0.0.1:9/");
        insecure.allow_insecure_http = true;
        assert!(check(vec![insecure]).is_ok());
    }

    #[test]
    fn filters_take_what_they_name_and_everything_when_empty() {
        let mut e = endpoint("orders", "https://o.example/");
        assert!(e.wants(EventType::Paid, "unionpay", "m1"));
        e.event_types.insert(EventType::Refunded);
        e.sources.insert("unionpay".into());
        assert!(!e.wants(EventType::Paid, "unionpay", "m1"));
        assert!(e.wants(EventType::Refunded, "unionpay", "m1"));
        assert!(!e.wants(EventType::Refunded, "stripe", "m1"));
        e.merchants.insert("m2".into());
        assert!(!e.wants(EventType::Refunded, "unionpay", "m1"));
        assert!(e.wants(EventType::Refunded, "unionpay", "m2"));
    }
}
