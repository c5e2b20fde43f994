//! Test support: the CFCA TEST chain's verifier at a time its certificates
//! were valid, and a generated UnionPay test PKI (also behind
//! `paynotify testpki` and the demo).

pub mod testing;
pub mod testpki;
