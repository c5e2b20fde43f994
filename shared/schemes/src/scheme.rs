//! What every PSP scheme provides, so that generic code (ingest, the worker,
//! the CLI) holds a `dyn Scheme` and never names a PSP: [`SchemeSettings`]
//! is a source's settings table (what it reads, how it is checked, what a
//! PSP expects as the answer), [`Scheme`] the verifier built from it.
//! docs/adding-a-psp.md walks through adding one.

use std::fmt::Debug;

use crate::secret::SecretRef;
use crate::unionpay::{UnionPayVerifier, VerifyError};
use crate::webhook::{Inbound, WebhookError};
use crate::Verified;

/// Why a notification was rejected, whatever its scheme.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error(transparent)]
    UnionPay(#[from] VerifyError),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
}

impl Rejected {
    /// The check that failed, as a dead-letter reason and metric label
    /// (`bad_signature`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Self::UnionPay(e) => e.name(),
            Self::Webhook(e) => e.name(),
        }
    }

    /// The verification step that failed.
    pub fn step(&self) -> &'static str {
        match self {
            Self::UnionPay(e) => e.step(),
            Self::Webhook(e) => e.step(),
        }
    }
}

/// One source's verifier: checks a notification over its exact bytes and
/// maps it to what the worker applies.
///
/// # Contract
/// - `verify` never panics, whatever the body and headers; a notification
///   that is not authentic, or authentic but not understood, is `Err`.
/// - A notification of several items, each signed on its own, is
///   [`Verified::Items`]; `verify_item` then verifies item `index` alone.
///   A scheme without items has one, index 0.
/// - `explain` and `txn_id` read what they can of any body, for operators.
pub trait Scheme: Send + Sync + Debug {
    /// Verifies a notification received at `inbound.received_at`, and maps it.
    ///
    /// # Errors
    /// The failed step as [`Rejected`].
    fn verify(&self, source: &str, inbound: &Inbound<'_>) -> Result<Verified, Rejected>;

    /// Verifies item `index` of a notification `verify` answered with
    /// [`Verified::Items`].
    ///
    /// # Errors
    /// The failed step; a scheme without items refuses an index other than 0.
    fn verify_item(
        &self,
        source: &str,
        inbound: &Inbound<'_>,
        index: u32,
    ) -> Result<Verified, Rejected> {
        if index == 0 {
            self.verify(source, inbound)
        } else {
            Err(WebhookError::MalformedBody(format!(
                "item {index} of a notification without items"
            ))
            .into())
        }
    }

    /// Every step of verifying the notification, for an operator (`verify
    /// --explain`, `dlq show`).
    fn explain(&self, inbound: &Inbound<'_>) -> serde_json::Value;

    /// The PSP's transaction id in a body that may not verify, for the logs.
    fn txn_id(&self, body: &[u8]) -> Option<String>;

    /// The log field that carries the transaction id besides `psp_txn_id`
    /// (UnionPay's `unionpay_txn_id`), if the scheme has one.
    fn txn_id_field(&self) -> Option<&'static str> {
        None
    }

    /// The UnionPay verifier behind this scheme, for the status-query answers
    /// it also verifies.
    fn as_unionpay(&self) -> Option<&UnionPayVerifier> {
        None
    }
}

/// Secrets read for a source: the value of each reference its settings name.
#[derive(Default)]
pub struct Secrets(Vec<(SecretRef, Vec<u8>)>);

impl Secrets {
    /// Adds the value read for `r`.
    pub fn insert(&mut self, r: SecretRef, value: Vec<u8>) {
        self.0.push((r, value));
    }

    /// The bytes read for `r`.
    ///
    /// # Errors
    /// `r` was not read (a settings type that names a reference it did not
    /// list in [`SchemeSettings::secret_refs`]).
    pub fn bytes(&self, r: &SecretRef) -> Result<Vec<u8>, String> {
        self.0
            .iter()
            .find(|(k, _)| k == r)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("{r} was not read"))
    }

    /// The text read for each of `refs` (webhook secrets, public keys).
    ///
    /// # Errors
    /// As [`Secrets::bytes`].
    pub fn texts(&self, refs: &[SecretRef]) -> Result<Vec<String>, String> {
        refs.iter()
            .map(|r| {
                self.bytes(r)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            })
            .collect()
    }
}

/// A scheme's settings table (`[sources.NAME.<scheme>]`).
pub trait SchemeSettings: Send + Sync + Debug {
    /// The settings are consistent on their own (read at load time, before
    /// any secret is).
    ///
    /// # Errors
    /// What is wrong, in words.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    /// Every secret reference the verifier needs, in the order they are read.
    fn secret_refs(&self) -> Vec<&SecretRef>;

    /// The body of the 200 answer the PSP expects, unless the source sets one.
    fn default_success_body(&self) -> &'static str {
        ""
    }

    /// The verifier, from these settings, the secrets they name and the
    /// merchants the source accepts.
    ///
    /// # Errors
    /// A secret that is not a valid key or certificate, in words.
    fn build(&self, secrets: &Secrets, merchants: &[String]) -> Result<Box<dyn Scheme>, String>;
}
