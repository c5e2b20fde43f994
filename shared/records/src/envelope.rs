//! Envelope v1 (DESIGN §4): what ingest archives and enqueues for every
//! notification, carrying the exact bytes received.

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::segment::{self, Location};

/// Headers that describe one hop, not the notification; not archived.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Why an envelope cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported envelope version {0}")]
    Version(u8),
    #[error("envelope body is not valid base64")]
    Base64,
    #[error("envelope body does not match its body_sha256")]
    Digest,
}

/// One received notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u8,
    /// ULID assigned by ingest.
    pub id: String,
    pub source: String,
    #[serde(with = "rfc3339_ms")]
    pub received_at: OffsetDateTime,
    pub remote_addr: Option<String>,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    /// The body when it is UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub body: Option<String>,
    /// The body, base64, when it is not UTF-8, or when JSON would escape it
    /// to more than base64 takes (a body of control characters, which JSON
    /// writes six bytes each).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub body_b64: Option<String>,
    pub body_sha256: String,
    /// Absent for a notification received. For paynotify's own calls to a
    /// PSP (archived under `outbound/`): `request` or `response`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub direction: Option<String>,
    /// The HTTP status of an outbound response.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<u16>,
    /// Where the archive holds this envelope: set on the copy that travels
    /// on the queue, never archived.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub at: Option<Location>,
}

/// The request as ingest saw it.
#[derive(Debug, Clone)]
pub struct Received<'a> {
    pub source: &'a str,
    pub received_at: OffsetDateTime,
    pub remote_addr: Option<String>,
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
}

/// The length of `text` as a JSON string's contents: `"` and `\\` take two
/// bytes, control characters two or six.
fn escaped_len(text: &[u8]) -> usize {
    text.iter()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

impl Envelope {
    /// Wraps a received request with a fresh ULID.
    pub fn new(r: Received<'_>) -> Self {
        let (body, body_b64) = match std::str::from_utf8(r.body) {
            Ok(text) if escaped_len(r.body) <= r.body.len() / 3 * 4 + 4 => {
                (Some(text.to_owned()), None)
            }
            _ => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(r.body)),
            ),
        };
        Self {
            v: 1,
            id: ulid::Ulid::new().to_string(),
            source: r.source.to_owned(),
            // Stored as archived (UTC, milliseconds), so the worker verifies
            // against exactly the time in the archive.
            received_at: rfc3339_ms::truncate(r.received_at),
            remote_addr: r.remote_addr,
            method: r.method.to_owned(),
            path: r.path.to_owned(),
            query: r.query.map(str::to_owned),
            headers: r
                .headers
                .into_iter()
                .filter(|(k, _)| !HOP_BY_HOP.contains(&k.to_ascii_lowercase().as_str()))
                .collect(),
            body,
            body_b64,
            body_sha256: hex::encode(Sha256::digest(r.body)),
            direction: None,
            status: None,
            at: None,
        }
    }

    /// `outbound/source={source}/date={YYYY-MM-DD}/hour={HH}/{id}.{direction}.json`:
    /// one exchange with a PSP is a request and its response under one id.
    pub fn outbound_key(&self) -> String {
        let t = self.received_at.to_offset(time::UtcOffset::UTC);
        format!(
            "outbound/source={}/date={:04}-{:02}-{:02}/hour={:02}/{}.{}.json",
            self.source,
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            self.id,
            self.direction.as_deref().unwrap_or("request")
        )
    }

    /// The archive partition of this notification (`segment::partition`).
    pub fn partition(&self) -> String {
        segment::partition(&self.source, self.received_at)
    }

    /// Where an archive written one object per notification (before
    /// segments) kept this envelope: `{partition}{id}.json`.
    fn object_key(&self) -> String {
        format!("{}{}.json", self.partition(), self.id)
    }

    /// This envelope alone as a segment: its key, bytes and location (what
    /// ingest writes for a notification that arrives by itself).
    pub fn to_segment(&self) -> (String, Vec<u8>, Location) {
        let key = segment::segment_key(&self.partition(), &self.id, 1);
        let json = self.to_json();
        let (bytes, mut at) = segment::build(&key, [json.as_slice()]);
        (key, bytes, at.remove(0))
    }

    /// The exact body bytes, checked against `body_sha256`.
    ///
    /// # Errors
    /// `Base64` or `Digest` when the envelope was altered.
    pub fn body_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        let bytes = match (&self.body, &self.body_b64) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| EnvelopeError::Base64)?,
            (None, None) => Vec::new(),
        };
        if hex::encode(Sha256::digest(&bytes)) != self.body_sha256 {
            return Err(EnvelopeError::Digest);
        }
        Ok(bytes)
    }

    /// Serialises to the JSON that is archived and enqueued.
    pub fn to_json(&self) -> Vec<u8> {
        // Sized up front: the body dominates, and growing by doubling would
        // briefly hold twice the envelope for every request in flight.
        let body = self
            .body
            .as_ref()
            .or(self.body_b64.as_ref())
            .map_or(0, String::len);
        let mut out = Vec::with_capacity(body + body / 8 + 1024);
        match serde_json::to_writer(&mut out, self) {
            Ok(()) => out,
            Err(_) => Vec::new(),
        }
    }

    /// Parses and checks an envelope.
    ///
    /// # Errors
    /// `Json`, `Version`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let e: Self = serde_json::from_slice(bytes)?;
        if e.v != 1 {
            return Err(EnvelopeError::Version(e.v));
        }
        Ok(e)
    }
}

