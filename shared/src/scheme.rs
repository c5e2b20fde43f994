//! scheme
