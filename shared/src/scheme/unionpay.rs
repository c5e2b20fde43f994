//! China UnionPay ACP (全渠道): form parsing, canonical string, certificate
//! chain validation, RSA verification, merchant-side signing and the mapping
//! to payment events (DESIGN §5, §6).

mod certs;
mod error;
mod fields;
mod mapping;
mod sign;
mod verify;

pub use certs::{CertInfo, ChainValidator, TrustConfig};
pub use error::VerifyError;
pub use fields::{canonical_string, parse_form, parse_raw, BodyFormat, Fields};
pub use mapping::to_event;
pub use sign::{sign_fields, MerchantSigner};
pub use verify::{Explanation, UnionPayVerifier, Verified, VerifierConfig};
