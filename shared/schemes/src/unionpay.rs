//! China UnionPay ACP (全渠道): form parsing, canonical string, certificate
//! chain validation, RSA verification, merchant-side signing and the mapping
//! to payment events (DESIGN §5, §6), the status query and the settlement
//! file.

mod certs;
mod error;
mod fields;
mod mapping;
mod query;
mod scheme;
mod settings;
mod settlement;
mod sign;
mod verify;

pub use certs::{CertInfo, ChainValidator, TrustConfig};
pub use error::VerifyError;
pub use fields::{canonical_string, parse_form, parse_raw, BodyFormat, Fields};
pub use mapping::{order_of, to_event};
pub use query::{classify, query_request, txn_time, QueryAnswer, QueryTarget, DEFAULT_BIZ_TYPE};
pub use settings::{GatewayConfig, UnionPayConfig, UNIONPAY_IDENTITY};
pub use settlement::{
    decode_file_content, encode_file_content, file_request, inflate_file_content, mmdd, parse_zm,
    parse_zme, unzip, write_zm, write_zme, zm_file, zme_file, SettlementError, ZmRecord, ZmeRecord,
    ZME_MIN_RECORD_LEN, ZM_MIN_RECORD_LEN, ZM_RECORD_LEN,
};
pub use sign::{sign_fields, verify_request, MerchantSigner, SigningKey};
pub use verify::{Explanation, UnionPayVerifier, Verified, VerifierConfig};
