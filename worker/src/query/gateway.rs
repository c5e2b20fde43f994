//! The way to UnionPay's gateway of each source that has one: settings,
//! the merchant's signing key, an HTTP client.

use super::*;

/// One source's way to UnionPay: its settings, the merchant's key and an
/// HTTP client.
#[derive(Debug)]
pub struct SourceGateway {
    pub source: String,
    pub config: GatewayConfig,
    pub key: SigningKey,
    pub client: GatewayClient,
}

impl SourceGateway {
    /// Reads the signing key and builds the client.
    ///
    /// # Errors
    /// A key that cannot be read or does not open, as a [`ConfigError`].
    pub async fn load(
        source: &str,
        config: &GatewayConfig,
        secrets: Option<&dyn paynotify_ports::SecretStore>,
    ) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Source {
            source_name: source.to_owned(),
            why,
        };
        let read = |r: &SecretRef| {
            let r = r.clone();
            async move {
                paynotify_runtime::secret::read(&r, secrets)
                    .await
                    .map_err(|e| format!("reading {r}: {e}"))
            }
        };
        let key_bytes = read(&config.signing_key).await.map_err(bad)?;
        let key = match (&config.signing_cert, &config.signing_key_password) {
            (Some(cert), _) => {
                let cert = read(cert).await.map_err(bad)?;
                SigningKey::from_pem(key_bytes.expose(), cert.expose())
            }
            (None, Some(password)) => {
                let password = read(password).await.map_err(bad)?;
                let text = String::from_utf8_lossy(password.expose());
                SigningKey::from_pkcs12(key_bytes.expose(), text.trim_end_matches(['\r', '\n']))
            }
            (None, None) => {
                return Err(bad(
                    "gateway has no signing_cert or signing_key_password".into()
                ))
            }
        }
        .map_err(|e| bad(format!("signing key {}: {e}", config.signing_key)))?;
        let client = GatewayClient::new(ClientSettings {
            timeout: Duration::from_millis(config.timeout_ms),
            retries: config.retries,
            max_requests_per_sec: config.max_requests_per_sec,
            first_backoff: Duration::from_millis(200),
        })
        .map_err(bad)?;
        Ok(Self {
            source: source.to_owned(),
            config: config.clone(),
            key,
            client,
        })
    }

    /// How long a claim on a watch lasts: twice every try of one query and
    /// its backoff. A worker that dies holding it leaves it to expire; the
    /// watch is then asked again (a final answer already applied is a
    /// duplicate).
    pub fn lease(&self) -> Duration {
        let one = Duration::from_millis(self.config.timeout_ms);
        (one * (self.config.retries + 2) * 2).max(Duration::from_secs(5))
    }

    /// A failure answer is final once the transaction is older than the
    /// last step of the schedule.
    pub fn failure_final_after(&self) -> Duration {
        Duration::from_secs(
            self.config
                .query_schedule_secs
                .last()
                .copied()
                .unwrap_or(7200),
        )
    }
}

/// The gateways of every UnionPay source that has one.
#[derive(Debug, Default, Clone)]
pub struct Gateways(pub(super) BTreeMap<String, Arc<SourceGateway>>);

impl Gateways {
    /// Loads every `[sources.NAME.unionpay.gateway]`.
    ///
    /// # Errors
    /// The first source whose key cannot be used.
    pub async fn load(
        config: &Config,
        secrets: Option<&dyn paynotify_ports::SecretStore>,
    ) -> Result<Self, ConfigError> {
        let mut out = BTreeMap::new();
        for (name, source) in &config.sources {
            if source.scheme != SchemeKind::Unionpay {
                continue;
            }
            if let Some(g) = source.unionpay.as_ref().and_then(|u| u.gateway.as_ref()) {
                out.insert(
                    name.clone(),
                    Arc::new(SourceGateway::load(name, g, secrets).await?),
                );
            }
        }
        Ok(Self(out))
    }

    /// The gateway of `source`.
    pub fn get(&self, source: &str) -> Option<&Arc<SourceGateway>> {
        self.0.get(source)
    }

    /// Whether any source asks on its own.
    pub fn any_auto(&self) -> bool {
        self.0.values().any(|g| g.config.auto_query)
    }
}
