//! Any bytes through UnionPay's form and raw parsers and the whole verifier
//! (against the CFCA TEST chain, at a time its certificates were valid):
//! an error or a verdict, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use paynotify_schemes::unionpay::{parse_form, parse_raw, BodyFormat, UnionPayVerifier};
use paynotify_testkit::testing::{yansongda_verifier, YANSONGDA_AT};

fn verifiers() -> &'static (UnionPayVerifier, UnionPayVerifier) {
    static V: OnceLock<(UnionPayVerifier, UnionPayVerifier)> = OnceLock::new();
    V.get_or_init(|| (yansongda_verifier(BodyFormat::Form), yansongda_verifier(BodyFormat::Raw)))
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_form(data);
    let _ = parse_raw(data);
    let (form, raw) = verifiers();
    let _ = form.verify(data, YANSONGDA_AT);
    let _ = raw.verify(data, YANSONGDA_AT);
});
