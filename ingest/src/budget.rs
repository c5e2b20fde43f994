//! How many request bodies ingest holds at once (`ingest.max_inflight_bytes`).
//!
//! A request reserves its declared `Content-Length` (or the largest body
//! allowed, when it declares none) before its body is read, and keeps it
//! until the notification is stored or refused; a request that finds no room
//! is answered 503 unread, which a PSP retries. Bodies over
//! [`SMALL_BODY_BYTES`] also draw on a share of three quarters, so a flood
//! of large bodies (the cheap way to fill memory) leaves a quarter to the
//! notifications PSPs send, a few KiB each.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bodies up to this size may use the whole budget.
pub const SMALL_BODY_BYTES: usize = 64 << 10;

/// The budget, counted in KiB.
#[derive(Debug, Clone)]
pub struct Budget {
    all: Arc<Semaphore>,
    large: Arc<Semaphore>,
    max_body_bytes: usize,
}

/// Room held for one request; given back when dropped.
#[derive(Debug)]
pub struct Reserved {
    _all: OwnedSemaphorePermit,
    _large: Option<OwnedSemaphorePermit>,
}

fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024).max(1)
}

impl Budget {
    /// `max_inflight_bytes` in all, for bodies of at most `max_body_bytes`.
    pub fn new(max_inflight_bytes: usize, max_body_bytes: usize) -> Self {
        let all = kib(max_inflight_bytes);
        Self {
            all: Arc::new(Semaphore::new(all)),
            large: Arc::new(Semaphore::new(all / 4 * 3)),
            max_body_bytes,
        }
    }

    /// The largest body allowed.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Room for a body of `declared` bytes (`None`: not declared), if there
    /// is some now. A declared length over the largest body allowed reserves
    /// only that much: the body is then refused (413) as it is read.
    pub fn try_reserve(&self, declared: Option<u64>) -> Option<Reserved> {
        let bytes = declared.map_or(self.max_body_bytes, |n| {
            usize::try_from(n).map_or(self.max_body_bytes, |n| n.min(self.max_body_bytes))
        });
        let permits = u32::try_from(kib(bytes)).ok()?;
        let large = if bytes > SMALL_BODY_BYTES {
            Some(self.large.clone().try_acquire_many_owned(permits).ok()?)
        } else {
            None
        };
        let all = self.all.clone().try_acquire_many_owned(permits).ok()?;
        Some(Reserved {
            _all: all,
            _large: large,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_bodies_leave_a_quarter_to_small_ones() {
        let b = Budget::new(4 << 20, 1 << 20);
        let large: Vec<_> = (0..3)
            .map(|_| b.try_reserve(Some(1 << 20)).expect("room"))
            .collect();
        assert!(
            b.try_reserve(Some(1 << 20)).is_none(),
            "the large share is full"
        );
        assert!(
            b.try_reserve(None).is_none(),
            "undeclared counts as the largest"
        );
        let small: Vec<_> = (0..256)
            .map(|_| b.try_reserve(Some(4000)).expect("room"))
            .collect();
        assert!(
            b.try_reserve(Some(4000)).is_none(),
            "the whole budget is held"
        );
        drop(large);
        assert!(
            b.try_reserve(Some(1 << 20)).is_some(),
            "given back when dropped"
        );
        drop(small);
        // A declared length past the limit reserves only the limit.
        let huge = b.try_reserve(Some(u64::MAX)).expect("room");
        drop(huge);
        assert!(b.try_reserve(Some(0)).is_some());
    }
}
