//! Helpers for tests and benches: where the shared vectors live and the
//! configurations that trust them. Not used by the service itself.

use std::path::PathBuf;

use time::macros::datetime;
use time::OffsetDateTime;

use paynotify_schemes::unionpay::UNIONPAY_IDENTITY;
use paynotify_schemes::unionpay::{
    BodyFormat, Fields, TrustConfig, UnionPayVerifier, VerifierConfig,
};

/// The merchant of the yansongda vectors.
pub const YANSONGDA_MERCHANT: &str = "777290058167151";

/// When the yansongda vectors' signing certificate was valid.
pub const YANSONGDA_AT: OffsetDateTime = datetime!(2024-06-01 00:00:00 +08:00);

/// When the omnipay vector's signing certificate was valid.
pub const OMNIPAY_AT: OffsetDateTime = datetime!(2017-10-30 23:00:00 +08:00);

/// `../shared/vectors` beside the repository, or `$PAYNOTIFY_VECTORS`.
pub fn vectors_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PAYNOTIFY_VECTORS") {
        return PathBuf::from(dir);
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    repo.join("../shared/vectors")
}

/// Reads a file under the vectors directory, with a message that says where it looked.
pub fn read_vector(rel: &str) -> Vec<u8> {
    let path = vectors_dir().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read vector {} ({e}); set PAYNOTIFY_VECTORS to the vectors directory",
            path.display()
        )
    })
}

/// Trust in the CFCA TEST root and middle with the given CN identity.
pub fn cfca_trust(identity: &str) -> TrustConfig {
    TrustConfig {
        root: read_vector("unionpay/certs/acp_test_root.cer"),
        middle: read_vector("unionpay/certs/acp_test_middle.cer"),
        identity: identity.to_owned(),
    }
}

/// A verifier for the yansongda vectors (CFCA TEST chain, production identity).
pub fn yansongda_verifier(format: BodyFormat) -> UnionPayVerifier {
    UnionPayVerifier::new(&VerifierConfig {
        trust: cfca_trust(UNIONPAY_IDENTITY),
        verify_certs: vec![],
        merchants: vec![YANSONGDA_MERCHANT.to_owned()],
        body_format: format,
    })
    .expect("CFCA TEST trust configuration is valid")
}

/// A JSON vector (already decoded parameters) as fields.
pub fn json_vector_fields(rel: &str) -> Fields {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&read_vector(rel)).expect("vector is a JSON object");
    Fields::from_pairs(
        map.iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())),
    )
    .expect("vector has unique keys")
}

/// A JSON vector re-encoded as the form body UnionPay would POST.
pub fn json_vector_form(rel: &str) -> Vec<u8> {
    json_vector_fields(rel).to_form_body().into_bytes()
}
