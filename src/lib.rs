//! The `paynotify` application: assembling backends, ingest and workers into
//! one process, and the PSP simulator. The binary in `main.rs` is a thin
//! layer of flags over these.

pub mod app;
pub mod purge;
pub mod reconcile;
pub mod replay;
pub mod simulate;
