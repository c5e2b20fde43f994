//! What the HMAC-signed JSON webhook schemes (Stripe, Standard Webhooks)
//! share: the request as the worker has it, header lookup, the timestamp
//! tolerance, constant-time HMAC-SHA256 checks, JSON pointers into the
//! exact body, and their errors.

use aws_lc_rs::hmac;
use time::OffsetDateTime;

use crate::money::{Currency, Money};

/// A notification as the worker has it: the exact body, the request's
/// headers, and when ingest received it.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub body: &'a [u8],
    pub headers: &'a [(String, String)],
    pub received_at: OffsetDateTime,
}

impl<'a> Inbound<'a> {
    /// The value of header `name` (any case); `Err` when it is missing or
    /// appears more than once with different values.
    ///
    /// # Errors
    /// `MissingHeader`, `DuplicateHeader`.
    pub fn header(&self, name: &'static str) -> Result<&'a str, WebhookError> {
        let mut found = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        let first = found.next().ok_or(WebhookError::MissingHeader(name))?;
        if found.any(|v| v != first) {
            return Err(WebhookError::DuplicateHeader(name));
        }
        Ok(first)
    }
}

/// Why a webhook was rejected. Every variant is permanent for these bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("header `{0}` is missing")]
    MissingHeader(&'static str),
    #[error("header `{0}` appears more than once")]
    DuplicateHeader(&'static str),
    #[error("header `{header}` is malformed: {why}")]
    MalformedHeader { header: &'static str, why: String },
    #[error(
        "signed at {signed_at}, received at {received_at}: more than {tolerance_secs} s apart"
    )]
    TimestampOutsideTolerance {
        signed_at: i64,
        received_at: i64,
        tolerance_secs: u64,
    },
    #[error("no signature matches any configured secret")]
    BadSignature,
    #[error("body is not a JSON object: {0}")]
    MalformedBody(String),
    #[error("field `{0}` is missing")]
    MissingField(String),
    #[error("field `{field}` is malformed: {why}")]
    MalformedField { field: String, why: String },
    #[error("merchant {0:?} is not configured for this source")]
    UnknownMerchant(String),
}

impl WebhookError {
    /// The variant name, as shown to operators and used as dead-letter reason.
    pub fn name(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_header",
            Self::DuplicateHeader(_) => "duplicate_header",
            Self::MalformedHeader { .. } => "malformed_header",
            Self::TimestampOutsideTolerance { .. } => "timestamp_outside_tolerance",
            Self::BadSignature => "bad_signature",
            Self::MalformedBody(_) => "malformed_body",
            Self::MissingField(_) => "missing_field",
            Self::MalformedField { .. } => "malformed_field",
            Self::UnknownMerchant(_) => "unknown_merchant",
        }
    }

    /// The verification step that failed.
    pub fn step(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) | Self::DuplicateHeader(_) | Self::MalformedHeader { .. } => {
                "headers"
            }
            Self::TimestampOutsideTolerance { .. } => "timestamp",
            Self::BadSignature => "signature",
            Self::MalformedBody(_)
            | Self::MissingField(_)
            | Self::MalformedField { .. }
            | Self::UnknownMerchant(_) => "mapping",
        }
    }
}

/// Checks that a signature's timestamp (Unix seconds) is at most
/// `past_secs` before the receive time and at most `future_secs` after it
/// (a timestamp from the future is as suspect as an old one).
///
/// # Errors
/// `TimestampOutsideTolerance`, naming the bound that was exceeded.
pub fn check_timestamp(
    signed_at: i64,
    received_at: OffsetDateTime,
    past_secs: u64,
    future_secs: u64,
) -> Result<(), WebhookError> {
    let received = received_at.unix_timestamp();
    let tolerance_secs = if signed_at > received {
        future_secs
    } else {
        past_secs
    };
    if signed_at.abs_diff(received) > tolerance_secs {
        return Err(WebhookError::TimestampOutsideTolerance {
            signed_at,
            received_at: received,
            tolerance_secs,
        });
    }
    Ok(())
}

/// Parses a Unix timestamp header.
///
/// # Errors
/// `MalformedHeader` when it is not a decimal integer.
pub fn parse_timestamp(header: &'static str, value: &str) -> Result<i64, WebhookError> {
    if value.is_empty() || value.len() > 12 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(WebhookError::MalformedHeader {
            header,
            why: format!("{value:?} is not a Unix timestamp"),
        });
    }
    value.parse().map_err(|_| WebhookError::MalformedHeader {
        header,
        why: format!("{value:?} is out of range"),
    })
}

/// An HMAC-SHA256 key.
#[derive(Clone)]
pub struct HmacKey(hmac::Key);

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKey(..)")
    }
}

