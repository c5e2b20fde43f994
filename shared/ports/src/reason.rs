//! Why a message was dead-lettered: one vocabulary, written by the worker
//! into the dead letter, the `reason` label of the metrics and the logs,
//! and typed by operators in `dlq redrive --reason` and `dlq purge --reason`
//! (docs/operations.md lists every word).

use std::fmt;

/// Why a message was moved to the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// The message is neither an envelope nor a pointer, or its body does
    /// not match its digest.
    MalformedEnvelope,
    /// The archive object the message points to is not there, or holds
    /// another notification.
    MissingArchiveObject,
    /// The notification names a source the configuration does not have.
    UnknownSource,
    /// Verification refused it at this check (the scheme's word, e.g.
    /// `bad_signature`).
    Rejected(&'static str),
    /// Authentic, but the payment's state cannot take it (a second capture
    /// of another amount, an alias loop).
    Conflict,
    /// Transient failures for longer than `worker.retry_for_secs`.
    RetriesExhausted,
    /// Processing it panicked the worker on several receives.
    Panic,
    /// Received `max_receives` times without being settled (the worker
    /// crashed or hung on it): moved by the queue itself.
    MaxReceivesExceeded,
    /// An operator set a parked event aside: its notification waits here
    /// instead of in the ledger, for a redrive once its payment can take it.
    SetAside,
}

impl DeadLetterReason {
    /// The word stored with the dead letter and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedEnvelope => "malformed_envelope",
            Self::MissingArchiveObject => "missing_archive_object",
            Self::UnknownSource => "unknown_source",
            Self::Rejected(check) => check,
            Self::Conflict => "conflict",
            Self::RetriesExhausted => "retries_exhausted",
            Self::Panic => "panic",
            Self::MaxReceivesExceeded => "max_receives_exceeded",
            Self::SetAside => "set_aside",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for DeadLetterReason {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for DeadLetterReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// `reason` in the one vocabulary: a reason written before it was one
/// (verification failures were `CamelCase`, e.g. `BadSignature`) becomes
/// its `snake_case` word (`bad_signature`); any other word is unchanged.
pub fn canonical_reason(reason: &str) -> String {
    if !reason.starts_with(|c: char| c.is_ascii_uppercase())
        || !reason.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return reason.to_owned();
    }
    let mut out = String::with_capacity(reason.len() + 4);
    for (i, c) in reason.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a dead letter stored with `stored` is one of `asked` (either in
/// either spelling: dead letters written before the one vocabulary keep
/// their old word).
pub fn same_reason(stored: &str, asked: &str) -> bool {
    stored == asked || canonical_reason(stored) == canonical_reason(asked)
}

/// The spellings a dead letter of `asked` may be stored under: its word
/// and, for a verification failure, the `CamelCase` name it had before.
pub fn reason_spellings(asked: &str) -> [String; 2] {
    let word = canonical_reason(asked);
    let mut old = String::with_capacity(word.len());
    let mut upper = true;
    for c in word.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                old.push(c.to_ascii_uppercase());
                upper = false;
            }
            c => old.push(c),
        }
    }
    [word, old]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_names_are_the_words_of_the_one_vocabulary() {
        assert_eq!(canonical_reason("BadSignature"), "bad_signature");
        assert_eq!(canonical_reason("UnknownCertId"), "unknown_cert_id");
        assert_eq!(
            canonical_reason("TimestampOutsideTolerance"),
            "timestamp_outside_tolerance"
        );
        assert_eq!(canonical_reason("retries_exhausted"), "retries_exhausted");
        assert_eq!(canonical_reason("Odd name"), "Odd name");
        assert!(same_reason("BadSignature", "bad_signature"));
        assert!(same_reason("bad_signature", "BadSignature"));
        assert!(!same_reason("BadSignature", "conflict"));
    }

    #[test]
    fn a_word_is_found_under_both_spellings() {
        let camel = "CertificateExpired";
        assert_eq!(
            reason_spellings(camel),
            ["certificate_expired".to_owned(), camel.to_owned()]
        );
        assert_eq!(
            reason_spellings("certificate_expired"),
            ["certificate_expired".to_owned(), camel.to_owned()]
        );
    }
}
