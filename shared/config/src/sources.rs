//! `[sources.NAME]`: one notification source and its signature scheme.

use super::*;

/// A PSP signature scheme. Unknown schemes fail at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemeKind {
    Unionpay,
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`), the event read through configured JSON pointers.
    StandardWebhooks,
    /// Stripe (`Stripe-Signature: t=…,v1=…`).
    Stripe,
    /// Adyen standard notifications (an HMAC per `NotificationRequestItem`).
    Adyen,
}

/// One notification source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub scheme: SchemeKind,
    /// Merchant ids (`merId`) accepted from this source.
    pub merchants: Vec<String>,
    /// Body of the 200 answer the PSP expects; by default `ok` for UnionPay,
    /// `[accepted]` for Adyen (which it requires), empty for Stripe and
    /// Standard Webhooks (any 2xx will do).
    #[serde(default)]
    pub success_body: Option<String>,
    pub unionpay: Option<UnionPayConfig>,
    pub standard_webhooks: Option<StandardWebhooksConfig>,
    pub stripe: Option<StripeConfig>,
    pub adyen: Option<AdyenConfig>,
}

impl SourceConfig {
    /// The settings table of this source's scheme: the one place that knows
    /// which table each scheme reads (a new PSP adds one line here).
    ///
    /// # Errors
    /// The table is missing, in words.
    pub fn settings(&self) -> Result<&dyn SchemeSettings, String> {
        fn table<'a, T: SchemeSettings>(
            t: &'a Option<T>,
            name: &str,
        ) -> Result<&'a dyn SchemeSettings, String> {
            t.as_ref()
                .map(|t| t as &dyn SchemeSettings)
                .ok_or_else(|| format!("scheme \"{name}\" needs a [sources.NAME.{name}] table"))
        }
        match self.scheme {
            SchemeKind::Unionpay => table(&self.unionpay, "unionpay"),
            SchemeKind::StandardWebhooks => table(&self.standard_webhooks, "standard_webhooks"),
            SchemeKind::Stripe => table(&self.stripe, "stripe"),
            SchemeKind::Adyen => table(&self.adyen, "adyen"),
        }
    }

    /// The body of the 200 answer.
    pub fn success_body(&self) -> &str {
        match (&self.success_body, self.settings()) {
            (Some(body), _) => body,
            (None, Ok(settings)) => settings.default_success_body(),
            (None, Err(_)) => "",
        }
    }
}
