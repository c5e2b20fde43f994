//! The console's users behind an AWS Application Load Balancer that signs
//! them in with OIDC (`authenticate-oidc`; docs/console.md#on-aws). The
//! load balancer passes who is signed in as a JWT in `x-amzn-oidc-data`,
//! and the header is trusted only once verified here:
//!
//! - `alg` is `ES256`, nothing else (no `none`, no HMAC);
//! - `signer` is this load balancer's ARN, checked before any key is
//!   fetched: every load balancer of a region shares the key server, so a
//!   token minted by another account's load balancer verifies under its
//!   own key and only `signer` tells them apart;
//! - the signature verifies under the public key the key server holds for
//!   the token's `kid` (fetched once per key, and kept);
//! - `iss` is the configured identity provider, and `exp` is not past.
//!
//! ALB writes its tokens in base64url *with* padding, which many JWT
//! libraries refuse; the three parts are decoded here, with or without.
//! Without `api.oidc` the header is never read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use base64::Engine as _;
use paynotify_shared::config::{AlbOidcConfig, ApiScope};
use paynotify_shared::gateway::{ClientSettings, GatewayClient, GatewayError};
use paynotify_shared::ports::SecretStore;
use serde_json::Value;
use time::OffsetDateTime;

use super::keys::{Key, MIN_KEY_LEN};

/// The header the load balancer sets.
pub const HEADER: &str = "x-amzn-oidc-data";
/// The longest token read (ALB's are a few hundred bytes to a few KB,
/// with the identity provider's claims).
const MAX_TOKEN: usize = 16 * 1024;
/// Clock difference allowed between the load balancer and this process.
const LEEWAY_SECS: i64 = 60;
/// Keys kept at most (ALB rotates them; a handful are live at once).
const MAX_KEYS: usize = 64;
/// The longest user name taken from a token.
const MAX_USER: usize = 256;

/// Why a token is not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OidcError {
    /// Not a token of this load balancer for this identity provider, not
    /// signed by its key, or expired: the request is not signed in.
    #[error("the load balancer's sign-in token is not valid: {0}")]
    Invalid(String),
    /// The key server did not answer; asking again may succeed.
    #[error("the load balancer's key server could not be reached: {0}")]
    KeyServer(String),
}

fn invalid(why: impl Into<String>) -> OidcError {
    OidcError::Invalid(why.into())
}

/// Who a verified token names, and what they may do (`None`: signed in,
/// but not one of `readers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub scope: Option<ApiScope>,
}

