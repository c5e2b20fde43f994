//! How each PSP's notifications are verified and mapped to payment events:
//! UnionPay (RSA with an embedded certificate, its status queries and
//! settlement files), Stripe, Adyen and Standard Webhooks, each with the
//! settings it reads. No I/O beyond reading a `file:` reference; no
//! backend, no SDK.

pub mod adyen;
mod scheme;
pub mod secret;
pub mod standard_webhooks;
pub mod stripe;
pub mod unionpay;
pub mod webhook;

pub use scheme::{Rejected, Scheme, SchemeSettings, Secrets};

use paynotify_model::event::PaymentEvent;
// Paths such as `crate::event::PaymentEvent` read as in the model.
use paynotify_model::{event, money};

/// A notification that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// A payment event, to apply.
    Event(Box<PaymentEvent>),
    /// Authentic, but of a type the source does not map to a payment event
    /// (a webhook's `customer.created`): archived and acknowledged as
    /// ignored, never applied.
    Ignored(String),
    /// A notification of this many items, each signed on its own (Adyen):
    /// verify each with [`Scheme::verify_item`] (the worker queues
    /// one message per item, so each is applied or dead-lettered alone).
    Items(u32),
}