impl HmacKey {
    /// A key of these bytes.
    pub fn new(bytes: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// Whether `tag` is the HMAC of the concatenated `parts`, compared in
    /// constant time.
    pub fn verifies(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        // aws-lc's constant-time comparison (as `hmac::verify` uses).
        aws_lc_rs::constant_time::verify_slices_are_equal(self.tag(parts).as_ref(), tag).is_ok()
    }

    /// The HMAC of the concatenated `parts` (for signing test messages).
    pub fn sign(&self, parts: &[&[u8]]) -> Vec<u8> {
        self.tag(parts).as_ref().to_vec()
    }

    fn tag(&self, parts: &[&[u8]]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        for p in parts {
            ctx.update(p);
        }
        ctx.sign()
    }
}

/// The parsed JSON body, read through pointers (RFC 6901).
pub struct Json(serde_json::Value);

impl Json {
    /// Parses the exact body. The signature was checked over the bytes; the
    /// parse only reads values.
    ///
    /// # Errors
    /// `MalformedBody` when it is not a JSON object.
    pub fn parse(body: &[u8]) -> Result<Self, WebhookError> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| WebhookError::MalformedBody(e.to_string()))?;
        if !value.is_object() {
            return Err(WebhookError::MalformedBody("not an object".into()));
        }
        Ok(Self(value))
    }

    /// A value already parsed (one item of a notification).
    pub fn from_value(value: serde_json::Value) -> Self {
        Self(value)
    }

    /// The value at `pointer`, if any (JSON `null` counts as absent).
    pub fn get(&self, pointer: &str) -> Option<&serde_json::Value> {
        self.0.pointer(pointer).filter(|v| !v.is_null())
    }

    /// The string at `pointer`; numbers are given as their decimal text.
    ///
    /// # Errors
    /// `MissingField`, or `MalformedField` for an object, array or bool.
    pub fn text(&self, pointer: &str) -> Result<String, WebhookError> {
        match self.get(pointer) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
            Some(other) => Err(WebhookError::MalformedField {
                field: pointer.to_owned(),
                why: format!("expected a string, found {other}"),
            }),
            None => Err(WebhookError::MissingField(pointer.to_owned())),
        }
    }

    /// A non-negative integer amount in minor units at `pointer`.
    ///
    /// # Errors
    /// `MissingField`, `MalformedField`.
    pub fn minor_units(&self, pointer: &str) -> Result<u64, WebhookError> {
        let bad = |why: String| WebhookError::MalformedField {
            field: pointer.to_owned(),
            why,
        };
        match self.get(pointer) {
            Some(serde_json::Value::Number(n)) => n.as_u64().ok_or_else(|| {
                bad(format!(
                    "{n} is not a whole, non-negative amount in minor units"
                ))
            }),
            Some(serde_json::Value::String(s))
                if !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()) =>
            {
                s.parse().map_err(|_| bad(format!("{s:?} is out of range")))
            }
            Some(other) => Err(bad(format!("{other} is not an amount in minor units"))),
            None => Err(WebhookError::MissingField(pointer.to_owned())),
        }
    }

    /// An amount of `minor` units in the ISO 4217 alphabetic currency at
    /// `pointer` (any case: Stripe writes `usd`).
    ///
    /// # Errors
    /// `MissingField`, `MalformedField`.
    pub fn money(&self, minor: u64, pointer: &str) -> Result<Money, WebhookError> {
        let code = self.text(pointer)?;
        let currency = Currency::from_alpha(&code.to_ascii_uppercase()).ok_or_else(|| {
            WebhookError::MalformedField {
                field: pointer.to_owned(),
                why: format!("{code:?} is not a supported ISO 4217 code"),
            }
        })?;
        Ok(Money { minor, currency })
    }
}

/// The merchant an event is for: the one it names, when `named` (it must
/// be configured), else the source's first configured merchant.
///
/// # Errors
/// `UnknownMerchant`; `MissingField` when none is configured.
pub fn merchant(named: Option<String>, configured: &[String]) -> Result<String, WebhookError> {
    match named {
        Some(m) if configured.contains(&m) => Ok(m),
        Some(m) => Err(WebhookError::UnknownMerchant(m)),
        None => configured
            .first()
            .cloned()
            .ok_or_else(|| WebhookError::MissingField("merchants (configuration)".into())),
    }
}

/// Seconds a webhook signature's timestamp may differ from the receive time
/// by default.
pub(crate) fn default_tolerance_secs() -> u64 {
    300
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_checked_both_ways() {
        let at = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        assert!(check_timestamp(1_000_000 - 300, at, 300, 300).is_ok());
        assert!(check_timestamp(1_000_000 + 300, at, 300, 300).is_ok());
        assert!(check_timestamp(1_000_000 - 301, at, 300, 300).is_err());
        assert!(check_timestamp(1_000_000 + 301, at, 300, 300).is_err());
        // Each direction has its own bound.
        assert!(check_timestamp(1_000_000 + 301, at, 300, 3600).is_ok());
        assert!(check_timestamp(1_000_000 - 301, at, 300, 3600).is_err());
        assert!(parse_timestamp("t", "12a").is_err());
        assert!(parse_timestamp("t", "").is_err());
        assert!(parse_timestamp("t", "-5").is_err());
    }

    #[test]
    fn headers_are_found_in_any_case_and_conflicts_refused() {
        let h = vec![
            ("Webhook-Id".to_owned(), "a".to_owned()),
            ("webhook-id".to_owned(), "a".to_owned()),
            ("x".to_owned(), "1".to_owned()),
            ("X".to_owned(), "2".to_owned()),
        ];
        let i = Inbound {
            body: b"",
            headers: &h,
            received_at: OffsetDateTime::UNIX_EPOCH,
        };
        assert_eq!(i.header("webhook-id").unwrap(), "a");
        assert_eq!(i.header("x"), Err(WebhookError::DuplicateHeader("x")));
        assert_eq!(i.header("y"), Err(WebhookError::MissingHeader("y")));
    }

    #[test]
    fn amounts_and_currencies() {
        let j =
            Json::parse(br#"{"a": 1050, "b": "77", "c": -1, "d": 1.5, "e": "usd", "f": "XXX1"}"#)
                .unwrap();
        assert_eq!(j.minor_units("/a").unwrap(), 1050);
        assert_eq!(j.minor_units("/b").unwrap(), 77);
        assert!(j.minor_units("/c").is_err());
        assert!(j.minor_units("/d").is_err());
        assert_eq!(j.money(5, "/e").unwrap().to_string(), "0.05 USD");
        assert!(j.money(5, "/f").is_err());
        assert!(matches!(j.text("/zz"), Err(WebhookError::MissingField(_))));
        assert!(Json::parse(b"[1]").is_err());
        assert!(Json::parse(b"\xff").is_err());
    }
}