/// The verifier of one load balancer's tokens.
pub struct AlbOidc {
    signer: String,
    issuer: String,
    keys_url: String,
    operators: Vec<String>,
    readers: Vec<String>,
    form_secret: Vec<u8>,
    client: GatewayClient,
    keys: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

impl std::fmt::Debug for AlbOidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlbOidc")
            .field("signer", &self.signer)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl AlbOidc {
    /// The verifier `config` describes, its form secret read.
    ///
    /// # Errors
    /// The form secret cannot be read or is shorter than 32 characters,
    /// the key server's URL cannot be made, or TLS cannot be set up.
    pub async fn load(
        config: &AlbOidcConfig,
        secrets: Option<&dyn SecretStore>,
    ) -> anyhow::Result<Self> {
        let keys_url = config.keys_url().map_err(anyhow::Error::msg)?;
        let secret = paynotify_shared::secret::read(&config.form_secret, secrets)
            .await
            .map_err(|e| anyhow::anyhow!("api.oidc.form_secret: {e}"))?;
        let form_secret = secret.expose().trim_ascii().to_vec();
        if form_secret.len() < MIN_KEY_LEN {
            anyhow::bail!("api.oidc.form_secret: at least {MIN_KEY_LEN} characters");
        }
        let client = GatewayClient::new(ClientSettings {
            timeout: Duration::from_secs(5),
            retries: 2,
            max_requests_per_sec: 50,
            first_backoff: Duration::from_millis(100),
        })
        .map_err(anyhow::Error::msg)?;
        Ok(Self {
            signer: config.load_balancer_arn.clone(),
            issuer: config.issuer.clone(),
            keys_url,
            operators: config.operators.clone(),
            readers: config.readers.clone(),
            form_secret,
            client,
            keys: Mutex::new(HashMap::new()),
        })
    }

    /// Who `token` (the header's value) names, once it is verified.
    ///
    /// # Errors
    /// [`OidcError::Invalid`] for any token that is not one of this load
    /// balancer's, valid at `now`; [`OidcError::KeyServer`] when its key
    /// could not be fetched.
    pub async fn verify(&self, token: &str, now: OffsetDateTime) -> Result<Identity, OidcError> {
        if token.len() > MAX_TOKEN {
            return Err(invalid("longer than any the load balancer sends"));
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [head, body, signature] = parts.as_slice() else {
            return Err(invalid("not three parts"));
        };
        let header: Value = serde_json::from_slice(&unb64(head).ok_or_else(|| invalid("header"))?)
            .map_err(|_| invalid("header is not JSON"))?;
        if header["alg"].as_str() != Some("ES256") {
            return Err(invalid("alg is not ES256"));
        }
        if header["signer"].as_str() != Some(self.signer.as_str()) {
            return Err(invalid("signed by another load balancer"));
        }
        let kid = header["kid"].as_str().unwrap_or_default();
        let kid_ok = (1..=128).contains(&kid.len())
            && kid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !kid_ok {
            return Err(invalid("kid"));
        }
        let key = self.key(kid).await?;
        let signature = unb64(signature).ok_or_else(|| invalid("signature"))?;
        let signed = &token.as_bytes()[..head.len() + 1 + body.len()];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.as_slice())
            .verify(signed, &signature)
            .map_err(|_| invalid("the signature does not verify"))?;
        let claims: Value = serde_json::from_slice(&unb64(body).ok_or_else(|| invalid("claims"))?)
            .map_err(|_| invalid("claims are not JSON"))?;
        self.check_times_and_issuer(&header, &claims, now)?;
        let user = claims["email"]
            .as_str()
            .filter(|e| !e.is_empty())
            .or_else(|| claims["sub"].as_str())
            .filter(|u| !u.is_empty() && u.len() <= MAX_USER && !u.chars().any(char::is_control))
            .ok_or_else(|| invalid("no email or sub claim"))?
            .to_owned();
        Ok(Identity {
            scope: self.scope_of(&user),
            user,
        })
    }

    fn check_times_and_issuer(
        &self,
        header: &Value,
        claims: &Value,
        now: OffsetDateTime,
    ) -> Result<(), OidcError> {
        let exps: Vec<&Value> = [&header["exp"], &claims["exp"]]
            .into_iter()
            .filter(|v| !v.is_null())
            .collect();
        if exps.is_empty() {
            return Err(invalid("no exp"));
        }
        for exp in exps {
            let exp = exp.as_i64().ok_or_else(|| invalid("exp is not a time"))?;
            if now.unix_timestamp() > exp + LEEWAY_SECS {
                return Err(invalid("expired"));
            }
        }
        let issuers: Vec<&Value> = [&header["iss"], &claims["iss"]]
            .into_iter()
            .filter(|v| !v.is_null())
            .collect();
        if issuers.is_empty() || issuers.iter().any(|i| i.as_str() != Some(&self.issuer)) {
            return Err(invalid("issued by another identity provider"));
        }
        Ok(())
    }

    /// What `user` may do.
    fn scope_of(&self, user: &str) -> Option<ApiScope> {
        let listed = |list: &[String]| list.iter().any(|u| u.eq_ignore_ascii_case(user));
        if listed(&self.operators) {
            Some(ApiScope::Operate)
        } else if self.readers.is_empty() || listed(&self.readers) {
            Some(ApiScope::Read)
        } else {
            None
        }
    }

    /// The key the console signs `identity`'s form tokens with: the form
    /// secret, so that every process behind the load balancer accepts a
    /// form another gave.
    pub fn form_key(&self, name: &str, scope: ApiScope) -> Key {
        Key::from_secret(name, scope, &self.form_secret)
    }

    /// The public key (SubjectPublicKeyInfo DER) of `kid`.
    async fn key(&self, kid: &str) -> Result<Arc<Vec<u8>>, OidcError> {
        if let Some(k) = self.keys.lock().expect("not poisoned").get(kid) {
            return Ok(k.clone());
        }
        let url = format!("{}{kid}", self.keys_url);
        let answer = self.client.get(&url).await.map_err(|e| match e {
            GatewayError::Status { status, .. } => {
                OidcError::KeyServer(format!("HTTP {status} for key {kid}"))
            }
            other => OidcError::KeyServer(other.to_string()),
        })?;
        if answer.status != 200 {
            // The key server knows no such key: no load balancer signed it.
            return Err(invalid(format!("no key {kid} (HTTP {})", answer.status)));
        }
        let der = pem_body(&answer.body)
            .ok_or_else(|| OidcError::KeyServer(format!("key {kid} is not a PEM public key")))?;
        let der = Arc::new(der);
        let mut keys = self.keys.lock().expect("not poisoned");
        if keys.len() >= MAX_KEYS {
            keys.clear();
        }
        keys.insert(kid.to_owned(), der.clone());
        Ok(der)
    }
}

/// base64url, with or without padding.
fn unb64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()
}

