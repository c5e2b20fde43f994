//! What the operator's commands print and the read API answers, built
//! once: a payment, an archived notification, the dead letters, the
//! deliveries' endpoints.

/// What a listing gives when it is not told.
pub const DEFAULT_LIMIT: usize = 100;
/// The most a listing gives at once.
pub const MAX_LIMIT: usize = 1000;

/// A listing's `limit` as given: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`]
/// when absent; what is wrong with it otherwise.
///
/// # Errors
/// Not a number in that range, said in words.
pub fn limit_of(given: Option<&str>) -> Result<usize, String> {
    match given {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| format!("limit is 1 to {MAX_LIMIT}")),
    }
}

pub mod dead_letters;
pub mod deliveries;
pub mod notification;
pub mod payment;
