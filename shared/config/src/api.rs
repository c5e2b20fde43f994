//! `[api]`: the read API and its keys (docs/api.md). It listens on its own
//! address, never the public ingest port, and answers only requests that
//! carry one of the configured keys.

use std::net::SocketAddr;

use paynotify_schemes::secret::SecretRef;
use serde::Deserialize;

/// Where the read API listens and who may call it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Where it listens (`serve` starts it); no listener without it.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The keys that may call it; at least one when it listens, unless
    /// the console is behind a load balancer's OIDC sign-in.
    #[serde(default)]
    pub keys: Vec<ApiKeyConfig>,
    /// The console behind an AWS Application Load Balancer that signs
    /// users in with OIDC (`authenticate-oidc`): who the load balancer
    /// says is signed in, in its signed `x-amzn-oidc-data` header.
    #[serde(default)]
    pub oidc: Option<AlbOidcConfig>,
    /// `paynotify-api`'s own admin listener (`/healthz`, `/readyz`,
    /// `/metrics`; the load balancer's health check).
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: None,
            keys: Vec::new(),
            oidc: None,
            admin_listen: default_admin_listen(),
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9093))
}

/// The console's users as an Application Load Balancer's OIDC sign-in
/// names them. The header is trusted only once verified: signed (ES256)
/// by the load balancer's key for its `kid`, by this load balancer
/// (`signer`: every load balancer of a region shares the key server),
/// for this identity provider (`iss`), and not expired.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlbOidcConfig {
    /// The load balancer's ARN, which its tokens name as their `signer`.
    pub load_balancer_arn: String,
    /// The identity provider's issuer, which its tokens name as `iss`.
    pub issuer: String,
    /// Where the load balancer's public keys are, a key's id appended.
    /// By default AWS's key server of the load balancer's region (for
    /// `aws` and `aws-us-gov` ARNs; any other partition must set it).
    #[serde(default)]
    pub public_keys_url: Option<String>,
    /// Users (their `email` claim, or `sub` when it has none) who may act.
    #[serde(default)]
    pub operators: Vec<String>,
    /// Users who may read. Empty: everyone the identity provider admits
    /// (the operators always may).
    #[serde(default)]
    pub readers: Vec<String>,
    /// What the console's form tokens are signed with, the same for
    /// every process behind the load balancer (at least 32 characters).
    pub form_secret: SecretRef,
}

impl AlbOidcConfig {
    /// The key server's URL, a key's id to be appended.
    ///
    /// # Errors
    /// An ARN that is not a load balancer's, or of a partition with no
    /// known key server and no `public_keys_url`.
    pub fn keys_url(&self) -> Result<String, String> {
        if let Some(url) = &self.public_keys_url {
            let loopback = ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"]
                .iter()
                .any(|p| url.starts_with(p));
            if !url.starts_with("https://") && !loopback {
                return Err(format!(
                    "api.oidc.public_keys_url must be https:// (or a loopback http:// for tests): {url:?}"
                ));
            }
            return Ok(if url.ends_with('/') {
                url.clone()
            } else {
                format!("{url}/")
            });
        }
        let parts: Vec<&str> = self.load_balancer_arn.split(':').collect();
        let (partition, service, region) = match parts.as_slice() {
            ["arn", partition, service, region, _, _] => (*partition, *service, *region),
            _ => {
                return Err(format!(
                    "api.oidc.load_balancer_arn is not an ARN: {:?}",
                    self.load_balancer_arn
                ))
            }
        };
        let region_ok = !region.is_empty()
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if service != "elasticloadbalancing" || !region_ok {
            return Err(format!(
                "api.oidc.load_balancer_arn is not a load balancer's ARN: {:?}",
                self.load_balancer_arn
            ));
        }
        match partition {
            "aws" => Ok(format!("https://public-keys.auth.elb.{region}.amazonaws.com/")),
            "aws-us-gov" => Ok(format!(
                "https://s3-{region}.amazonaws.com/aws-elb-public-keys-prod-{region}/"
            )),
            other => Err(format!(
                "api.oidc: no known key server for partition {other:?}; set api.oidc.public_keys_url"
            )),
        }
    }
}

/// One API key: a name for the audit records, what it may do, and the
/// key itself behind a reference (read when the listener starts; only its
/// SHA-256 digest is kept).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub name: String,
    pub scope: ApiScope,
    pub secret: SecretRef,
}

/// What a key may do: `read` reads; `operate` also redrives, resends and
/// resolves (and reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiScope {
    Read,
    Operate,
}

impl ApiScope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Operate => "operate",
        }
    }
}

impl ApiConfig {
    /// # Errors
    /// A listener without keys (it would answer nobody, or everybody),
    /// keys without a name or with one name twice.
    pub fn validate(&self) -> Result<(), String> {
        if self.listen.is_some() && self.keys.is_empty() && self.oidc.is_none() {
            return Err(
                "api.listen is set but api.keys is empty: every request would be refused; \
                        add a [[api.keys]] with a name, a scope and a secret reference"
                    .into(),
            );
        }
        if let Some(listen) = self.listen {
            let same_port = listen.port() != 0 && listen.port() == self.admin_listen.port();
            let same_ip = listen.ip() == self.admin_listen.ip()
                || listen.ip().is_unspecified()
                || self.admin_listen.ip().is_unspecified();
            if same_port && same_ip {
                return Err(format!(
                    "api.admin_listen ({}) is api.listen's address: paynotify-api's health checks have their own",
                    self.admin_listen
                ));
            }
        }
        if let Some(oidc) = &self.oidc {
            oidc.keys_url()?;
            if oidc.issuer.is_empty() {
                return Err(
                    "api.oidc.issuer is empty: the identity provider's issuer is needed".into(),
                );
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for k in &self.keys {
            if k.name.is_empty() || !names.insert(k.name.as_str()) {
                return Err(format!(
                    "api.keys: every key needs a name of its own ({:?})",
                    k.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oidc(arn: &str, issuer: &str) -> AlbOidcConfig {
        AlbOidcConfig {
            load_balancer_arn: arn.into(),
            issuer: issuer.into(),
            public_keys_url: None,
            operators: vec![],
            readers: vec![],
            form_secret: SecretRef::File("/s".into()),
        }
    }

    #[test]
    fn a_console_behind_the_load_balancer_needs_no_keys_but_a_valid_sign_in() {
        let arn = "arn:aws:elasticloadbalancing:eu-west-1:1:loadbalancer/app/a/b";
        let mut c = ApiConfig {
            listen: Some("127.0.0.1:8082".parse().unwrap()),
            ..ApiConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("api.keys is empty"));
        c.oidc = Some(oidc(arn, "https://idp.example.com"));
        assert_eq!(c.validate(), Ok(()));
        c.oidc = Some(oidc(arn, ""));
        assert!(c.validate().unwrap_err().contains("issuer"));
        c.oidc = Some(oidc("arn:aws:s3:::bucket", "https://idp.example.com"));
        assert!(c.validate().unwrap_err().contains("load balancer"));
    }

    #[test]
    fn the_admin_listener_is_not_the_apis() {
        let arn = "arn:aws:elasticloadbalancing:eu-west-1:1:loadbalancer/app/a/b";
        let mut c = ApiConfig {
            listen: Some("0.0.0.0:9093".parse().unwrap()),
            oidc: Some(oidc(arn, "https://idp.example.com")),
            ..ApiConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("admin_listen"));
        c.listen = Some("127.0.0.1:9092".parse().unwrap());
        assert_eq!(c.validate(), Ok(()));
    }
}