/// The DER inside a `PUBLIC KEY` PEM block.
fn pem_body(pem: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let start = text.find("-----BEGIN PUBLIC KEY-----")? + "-----BEGIN PUBLIC KEY-----".len();
    let end = start + text[start..].find("-----END PUBLIC KEY-----")?;
    let b64: String = text[start..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// Tokens as a load balancer makes them, for tests: an ES256 key pair, its
/// public key as the key server serves it, and a key server on loopback.
pub mod minted {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use base64::Engine as _;
    use serde_json::Value;

    /// A key server on loopback holding `keys` (kid → PEM) as AWS's holds
    /// a load balancer's (403 for any other), for `public_keys_url`; it
    /// counts the requests it answers.
    pub async fn key_server(keys: Vec<(&'static str, String)>) -> (String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let keys: Arc<HashMap<&'static str, String>> = Arc::new(keys.into_iter().collect());
        let app = axum::Router::new().route(
            "/{kid}",
            axum::routing::get(
                move |axum::extract::Path(kid): axum::extract::Path<String>| {
                    let keys = keys.clone();
                    seen.fetch_add(1, Ordering::SeqCst);
                    async move {
                        match keys.get(kid.as_str()) {
                            Some(pem) => (axum::http::StatusCode::OK, pem.clone()),
                            None => (axum::http::StatusCode::FORBIDDEN, String::new()),
                        }
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/"), calls)
    }

    /// A load balancer's signing key.
    pub struct Signer {
        pair: EcdsaKeyPair,
    }

    impl Default for Signer {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Signer {
        pub fn new() -> Self {
            Self {
                pair: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                    .expect("a P-256 key"),
            }
        }

        /// The public key as PEM, as the key server answers.
        pub fn public_pem(&self) -> String {
            let der = self.pair.public_key().as_der().expect("DER");
            let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).expect("ASCII"))
                .collect();
            format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                lines.join("\n")
            )
        }

        /// `header.claims.signature`, base64url with padding as ALB writes.
        pub fn token(&self, header: &Value, claims: &Value) -> String {
            self.written(header, claims, &base64::engine::general_purpose::URL_SAFE)
        }

        /// The same, without padding, as most JWT writers make it.
        pub fn token_unpadded(&self, header: &Value, claims: &Value) -> String {
            self.written(
                header,
                claims,
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            )
        }

        fn written(
            &self,
            header: &Value,
            claims: &Value,
            engine: &base64::engine::GeneralPurpose,
        ) -> String {
            let signed = format!(
                "{}.{}",
                engine.encode(header.to_string().as_bytes()),
                engine.encode(claims.to_string().as_bytes())
            );
            let sig = self
                .pair
                .sign(&SystemRandom::new(), signed.as_bytes())
                .expect("signed");
            format!("{signed}.{}", engine.encode(sig.as_ref()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::minted::Signer;
    use super::*;
    use paynotify_shared::config::SecretRef;
    use serde_json::json;

    const ARN: &str =
        "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/pn/0123456789abcdef";
    const ISS: &str = "https://idp.example.com";

    async fn verifier(url: &str, dir: &std::path::Path) -> AlbOidc {
        let secret = dir.join("form.secret");
        std::fs::write(&secret, "f".repeat(40)).unwrap();
        AlbOidc::load(
            &AlbOidcConfig {
                load_balancer_arn: ARN.into(),
                issuer: ISS.into(),
                public_keys_url: Some(url.into()),
                operators: vec!["Ops@Example.com".into()],
                readers: vec!["reader@example.com".into()],
                form_secret: SecretRef::File(secret),
            },
            None,
        )
        .await
        .unwrap()
    }

    fn header(kid: &str) -> Value {
        json!({"alg": "ES256", "kid": kid, "signer": ARN, "iss": ISS, "client": "c", "exp": 2_000_000_000})
    }

    fn claims(email: &str) -> Value {
        json!({"sub": "u-1", "email": email, "exp": 2_000_000_000, "iss": ISS})
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_999_999_000).unwrap()
    }

    #[tokio::test]
    async fn a_load_balancers_token_names_its_user_and_their_scope() {
        let alb = Signer::new();
        let (url, calls) = super::minted::key_server(vec![("k1", alb.public_pem())]).await;
        let dir = tempfile::tempdir().unwrap();
        let v = verifier(&url, dir.path()).await;
        let ops = v
            .verify(&alb.token(&header("k1"), &claims("ops@example.com")), now())
            .await;
        assert_eq!(
            ops,
            Ok(Identity {
                user: "ops@example.com".into(),
                scope: Some(ApiScope::Operate)
            })
        );
        let reader = v
            .verify(
                &alb.token(&header("k1"), &claims("reader@example.com")),
                now(),
            )
            .await;
        assert_eq!(reader.unwrap().scope, Some(ApiScope::Read));
        // Signed in, but in neither list: no scope.
        let other = v
            .verify(&alb.token(&header("k1"), &claims("x@example.com")), now())
            .await;
        assert_eq!(other.unwrap().scope, None);
        // No email: the subject.
        let sub = v
            .verify(
                &alb.token(&header("k1"), &json!({"sub": "u-9", "exp": 2_000_000_000})),
                now(),
            )
            .await;
        assert_eq!(sub.unwrap().user, "u-9");
        // Unpadded, as other JWT writers make it: the same.
        let unpadded = alb.token_unpadded(&header("k1"), &claims("ops@example.com"));
        assert!(!unpadded.contains('='));
        assert_eq!(
            v.verify(&unpadded, now()).await.unwrap().user,
            "ops@example.com"
        );
        // The key was fetched once.
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn forged_foreign_expired_and_malformed_tokens_are_refused() {
        let alb = Signer::new();
        let attacker = Signer::new();
        let (url, calls) = super::minted::key_server(vec![
            ("k1", alb.public_pem()),
            ("evil", attacker.public_pem()),
        ])
        .await;
        let dir = tempfile::tempdir().unwrap();
        let v = verifier(&url, dir.path()).await;
        let good = alb.token(&header("k1"), &claims("ops@example.com"));
        let refused = |r: Result<Identity, OidcError>| matches!(r, Err(OidcError::Invalid(_)));

        // Signed by another key under this load balancer's kid.
        assert!(refused(
            v.verify(
                &attacker.token(&header("k1"), &claims("ops@example.com")),
                now()
            )
            .await
        ));
        // Another account's load balancer with its own, valid key: refused
        // for its signer before its key is fetched.
        let mut foreign = header("evil");
        foreign["signer"] =
            json!("arn:aws:elasticloadbalancing:eu-west-1:999999999999:loadbalancer/app/x/1");
        let before = calls.load(std::sync::atomic::Ordering::SeqCst);
        assert!(refused(
            v.verify(&attacker.token(&foreign, &claims("ops@example.com")), now())
                .await
        ));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), before);
        // Claims changed after signing.
        let parts: Vec<&str> = good.split('.').collect();
        let tampered_claims =
            base64::engine::general_purpose::URL_SAFE.encode(claims("x@example.com").to_string());
        assert!(refused(
            v.verify(
                &format!("{}.{tampered_claims}.{}", parts[0], parts[2]),
                now()
            )
            .await
        ));
        // Another identity provider.
        let mut other_iss = header("k1");
        other_iss["iss"] = json!("https://evil.example.com");
        assert!(refused(
            v.verify(&alb.token(&other_iss, &claims("ops@example.com")), now())
                .await
        ));
        let mut no_iss = header("k1");
        no_iss.as_object_mut().unwrap().remove("iss");
        let mut claims_no_iss = claims("ops@example.com");
        claims_no_iss.as_object_mut().unwrap().remove("iss");
        assert!(refused(
            v.verify(&alb.token(&no_iss, &claims_no_iss), now()).await
        ));
        // Expired (past the leeway), or with no expiry at all.
        let late = OffsetDateTime::from_unix_timestamp(2_000_000_000 + LEEWAY_SECS + 1).unwrap();
        assert!(refused(v.verify(&good, late).await));
        let mut no_exp = header("k1");
        no_exp.as_object_mut().unwrap().remove("exp");
        let mut claims_no_exp = claims("ops@example.com");
        claims_no_exp.as_object_mut().unwrap().remove("exp");
        assert!(refused(
            v.verify(&alb.token(&no_exp, &claims_no_exp), now()).await
        ));
        // alg none, or HS256 with the public key as its secret.
        for alg in ["none", "HS256", "es256"] {
            let mut h = header("k1");
            h["alg"] = json!(alg);
            assert!(
                refused(
                    v.verify(&alb.token(&h, &claims("ops@example.com")), now())
                        .await
                ),
                "{alg}"
            );
        }
        // A kid the key server does not know, or one that would change the URL.
        assert!(refused(
            v.verify(&alb.token(&header("k2"), &claims("ops@example.com")), now())
                .await
        ));
        assert!(refused(
            v.verify(
                &alb.token(&header("../k1"), &claims("ops@example.com")),
                now()
            )
            .await
        ));
        // Truncated, two parts, empty, whitespace, oversized, not base64.
        for bad in [
            &good[..good.len() / 2],
            &good[..good.rfind('.').unwrap()],
            "",
            &format!(" {good}"),
            &"a".repeat(MAX_TOKEN + 1),
            "a.b.c",
            "\u{fffd}.\u{fffd}.\u{fffd}",
        ] {
            assert!(refused(v.verify(bad, now()).await), "{bad:.40}");
        }
        // A user name with control characters.
        assert!(refused(
            v.verify(&alb.token(&header("k1"), &claims("a\nb")), now())
                .await
        ));
        // The good one still passes.
        assert!(v.verify(&good, now()).await.is_ok());
    }

    #[tokio::test]
    async fn a_key_server_that_does_not_answer_is_a_transient_error() {
        let alb = Signer::new();
        // Nothing listens on this port.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let v = verifier(&format!("http://{closed}/"), dir.path()).await;
        let r = v
            .verify(&alb.token(&header("k1"), &claims("ops@example.com")), now())
            .await;
        assert!(matches!(r, Err(OidcError::KeyServer(_))), "{r:?}");
    }

    #[test]
    fn the_key_server_is_the_load_balancers_regions() {
        let config = |arn: &str, url: Option<&str>| AlbOidcConfig {
            load_balancer_arn: arn.into(),
            issuer: ISS.into(),
            public_keys_url: url.map(Into::into),
            operators: vec![],
            readers: vec![],
            form_secret: SecretRef::File("/x".into()),
        };
        assert_eq!(
            config(ARN, None).keys_url().unwrap(),
            "https://public-keys.auth.elb.eu-west-1.amazonaws.com/"
        );
        assert_eq!(
            config(
                "arn:aws-us-gov:elasticloadbalancing:us-gov-west-1:1:loadbalancer/app/a/b",
                None
            )
            .keys_url()
            .unwrap(),
            "https://s3-us-gov-west-1.amazonaws.com/aws-elb-public-keys-prod-us-gov-west-1/"
        );
        assert!(config(
            "arn:aws-cn:elasticloadbalancing:cn-north-1:1:loadbalancer/app/a/b",
            None
        )
        .keys_url()
        .is_err());
        assert!(config("arn:aws:s3:::bucket", None).keys_url().is_err());
        assert!(config(
            "arn:aws:elasticloadbalancing:eu-west-1/x:1:loadbalancer/app/a/b",
            None
        )
        .keys_url()
        .is_err());
        assert!(config(ARN, Some("http://keys.example.com/"))
            .keys_url()
            .is_err());
        assert_eq!(
            config(ARN, Some("http://127.0.0.1:9/k"))
                .keys_url()
                .unwrap(),
            "http://127.0.0.1:9/k/"
        );
    }
}