/// What travels on the queue instead of an envelope too large for it (or a
/// retried message's new delivery, or one item of a notification that holds
/// several): the archive key where the whole envelope is, how long it has
/// been retried, and which item it stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pointer {
    pub v: u8,
    pub archive_key: String,
    /// `[offset, length]` of the envelope in a segment.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub span: Option<[u64; 2]>,
    /// The notification's id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub retry: Option<RetryState>,
    /// One item of a notification that holds several (Adyen's
    /// `notificationItems`), processed and settled on its own.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub item: Option<u32>,
}

/// Carried by a message that was sent again to keep retrying a transient
/// failure past the queue's receive limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryState {
    /// When its first delivery was first received.
    #[serde(with = "rfc3339_ms")]
    pub since: OffsetDateTime,
    /// Receives of earlier deliveries.
    pub attempts: u32,
}

/// A queue message body: an envelope, or a pointer to one in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueuedBody {
    Envelope(Box<Envelope>),
    Pointer {
        location: Location,
        /// The notification's id, checked against the envelope read.
        id: Option<String>,
        retry: Option<RetryState>,
        item: Option<u32>,
    },
}

impl QueuedBody {
    /// Parses a queue message body.
    ///
    /// # Errors
    /// As [`Envelope::from_json`].
    pub fn parse(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if let Ok(p) = serde_json::from_slice::<Pointer>(bytes) {
            if p.v != 1 {
                return Err(EnvelopeError::Version(p.v));
            }
            return Ok(Self::Pointer {
                location: Location {
                    key: p.archive_key,
                    span: p.span,
                },
                id: p.id,
                retry: p.retry,
                item: p.item,
            });
        }
        Envelope::from_json(bytes).map(|e| Self::Envelope(Box::new(e)))
    }

    /// What to enqueue for the envelope `envelope_json` (of notification
    /// `id`) archived at `at`: the envelope with its location, or a pointer
    /// when that exceeds `max_message_bytes`.
    pub fn for_queue(
        envelope_json: Vec<u8>,
        at: &Location,
        id: &str,
        max_message_bytes: usize,
    ) -> Vec<u8> {
        Self::inline(envelope_json, at, max_message_bytes)
            .unwrap_or_else(|| Self::pointer(at, Some(id), None, None))
    }

    /// The envelope `envelope_json` with its location `at`, as it travels on
    /// the queue; `None` when that exceeds `max_message_bytes` (a pointer
    /// travels instead).
    pub fn inline(
        envelope_json: Vec<u8>,
        at: &Location,
        max_message_bytes: usize,
    ) -> Option<Vec<u8>> {
        let located = Self::with_location(envelope_json, at);
        (located.len() <= max_message_bytes).then_some(located)
    }

    /// `envelope_json` (an envelope serialised by [`Envelope::to_json`],
    /// without `at`) with `at` added.
    fn with_location(mut envelope_json: Vec<u8>, at: &Location) -> Vec<u8> {
        if envelope_json.last() == Some(&b'}') {
            envelope_json.pop();
            envelope_json.extend_from_slice(b",\"at\":");
            if serde_json::to_writer(&mut envelope_json, at).is_err() {
                return Vec::new();
            }
            envelope_json.push(b'}');
        }
        envelope_json
    }

