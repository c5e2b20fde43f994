//! One typed configuration: defaults, then the TOML file, then `PAYNOTIFY__*`
//! environment variables (`PAYNOTIFY__SOURCES__UNIONPAY__SUCCESS_BODY=ok`).
//! Keys and certificates are only ever references ([`SecretRef`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod api;
mod backend;
mod deliveries;
mod servers;
mod sources;

pub use api::{AlbOidcConfig, ApiConfig, ApiKeyConfig, ApiScope};
pub use backend::{AwsConfig, BackendConfig, BackendKind, Sse, MAX_QUEUE_SHARDS};
pub use deliveries::{DeliveriesConfig, EndpointConfig, SinkConfig, SinkKind};
pub use servers::{IngestConfig, WorkerConfig};
pub use sources::{SchemeKind, SourceConfig};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use paynotify_schemes::SchemeSettings;
use serde::Deserialize;

pub use paynotify_schemes::adyen::{AdyenConfig, CaptureMode};
pub use paynotify_schemes::secret::SecretRef;
pub use paynotify_schemes::standard_webhooks::{
    EventPointers, MappedEvent, StandardWebhooksConfig,
};
pub use paynotify_schemes::stripe::StripeConfig;
pub use paynotify_schemes::unionpay::{GatewayConfig, UnionPayConfig, UNIONPAY_IDENTITY};

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    #[error("configuration: source {source_name:?}: {why}")]
    Source { source_name: String, why: String },
    #[error("configuration: unknown source {0:?}")]
    UnknownSource(String),
    #[error("configuration: {0}")]
    Setting(String),
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub backend: BackendConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    /// PSP endpoints by name: `POST /notify/{name}`.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Where every ledger transition is delivered (docs/events.md).
    #[serde(default)]
    pub deliveries: DeliveriesConfig,
    /// The read API (docs/api.md).
    #[serde(default)]
    pub api: ApiConfig,
}

impl Config {
    /// Loads `path`, applies `PAYNOTIFY__*` overrides, resolves relative
    /// `file:` references against the file's directory and validates.
    ///
    /// # Errors
    /// [`ConfigError`] naming the offending key or source.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let figment = Figment::new()
            .merge(Toml::file_exact(path))
            .merge(Env::prefixed("PAYNOTIFY__").split("__"));
        let mut config: Config = figment.extract().map_err(Box::new)?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        config.resolve(&base);
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML string (no environment overrides); relative paths are
    /// resolved against `base`.
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn from_toml(toml: &str, base: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = Figment::new()
            .merge(Toml::string(toml))
            .extract()
            .map_err(Box::new)?;
        config.resolve(base);
        config.validate()?;
        Ok(config)
    }

    /// The source called `name`.
    ///
    /// # Errors
    /// `UnknownSource`.
    pub fn source(&self, name: &str) -> Result<&SourceConfig, ConfigError> {
        self.sources
            .get(name)
            .ok_or_else(|| ConfigError::UnknownSource(name.to_owned()))
    }

    fn resolve(&mut self, base: &Path) {
        if self.backend.data_dir.is_relative() {
            self.backend.data_dir = base.join(&self.backend.data_dir);
        }
        for e in &mut self.deliveries.endpoints {
            for r in &mut e.secrets {
                *r = r.relative_to(base);
            }
        }
        for k in &mut self.api.keys {
            k.secret = k.secret.relative_to(base);
        }
        if let Some(oidc) = self.api.oidc.as_mut() {
            oidc.form_secret = oidc.form_secret.relative_to(base);
        }
        for source in self.sources.values_mut() {
            if let Some(up) = source.unionpay.as_mut() {
                up.root_cert = up.root_cert.relative_to(base);
                up.middle_cert = up.middle_cert.relative_to(base);
                for c in &mut up.verify_certs {
                    *c = c.relative_to(base);
                }
                if let Some(g) = up.gateway.as_mut() {
                    g.signing_key = g.signing_key.relative_to(base);
                    for r in g
                        .signing_cert
                        .iter_mut()
                        .chain(g.signing_key_password.iter_mut())
                    {
                        *r = r.relative_to(base);
                    }
                }
            }
            if let Some(sw) = source.standard_webhooks.as_mut() {
                for r in sw.secrets.iter_mut().chain(sw.public_keys.iter_mut()) {
                    *r = r.relative_to(base);
                }
            }
            if let Some(stripe) = source.stripe.as_mut() {
                for r in &mut stripe.secrets {
                    *r = r.relative_to(base);
                }
            }
            if let Some(adyen) = source.adyen.as_mut() {
                for r in &mut adyen.hmac_keys {
                    *r = r.relative_to(base);
                }
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self
            .backend
            .queue_shards
            .is_some_and(|n| n == 0 || n > MAX_QUEUE_SHARDS)
        {
            return Err(ConfigError::Setting(format!(
                "backend.queue_shards is 1 to {}",
                MAX_QUEUE_SHARDS
            )));
        }
        self.deliveries.validate().map_err(ConfigError::Setting)?;
        self.api.validate().map_err(ConfigError::Setting)?;
        if let Some(api) = self.api.listen {
            let others = [
                &self.ingest.listen,
                &self.ingest.admin_listen,
                &self.worker.admin_listen,
            ];
            // The same port on the same address, or on every address.
            let overlaps = |o: std::net::SocketAddr| {
                o.port() == api.port()
                    && (o.ip() == api.ip() || o.ip().is_unspecified() || api.ip().is_unspecified())
            };
            if api.port() != 0 && others.iter().filter_map(|o| o.parse().ok()).any(overlaps) {
                return Err(ConfigError::Setting(format!(
                    "api.listen ({api}) is another listener's address: the API has its own, never the ingest port"
                )));
            }
        }
        let i = &self.ingest;
        if i.segment_max_records == 0 || i.segment_writers == Some(0) {
            return Err(ConfigError::Setting(
                "ingest.segment_max_records and ingest.segment_writers must be positive".into(),
            ));
        }
        if i.max_inflight_bytes / 4 * 3 < i.max_body_bytes {
            // A body of the largest size must fit the share large bodies take.
            return Err(ConfigError::Setting(format!(
                "ingest.max_inflight_bytes ({}) must be at least 4/3 of ingest.max_body_bytes ({})",
                i.max_inflight_bytes, i.max_body_bytes
            )));
        }
        if i.segment_window_ms.is_some_and(|w| w > 1_000) {
            // Every notification waits for its segment: a PSP's timeout is seconds.
            return Err(ConfigError::Setting(
                "ingest.segment_window_ms is at most 1000".into(),
            ));
        }
        for (name, source) in &self.sources {
            let bad = |why: &str| ConfigError::Source {
                source_name: name.clone(),
                why: why.to_owned(),
            };
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad("source names are letters, digits, '-' and '_'"));
            }
            if source.merchants.is_empty() {
                return Err(bad(
                    "`merchants` is empty: no notification could ever be accepted",
                ));
            }
            let settings = source.settings().map_err(|why| bad(&why))?;
            settings.check().map_err(|why| bad(&why))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
