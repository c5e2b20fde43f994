//! paynotify's domain core: payment events, the state machine, PSP signature
//! schemes, configuration and the test PKI shared by the CLI, ingest and worker.

pub mod admin;
pub mod backend;
mod decorated;
pub mod faults;
pub mod gateway;
pub mod metered;
pub mod metrics;
pub mod scheme;
pub mod secret;
pub mod serve;
pub mod telemetry;

pub use paynotify_config as config;
pub use paynotify_model::{event, money, outgoing, state};
pub use paynotify_ports as ports;
pub use paynotify_records::{envelope, segment};
pub use paynotify_testkit::{testing, testpki};

pub use event::{EventKey, EventKind, EventOutcome, PaymentEvent, PaymentKey};
pub use money::{Currency, Money};
pub use state::{transition, PaymentState, PaymentStatus, Transition};