    /// The pointer JSON for the envelope at `location`, carrying the
    /// notification's `id`, `retry` and the `item` it stands for.
    pub fn pointer(
        location: &Location,
        id: Option<&str>,
        retry: Option<RetryState>,
        item: Option<u32>,
    ) -> Vec<u8> {
        serde_json::to_vec(&Pointer {
            v: 1,
            archive_key: location.key.clone(),
            span: location.span,
            id: id.map(str::to_owned),
            retry,
            item,
        })
        .unwrap_or_default()
    }

    /// `body` as a redrive sends it back: a pointer that carried a retry's
    /// state (`since`, `attempts`) without it, so the redriven message gets
    /// a fresh `worker.retry_for_secs` (the old clock would dead-letter it
    /// as `retries_exhausted` at its first transient error); any other body
    /// unchanged, byte for byte.
    pub fn redriven(body: &[u8]) -> std::borrow::Cow<'_, [u8]> {
        match serde_json::from_slice::<Pointer>(body) {
            Ok(p) if p.retry.is_some() => std::borrow::Cow::Owned(
                serde_json::to_vec(&Pointer { retry: None, ..p }).unwrap_or_else(|_| body.to_vec()),
            ),
            _ => std::borrow::Cow::Borrowed(body),
        }
    }

    /// The item this message stands for, when it is one of several.
    pub fn item(&self) -> Option<u32> {
        match self {
            Self::Envelope(_) => None,
            Self::Pointer { item, .. } => *item,
        }
    }

    /// Where the envelope is archived.
    pub fn location(&self) -> Location {
        match self {
            Self::Envelope(e) => {
                e.at.clone()
                    .unwrap_or_else(|| Location::whole(e.object_key()))
            }
            Self::Pointer { location, .. } => location.clone(),
        }
    }

    /// The retries of earlier deliveries, if any.
    pub fn retry(&self) -> Option<&RetryState> {
        match self {
            Self::Envelope(_) => None,
            Self::Pointer { retry, .. } => retry.as_ref(),
        }
    }

    /// The notification's id (the envelope's ULID).
    pub fn notification_id(&self) -> String {
        match self {
            Self::Envelope(e) => e.id.clone(),
            Self::Pointer { id: Some(id), .. } => id.clone(),
            // A pointer written before segments: the object is named by the id.
            Self::Pointer { location, .. } => location
                .key
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .trim_end_matches(".json")
                .to_owned(),
        }
    }

    /// This message again (a pointer), carrying `retry`.
    pub fn retried(&self, retry: RetryState) -> Vec<u8> {
        Self::pointer(
            &self.location(),
            Some(&self.notification_id()),
            Some(retry),
            self.item(),
        )
    }
}

/// What a dead letter's body says about the notification it carries.
pub trait DeadLetterBody {
    /// The notification this dead letter carries or points to; `None` when
    /// its body is not a queued envelope.
    fn notification_id(&self) -> Option<String>;
}

impl DeadLetterBody for paynotify_ports::DeadLetter {
    fn notification_id(&self) -> Option<String> {
        QueuedBody::parse(&self.body)
            .ok()
            .map(|b| b.notification_id())
    }
}

/// Millisecond RFC 3339 in UTC, e.g. `2026-11-25T23:15:16.123Z`.
pub mod rfc3339_ms {
    use super::*;

    /// `t` in UTC, truncated to whole milliseconds.
    pub fn truncate(t: OffsetDateTime) -> OffsetDateTime {
        let t = t.to_offset(time::UtcOffset::UTC);
        t.replace_nanosecond(u32::from(t.millisecond()) * 1_000_000)
            .unwrap_or(t)
    }

    /// Formats `t` with millisecond precision.
    pub fn format(t: OffsetDateTime) -> String {
        truncate(t).format(&Rfc3339).unwrap_or_default()
    }

    pub fn serialize<S: serde::Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let s = String::deserialize(d)?;
        OffsetDateTime::parse(&s, &Rfc3339).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn received(body: &[u8]) -> Envelope {
        Envelope::new(Received {
            source: "unionpay",
            received_at: datetime!(2026-11-25 23:15:16.123456 +08:00),
            remote_addr: Some("10.0.0.1:5000".into()),
            method: "POST",
            path: "/notify/unionpay",
            query: None,
            headers: vec![
                ("Content-Type".into(), "x".into()),
                ("Connection".into(), "close".into()),
            ],
            body,
        })
    }

