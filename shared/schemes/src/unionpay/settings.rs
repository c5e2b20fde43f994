//! A UnionPay source's settings: whom to trust, and how to talk to the
//! gateway as the merchant.

use serde::Deserialize;

use super::fields::BodyFormat;
use crate::secret::SecretRef;

/// The CN identity of UnionPay's production signing certificates.
pub const UNIONPAY_IDENTITY: &str = "中国银联股份有限公司";

/// Trust settings of a UnionPay source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnionPayConfig {
    pub root_cert: SecretRef,
    pub middle_cert: SecretRef,
    /// Third `@` field of the signing certificate's CN.
    #[serde(default = "default_identity")]
    pub identity: String,
    /// UnionPay signing certificates for 5.0.0 messages (chosen by `certId`).
    #[serde(default)]
    pub verify_certs: Vec<SecretRef>,
    #[serde(default)]
    pub body_format: BodyFormat,
    /// The merchant's side: requests signed with the merchant's key to
    /// UnionPay's gateway (status queries, settlement files). Without it
    /// the source only receives notifications.
    #[serde(default)]
    pub gateway: Option<GatewayConfig>,
}

/// How paynotify talks to UnionPay's gateway for one source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The merchant signing key: a PKCS#12 file as UnionPay issues it
    /// (`.pfx`, with `signing_key_password`), or a PKCS#8 PEM key with its
    /// certificate in `signing_cert`.
    pub signing_key: SecretRef,
    #[serde(default)]
    pub signing_cert: Option<SecretRef>,
    #[serde(default)]
    pub signing_key_password: Option<SecretRef>,
    /// Base URL of the transaction gateway (`…/gateway/api/queryTrans.do`
    /// is under it). Test environment: `https://gateway.test.95516.com`.
    #[serde(default = "default_gateway_url")]
    pub url: String,
    /// Base URL of the file download host (settlement files are `POST`ed
    /// to its root). Test environment: `https://filedownload.test.95516.com`.
    #[serde(default = "default_file_url")]
    pub file_url: String,
    /// `bizType` of status queries.
    #[serde(default = "default_biz_type")]
    pub biz_type: String,
    /// Whether workers ask about payments whose result is late on their own.
    #[serde(default = "default_true")]
    pub auto_query: bool,
    /// Seconds after a payment was expected (or first seen in process, or
    /// a refund parked for it) at which to ask: UnionPay's advice of 5, 10,
    /// 30, 60 and 120 minutes by default. After the last one the last
    /// answer stands, and a failure is final only from then on (before it,
    /// UnionPay says a front transaction's failure may still change).
    #[serde(default = "default_query_schedule")]
    pub query_schedule_secs: Vec<u64>,
    /// Time allowed for one request, connection included.
    #[serde(default = "default_gateway_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries of a request that failed in the network or with a 5xx, with
    /// exponential backoff.
    #[serde(default = "default_gateway_retries")]
    pub retries: u32,
    /// Most requests per second one process sends to this gateway.
    #[serde(default = "default_gateway_rate")]
    pub max_requests_per_sec: u32,
}

fn default_gateway_url() -> String {
    "https://gateway.95516.com".into()
}
fn default_file_url() -> String {
    "https://filedownload.95516.com".into()
}
fn default_biz_type() -> String {
    "000000".into()
}
fn default_true() -> bool {
    true
}
fn default_query_schedule() -> Vec<u64> {
    vec![300, 600, 1800, 3600, 7200]
}
fn default_gateway_timeout_ms() -> u64 {
    10_000
}
fn default_gateway_retries() -> u32 {
    2
}
fn default_gateway_rate() -> u32 {
    10
}

impl GatewayConfig {
    /// Checks what serde cannot: URLs, the key, the schedule.
    ///
    /// # Errors
    /// What is wrong, in words.
    pub fn check(&self) -> Result<(), String> {
        for (key, url) in [("url", &self.url), ("file_url", &self.file_url)] {
            let Some((scheme, rest)) = url.split_once("://") else {
                return Err(format!("gateway.{key} {url:?} is not a URL"));
            };
            let host = rest.split(['/', ':']).next().unwrap_or("");
            let loopback = host == "localhost" || host.starts_with("127.") || host == "[::1]";
            match scheme {
                "https" => {}
                "http" if loopback => {}
                _ => {
                    return Err(format!(
                        "gateway.{key} {url:?}: https only (http only to a loopback test gateway)"
                    ))
                }
            }
        }
        if self.signing_cert.is_none() && self.signing_key_password.is_none() {
            return Err("gateway needs `signing_key_password` (a PKCS#12 key) or `signing_cert` (a PEM key)".into());
        }
        if self.query_schedule_secs.is_empty()
            || self.query_schedule_secs.windows(2).any(|w| w[0] >= w[1])
        {
            return Err("gateway.query_schedule_secs must be increasing and not empty".into());
        }
        if self.timeout_ms == 0 || self.max_requests_per_sec == 0 {
            return Err(
                "gateway.timeout_ms and gateway.max_requests_per_sec must be positive".into(),
            );
        }
        Ok(())
    }
}

fn default_identity() -> String {
    UNIONPAY_IDENTITY.to_owned()
}
