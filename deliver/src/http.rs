//! One endpoint's HTTP client: `POST` with a timeout on connecting and on
//! the whole answer, no redirects followed (a 3xx is a failure), at most
//! [`MAX_ANSWER_BYTES`] of an answer read, a rate limit, and addresses
//! checked before connecting: the names are resolved here and only
//! allowed addresses are handed to the connector (no second lookup that a
//! rebinding DNS could answer differently).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use paynotify_runtime::gateway::{error_chain, tls, RateLimit};

/// The most of an answer read (its start is kept for the error).
pub const MAX_ANSWER_BYTES: usize = 16 << 10;

/// The addresses never connected to: the cloud metadata services (EC2's
/// IPv4 and IPv6 instance metadata, ECS's task credentials).
const METADATA: [IpAddr; 3] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];

/// Whether a delivery may connect to `ip`: never to a metadata address,
/// an unspecified, broadcast, multicast or reserved one; to loopback,
/// private, shared (CGNAT) and link-local ones only when `allow_private`.
pub fn allowed(ip: IpAddr, allow_private: bool) -> bool {
    let ip = ip.to_canonical();
    if METADATA.contains(&ip) {
        return false;
    }
    let (never, private) = match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            let never = v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || a >= 240
                || (a == 192 && b == 0 && c == 0)
                || v4.is_documentation()
                || (a == 198 && (b == 18 || b == 19));
            let private = v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (a == 100 && (64..128).contains(&b));
            (never, private)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            let never = v6.is_unspecified()
                || v6.is_multicast()
                || first == 0x2001 && v6.segments()[1] == 0xdb8;
            let private =
                v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80;
            (never, private)
        }
    };
    !never && (allow_private || !private)
}

/// Resolves a name and keeps the allowed addresses; none left is an error.
#[derive(Clone)]
struct CheckedResolver {
    allow_private: bool,
}

type Addrs = std::vec::IntoIter<SocketAddr>;

impl tower::Service<Name> for CheckedResolver {
    type Response = Addrs;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Addrs, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| allowed(a.ip(), allow_private))
                .collect();
            if kept.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{} resolves only to refused addresses", name.as_str()),
                ));
            }
            Ok(kept.into_iter())
        })
    }
}

/// Settings of one endpoint's client.
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    pub timeout: Duration,
    pub max_requests_per_sec: u32,
    pub allow_private: bool,
}

/// What an endpoint answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// `retry-after` in seconds, when given.
    pub retry_after: Option<u64>,
    /// The start of the body, for the error.
    pub preview: String,
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("refused address: {0}")]
    Refused(String),
    #[error("network error: {0}")]
    Network(String),
}

type Https = hyper_rustls::HttpsConnector<HttpConnector<CheckedResolver>>;

/// The client of one endpoint.
#[derive(Clone)]
pub struct EndpointClient {
    http: hyper_util::client::legacy::Client<Https, Full<bytes::Bytes>>,
    settings: ClientSettings,
    limit: Arc<RateLimit>,
}

impl EndpointClient {
    /// A client with the system's root certificates.
    ///
    /// # Errors
    /// When no root certificate can be loaded.
    pub fn new(settings: ClientSettings) -> Result<Self, String> {
        let mut http = HttpConnector::new_with_resolver(CheckedResolver {
            allow_private: settings.allow_private,
        });
        http.enforce_http(false);
        http.set_connect_timeout(Some(settings.timeout));
        let https = tls(http)?;
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(https);
        Ok(Self {
            http,
            settings,
            limit: Arc::new(RateLimit::per_second(settings.max_requests_per_sec)),
        })
    }

    /// `POST`s `body` as JSON with `headers` to `url`.
    ///
    /// # Errors
    /// [`SendError`] when nothing was answered in time.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: bytes::Bytes,
    ) -> Result<Answer, SendError> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| SendError::Network(format!("bad URL: {e}")))?;
        // A literal address is never resolved, so it is checked here.
        if let Some(ip) = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse::<IpAddr>().ok())
        {
            if !allowed(ip, self.settings.allow_private) {
                return Err(SendError::Refused(ip.to_string()));
            }
        }
        self.limit.wait().await;
        let mut request = hyper::Request::post(uri)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("paynotify/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| SendError::Network(format!("bad request: {e}")))?;
        let timeout = self.settings.timeout;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| {
                let text = error_chain(&e);
                if text.contains("refused addresses") {
                    SendError::Refused(text)
                } else {
                    SendError::Network(text)
                }
            })?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            // Only the start of the answer matters; a longer one is cut.
            let mut body = Limited::new(response.into_body(), MAX_ANSWER_BYTES);
            let mut preview = Vec::new();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            preview.extend_from_slice(d);
                        }
                    }
                    Err(_) => break,
                }
            }
            preview.truncate(200);
            Ok(Answer {
                status,
                retry_after,
                preview: String::from_utf8_lossy(&preview).into_owned(),
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Timeout(timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn metadata_and_reserved_addresses_are_never_allowed() {
        for a in [
            "169.254.169.254",
            "169.254.170.2",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "::",
            "ff02::1",
        ] {
            assert!(!allowed(ip(a), true), "{a}");
            assert!(!allowed(ip(a), false), "{a}");
        }
    }

    #[test]
    fn private_addresses_need_the_setting() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "::1",
            "fc00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!allowed(ip(a), false), "{a}");
            assert!(allowed(ip(a), true), "{a}");
        }
        for a in ["93.184.216.34", "2606:2800:220:1::1"] {
            assert!(allowed(ip(a), false), "{a}");
        }
    }

    #[tokio::test]
    async fn a_literal_metadata_address_is_refused_before_connecting() {
        let client = EndpointClient::new(ClientSettings {
            timeout: Duration::from_secs(1),
            max_requests_per_sec: 10,
            allow_private: true,
        })
        .unwrap();
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
        ] {
            let e = client
                .post(url, &[], bytes::Bytes::new())
                .await
                .unwrap_err();
            assert!(matches!(e, SendError::Refused(_)), "{url}: {e}");
        }
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_without_the_setting() {
        let client = EndpointClient::new(ClientSettings {
            timeout: Duration::from_secs(2),
            max_requests_per_sec: 10,
            allow_private: false,
        })
        .unwrap();
        let e = client
            .post("http://localhost:9/", &[], bytes::Bytes::new())
            .await
            .unwrap_err();
        assert!(matches!(e, SendError::Refused(_)), "{e}");
    }
}
