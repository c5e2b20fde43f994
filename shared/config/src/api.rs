//! `[api]`: the read API and its keys (docs/api.md). It listens on its own
//! address, never the public ingest port, and answers only requests that
//! carry one of the configured keys.

use std::net::SocketAddr;

use paynotify_schemes::secret::SecretRef;
use serde::Deserialize;

/// Where the read API listens and who may call it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Where it listens (`serve` starts it); no listener without it.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The keys that may call it; at least one when it listens.
    #[serde(default)]
    pub keys: Vec<ApiKeyConfig>,
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
        if self.listen.is_some() && self.keys.is_empty() {
            return Err(
                "api.listen is set but api.keys is empty: every request would be refused; \
                        add a [[api.keys]] with a name, a scope and a secret reference"
                    .into(),
            );
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
