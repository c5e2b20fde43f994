//! The `paynotify` application: assembling backends, ingest and workers into
//! one process, the PSP simulator and a simulated UnionPay gateway. The binary in `main.rs` is a thin
//! layer of flags over these.

pub mod api;
pub mod app;
pub mod gateway_sim;
pub mod parked;
pub mod process;
pub mod purge;
pub mod receiver;
pub mod reconcile;
pub mod replay;
pub mod settlement;
pub mod simulate;
pub mod views;
