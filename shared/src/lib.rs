//! paynotify's domain core: payment events, the state machine, PSP signature
//! schemes, configuration and the test PKI shared by the CLI, ingest and worker.

pub mod admin;
pub mod backend;
pub mod config;
pub mod envelope;
pub mod faults;
pub mod gateway;
pub mod metered;
pub mod metrics;
pub mod ports;
pub mod scheme;
pub mod secret;
pub mod segment;
pub mod serve;
pub mod telemetry;
pub mod testing;
pub mod testpki;

pub use paynotify_model::{event, money, state};

pub use event::{EventKey, EventKind, EventOutcome, PaymentEvent, PaymentKey};
pub use money::{Currency, Money};
pub use state::{transition, PaymentState, PaymentStatus, Transition};
