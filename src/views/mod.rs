//! What the operator's commands print and the read API answers, built
//! once: a payment, an archived notification, the dead letters, the
//! deliveries' endpoints.

pub mod dead_letters;
pub mod deliveries;
pub mod notification;
pub mod payment;
