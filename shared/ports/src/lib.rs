//! The three ports (DESIGN §3): archive, queue and ledger. Each is a small
//! async trait with a contract, our own types in and out, and an error enum
//! that says whether a failure is transient.

mod archive;
mod bundle;
mod cause;
mod ledger;
mod line;
mod outbox;
mod queue;
mod reason;
mod secrets;
mod watch;

pub use archive::*;
pub use bundle::Backends;
pub use cause::Cause;
pub use ledger::*;
pub use line::*;
pub use outbox::*;
pub use queue::*;
pub use reason::{canonical_reason, reason_spellings, same_reason, DeadLetterReason};
pub use secrets::{CallCounter, SecretStore, SecretStoreError};
pub use watch::*;
