//! paynotify's payment model: the events PSPs report, money, and the state
//! machine that applies an event to a payment. No I/O, no backend, no
//! scheme: every other crate builds on it.

pub mod event;
pub mod money;
pub mod outgoing;
pub mod state;

pub use event::{EventKey, EventKind, EventOutcome, PaymentEvent, PaymentKey};
pub use money::{Currency, Money};
pub use outgoing::{EventType, OutgoingEvent};
pub use state::{transition, PaymentState, PaymentStatus, Transition};
