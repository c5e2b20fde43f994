//! Outbound calls to a PSP's API (UnionPay's gateway): one HTTP client per
//! source with a timeout, retries with exponential backoff on network
//! errors, timeouts and 5xx answers (never on a 4xx or a 2xx: a request
//! UnionPay answered is not sent again), and a rate limit.
//!
//! hyper's client, TLS by rustls on aws-lc-rs with the system's root
//! certificates: what the AWS SDK already builds, so no second TLS stack.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The largest answer read (a settlement file of a busy merchant is a few
/// MB of compressed text).
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// One HTTP answer, as received.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a call got no usable answer. Every kind is transient: asking again
/// later may succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("network error: {0}")]
    Network(String),
    #[error("HTTP {status}: {preview}")]
    Status {
        status: u16,
        preview: String,
        /// The whole answer, to be archived as it came.
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    #[error("answer larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
}

impl GatewayError {
    fn retryable(&self) -> bool {
        match self {
            Self::Timeout(_) | Self::Network(_) => true,
            Self::Status { status, .. } => *status >= 500,
            Self::TooLarge => false,
        }
    }
}

/// Spaces calls at least `interval` apart: each call reserves the next slot.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    next: Mutex<Instant>,
}

impl RateLimit {
    /// At most `n` calls a second (1 when `n` is 0).
    pub fn per_second(n: u32) -> Self {
        Self {
            interval: Duration::from_secs(1) / n.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this call's slot.
    pub async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// Settings of one client.
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    pub timeout: Duration,
    pub retries: u32,
    pub max_requests_per_sec: u32,
    /// The first backoff; doubled on each retry.
    pub first_backoff: Duration,
}

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// `inner` with TLS (rustls on aws-lc-rs, the system's root certificates)
/// for `https://` and plain `http://` passed through (what the
/// configuration allows of it is decided there).
///
/// # Errors
/// When no root certificate can be loaded (install the system's CA
/// certificates).
pub fn tls<C>(inner: C) -> Result<hyper_rustls::HttpsConnector<C>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider)
        .map_err(|e| format!("TLS root certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(inner))
}

/// An HTTP client for one gateway.
#[derive(Clone)]
pub struct GatewayClient {
    http: hyper_util::client::legacy::Client<Https, http_body_util::Full<bytes::Bytes>>,
    settings: ClientSettings,
    limit: Arc<RateLimit>,
}

impl std::fmt::Debug for GatewayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl GatewayClient {
    /// A client with these settings, trusting the system's root
    /// certificates (plain `http://` is for a loopback test gateway; the
    /// configuration allows nothing else).
    ///
    /// # Errors
    /// When no root certificate can be loaded (install the system's CA
    /// certificates) or TLS cannot be set up.
    pub fn new(settings: ClientSettings) -> Result<Self, String> {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.enforce_http(false);
        let https = tls(connector)?;
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        Ok(Self {
            http,
            settings,
            limit: Arc::new(RateLimit::per_second(settings.max_requests_per_sec)),
        })
    }

    /// `POST`s a form body (`application/x-www-form-urlencoded;charset=UTF-8`)
    /// and returns the first 2xx-4xx answer; retries what [`GatewayError`]
    /// says is transient, `retries` times.
    ///
    /// # Errors
    /// The last error when every try failed.
    pub async fn post_form(&self, url: &str, body: &str) -> Result<HttpAnswer, GatewayError> {
        self.call(url, Some(body)).await
    }

    /// `GET`s `url`, with the same timeout, retries and rate limit as
    /// [`GatewayClient::post_form`].
    ///
    /// # Errors
    /// The last error when every try failed.
    pub async fn get(&self, url: &str) -> Result<HttpAnswer, GatewayError> {
        self.call(url, None).await
    }

    /// A `POST` of a form `body`, or a `GET` without one.
    async fn call(&self, url: &str, body: Option<&str>) -> Result<HttpAnswer, GatewayError> {
        let attempt = || async {
            self.limit.wait().await;
            match tokio::time::timeout(self.settings.timeout, self.once(url, body)).await {
                Ok(r) => r,
                Err(_) => Err(GatewayError::Timeout(self.settings.timeout)),
            }
        };
        attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(self.settings.first_backoff)
                    .with_max_times(self.settings.retries as usize)
                    .with_jitter(),
            )
            .when(GatewayError::retryable)
            .notify(|e, after| {
                tracing::warn!(error = %e, retry_in_ms = after.as_millis() as u64, "gateway call failed; retrying");
            })
            .await
    }

    async fn once(&self, url: &str, body: Option<&str>) -> Result<HttpAnswer, GatewayError> {
        use http_body_util::BodyExt;
        let request = match body {
            Some(body) => hyper::Request::post(url)
                .header(
                    hyper::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded;charset=UTF-8",
                )
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.to_owned(),
                ))),
            None => hyper::Request::get(url).body(http_body_util::Full::default()),
        }
        .map_err(|e| GatewayError::Network(format!("bad request: {e}")))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| GatewayError::Network(error_chain(&e)))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let bytes = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    GatewayError::TooLarge
                } else {
                    GatewayError::Network(error_chain(e.as_ref()))
                }
            })?
            .to_bytes()
            .to_vec();
        if status >= 500 {
            return Err(GatewayError::Status {
                status,
                preview: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
                headers,
                body: bytes,
            });
        }
        Ok(HttpAnswer {
            status,
            headers,
            body: bytes,
        })
    }
}

/// An error with its sources, for a useful one-line message.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_spaces_calls() {
        let limit = RateLimit {
            interval: Duration::from_millis(100),
            next: Mutex::new(Instant::now()),
        };
        let start = Instant::now();
        for _ in 0..5 {
            limit.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(400));
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(GatewayError::Timeout(Duration::from_secs(1)).retryable());
        assert!(GatewayError::Network("reset".into()).retryable());
        let status = |status| GatewayError::Status {
            status,
            preview: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
        };
        assert!(status(503).retryable());
        assert!(!status(404).retryable());
        assert!(!GatewayError::TooLarge.retryable());
    }
}
