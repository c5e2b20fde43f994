//! `paynotify simulate`: signed UnionPay-style (or Standard Webhooks)
//! traffic against a running paynotify.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use paynotify::simulate::{run_mix, Mix, Simulator};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Notification URL, e.g. http://127.0.0.1:8080/notify/unionpay
    #[arg(long, required_unless_present = "write")]
    url: Option<String>,
    /// Test PKI directory (from `paynotify testpki`) whose signer.key.pem
    /// signs UnionPay notifications.
    #[arg(long, required_unless_present = "secret", conflicts_with = "secret")]
    pki: Option<PathBuf>,
    /// A file holding a `whsec_…` secret: send webhooks of `--scheme`
    /// instead (Standard Webhooks events as
    /// `paynotify::simulate::standard_webhooks_toml` configures a source to
    /// read them, or Stripe events).
    #[arg(long)]
    secret: Option<PathBuf>,
    /// Which webhooks `--secret` signs.
    #[arg(long, value_enum, default_value_t = WebhookScheme::StandardWebhooks, requires = "secret")]
    scheme: WebhookScheme,
    #[arg(long, default_value = "777290058167151")]
    merchant: String,
    /// Payments to simulate.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Payments per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Fraction of purchases delivered 8 times concurrently.
    #[arg(long, default_value_t = 0.1)]
    duplicates: f64,
    /// Fraction of purchases also sent with an altered amount.
    #[arg(long, default_value_t = 0.0)]
    tamper: f64,
    /// Fraction of payments refunded.
    #[arg(long, default_value_t = 0.2)]
    refunds: f64,
    /// Fraction of payments voided.
    #[arg(long, default_value_t = 0.05)]
    voids: f64,
    /// Fraction of refunded payments whose first refund arrives before the purchase.
    #[arg(long, default_value_t = 0.1)]
    early_refunds: f64,
    /// Concurrent senders.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Send a payment's refunds, void and other deliveries this many seconds
    /// after its first delivery, as a PSP does, instead of at once.
    #[arg(long = "follow-up-secs", value_name = "SECS", value_parser = parse_secs)]
    follow_up: Option<std::time::Duration>,
    /// Send one UnionPay purchase with this `queryId` (and `--amount`)
    /// instead of a mix, and print whether it got a 200: a smoke test's
    /// notification (`scripts/smoke_aws.sh`).
    #[arg(
        long,
        value_name = "QUERY_ID",
        requires = "pki",
        conflicts_with = "secret"
    )]
    one: Option<String>,
    /// The amount of `--one`'s purchase, in minor units.
    #[arg(long, default_value_t = 1, requires = "one")]
    amount: u64,
    /// Write `--one`'s signed notification to this file instead of sending
    /// it (a body to post by hand, or with `scripts/smoke_aws.sh --body`).
    #[arg(long, value_name = "FILE", requires = "one")]
    write: Option<PathBuf>,
}

/// A number of seconds, fractions allowed, as a duration.
pub(crate) fn parse_secs(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|e| format!("not a number of seconds: {e}"))?;
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|e| format!("not a number of seconds ≥ 0: {e}"))
}

/// The webhook schemes the simulator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum WebhookScheme {
    StandardWebhooks,
    /// Stripe has no void notification: `--voids` is taken as 0.
    Stripe,
    /// `--secret` holds the HMAC key (hex); `--merchant` is the merchant
    /// account; the source must capture automatically.
    Adyen,
}

/// Sends the traffic and prints a JSON report; exit 1 if any notification never got a 200.
///
/// # Errors
/// When the PKI or the secret cannot be read.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let url = args.url.clone().unwrap_or_default();
    let sim = match (&args.pki, &args.secret) {
        (_, Some(secret)) => {
            let secret = std::fs::read_to_string(secret)
                .with_context(|| format!("reading {}", secret.display()))?;
            match args.scheme {
                WebhookScheme::StandardWebhooks => {
                    Simulator::standard_webhooks(&secret, &args.merchant, &url)?
                }
                WebhookScheme::Stripe => Simulator::stripe(&secret, &args.merchant, &url)?,
                WebhookScheme::Adyen => Simulator::adyen(&secret, &args.merchant, &url)?,
            }
        }
        (Some(pki), None) => {
            let key =
                std::fs::read(pki.join("signer.key.pem")).context("reading signer.key.pem")?;
            let leaf =
                std::fs::read_to_string(pki.join("signer.pem")).context("reading signer.pem")?;
            Simulator::new(&key, &leaf, &args.merchant, &url)?
        }
        (None, None) => anyhow::bail!("--pki or --secret is needed"),
    };
    if let Some(query_id) = &args.one {
        let body = sim.purchase(query_id, args.amount);
        if let Some(path) = &args.write {
            std::fs::write(path, &body).with_context(|| format!("writing {}", path.display()))?;
            return Ok(ExitCode::SUCCESS);
        }
        let delivery = sim.send(body).await;
        let accepted = matches!(delivery, paynotify::simulate::Delivery::Accepted(_));
        let report = serde_json::json!({
            "query_id": query_id,
            "merchant": args.merchant,
            "amount": args.amount,
            "delivery": format!("{delivery:?}"),
        });
        crate::print_stdout(&serde_json::to_string_pretty(&report)?)?;
        return Ok(if accepted {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let mix = Mix {
        count: args.count,
        rate: args.rate,
        duplicates: args.duplicates,
        tamper: args.tamper,
        refunds: args.refunds,
        voids: if args.secret.is_some() && args.scheme == WebhookScheme::Stripe {
            0.0
        } else {
            args.voids
        },
        early_refunds: args.early_refunds,
        concurrency: args.concurrency,
        follow_up: args.follow_up,
    };
    let report = run_mix(sim, None, &mix).await;
    crate::print_stdout(&serde_json::to_string_pretty(&report)?)?;
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn seconds_parse_with_fractions_and_refuse_what_is_not_a_duration() {
        assert_eq!(super::parse_secs("30"), Ok(Duration::from_secs(30)));
        assert_eq!(super::parse_secs("0.25"), Ok(Duration::from_millis(250)));
        for bad in ["-1", "nan", "inf", "", "30s"] {
            assert!(super::parse_secs(bad).is_err(), "{bad}");
        }
    }
}
