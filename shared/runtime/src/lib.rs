//! paynotify's runtime: what every process runs around the ports (logs and
//! their notification span, Prometheus metrics, the HTTP accept loop, the
//! admin listener, the outbound client to PSP gateways, the verifier
//! registry built from configuration and secrets) and the ports' fault and
//! metering decorators. It sees the ports only as traits: no backend, no SDK.

pub mod admin;
mod decorated;
pub mod faults;
pub mod gateway;
pub mod metered;
pub mod metrics;
pub mod scheme;
pub mod secret;
pub mod serve;
pub mod stores;
pub mod telemetry;

use paynotify_config as config;
use paynotify_model::event;
use paynotify_ports as ports;
