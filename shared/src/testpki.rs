//! testpki
