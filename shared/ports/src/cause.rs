//! Why a store could not answer, with the error that caused it.

use std::error::Error;
use std::fmt;

/// Why a store could not answer: what went wrong in words (what logs and
/// dead-letter records show) and, when an error caused it, that error
/// itself as [`Error::source`], so that a caller or a log can walk the
/// chain down to the SDK's or the file system's own error instead of
/// parsing text.
#[derive(Debug)]
pub struct Cause {
    what: String,
    source: Option<Box<dyn Error + Send + Sync + 'static>>,
}

impl Cause {
    /// A cause described by `what`, with no error beneath it.
    pub fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            source: None,
        }
    }

    /// A cause described by `what`, caused by `source`.
    pub fn with_source(
        what: impl Into<String>,
        source: impl Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            what: what.into(),
            source: Some(Box::new(source)),
        }
    }

    /// `source`, described by its own message.
    pub fn of(source: impl Error + Send + Sync + 'static) -> Self {
        Self::with_source(source.to_string(), source)
    }

    /// What went wrong, in words.
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

impl From<String> for Cause {
    fn from(what: String) -> Self {
        Self::new(what)
    }
}

impl From<&str> for Cause {
    fn from(what: &str) -> Self {
        Self::new(what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_beneath_is_the_source() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "read-only");
        let cause = Cause::with_source("writing ab/cd", io);
        assert_eq!(cause.to_string(), "writing ab/cd");
        let below = cause.source().expect("a source");
        let io = below
            .downcast_ref::<std::io::Error>()
            .expect("the io error");
        assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(Cause::new("down").source().is_none());
    }
}