    /// Control bytes are UTF-8 but JSON writes each in six bytes: such a
    /// body travels as base64, which takes four for three.
    #[test]
    fn a_body_that_escapes_large_travels_as_base64() {
        let controls = vec![1u8; 3000];
        let e = received(&controls);
        assert!(e.body.is_none() && e.body_b64.is_some());
        assert!(e.to_json().len() < 4000 + 1024, "{}", e.to_json().len());
        assert_eq!(
            Envelope::from_json(&e.to_json())
                .unwrap()
                .body_bytes()
                .unwrap(),
            controls
        );
        let form = received(b"a=1&b=\"x\"\n");
        assert_eq!(form.body.as_deref(), Some("a=1&b=\"x\"\n"));
    }

    #[test]
    fn round_trips_text_and_binary_bodies() {
        for body in [
            b"a=1&b=2".as_slice(),
            b"\xff\x00binary".as_slice(),
            b"".as_slice(),
        ] {
            let e = received(body);
            let back = Envelope::from_json(&e.to_json()).unwrap();
            assert_eq!(back.body_bytes().unwrap(), body);
            assert_eq!(back, e);
        }
        let e = received(b"x");
        assert_eq!(e.headers.len(), 1, "hop-by-hop headers are dropped");
        let json = String::from_utf8(e.to_json()).unwrap();
        assert!(
            json.contains("\"received_at\":\"2026-11-25T15:15:16.123Z\""),
            "{json}"
        );
    }

    #[test]
    fn pointers_and_envelopes_are_told_apart() {
        let e = received(b"x");
        let (key, bytes, at) = e.to_segment();
        assert_eq!(
            key,
            format!(
                "raw/source=unionpay/date=2026-11-25/hour=15/{}-1.ndjson",
                e.id
            )
        );
        assert_eq!(bytes, [e.to_json(), b"\n".to_vec()].concat());
        // Inline: the envelope with its location.
        let inline = QueuedBody::for_queue(e.to_json(), &at, &e.id, 256 * 1024);
        let parsed = QueuedBody::parse(&inline).unwrap();
        let QueuedBody::Envelope(back) = &parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!(back.at.as_ref(), Some(&at));
        assert_eq!(
            (parsed.location(), parsed.notification_id()),
            (at.clone(), e.id.clone())
        );
        // Too large for the queue: a pointer to the same place.
        let p = QueuedBody::for_queue(e.to_json(), &at, &e.id, 10);
        let pointer = QueuedBody::parse(&p).unwrap();
        assert_eq!(
            pointer,
            QueuedBody::Pointer {
                location: at.clone(),
                id: Some(e.id.clone()),
                retry: None,
                item: None,
            }
        );
        assert_eq!(pointer.notification_id(), e.id);
        let retry = RetryState {
            since: datetime!(2026-11-25 23:15:16.123 UTC),
            attempts: 7,
        };
        let again = QueuedBody::parse(&parsed.retried(retry)).unwrap();
        assert_eq!(again.retry(), Some(&retry));
        assert_eq!(
            (again.location(), again.notification_id()),
            (at.clone(), e.id.clone())
        );
        let p = QueuedBody::pointer(&at, Some(&e.id), Some(retry), Some(3));
        let item = QueuedBody::parse(&p).unwrap();
        assert_eq!((item.item(), item.retry()), (Some(3), Some(&retry)));
        assert_eq!(
            QueuedBody::parse(&item.retried(retry)).unwrap().item(),
            Some(3)
        );
        // A pointer written before segments names the object by the id.
        let old = br#"{"v":1,"archive_key":"raw/source=u/date=2026-11-25/hour=15/01ABC.json"}"#;
        let old = QueuedBody::parse(old).unwrap();
        assert_eq!(old.notification_id(), "01ABC");
        assert_eq!(old.location().span, None);
    }

    #[test]
    fn key_is_hive_partitioned_in_utc() {
        let e = received(b"x");
        assert_eq!(
            e.partition(),
            "raw/source=unionpay/date=2026-11-25/hour=15/"
        );
    }

    #[test]
    fn tampered_envelopes_are_detected() {
        let mut e = received(b"a=1");
        e.body = Some("a=2".into());
        assert!(matches!(e.body_bytes(), Err(EnvelopeError::Digest)));
        assert!(Envelope::from_json(b"{").is_err());
        let mut v2 = received(b"a");
        v2.v = 2;
        assert!(matches!(
            Envelope::from_json(&v2.to_json()),
            Err(EnvelopeError::Version(2))
        ));
    }
}
