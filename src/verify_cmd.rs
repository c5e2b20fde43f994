//! `paynotify verify`: verify one notification body from stdin (with the
//! request headers a webhook scheme signs, `--header`), the tool to reach
//! for when every notification says `bad_signature`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use paynotify_shared::scheme::{Inbound, SourceVerifier, Verified};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML); without it, the file PAYNOTIFY_CONFIG
    /// names, else ./paynotify.toml.
    #[arg(long, env = crate::ops_cmd::CONFIG_ENV, default_value = crate::ops_cmd::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Source name as configured (`[sources.NAME]`).
    #[arg(long)]
    source: String,
    /// Verify as if received at this time (RFC 3339); default now.
    #[arg(long, value_parser = parse_time)]
    at: Option<OffsetDateTime>,
    /// Also print the canonical string, the digest and the certificate chain.
    #[arg(long)]
    explain: bool,
    /// A request header, `Name: value` (repeat it): the signature headers
    /// of webhook schemes (`webhook-id`, `Stripe-Signature`, …).
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not `Name: value`"))?;
    Ok((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
}

pub(crate) fn parse_time(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("not an RFC 3339 time: {e}"))
}

/// Prints the verdict; exit 0 when valid, 1 when rejected.
///
/// # Errors
/// Usage errors (config, source, stdin), reported with exit status 2.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = crate::ops_cmd::load_config(&args.config)?;
    let source = config.source(&args.source)?;
    let secrets = paynotify_shared::backend::secret_store(&config.backend).await;
    let verifier = SourceVerifier::load(&args.source, source, secrets.as_deref()).await?;
    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .context("reading the body from stdin")?;
    let at = args.at.unwrap_or_else(OffsetDateTime::now_utc);

    let inbound = Inbound {
        body: &body,
        headers: &args.headers,
        received_at: at,
    };
    let mut verdict = match verifier.verify(&args.source, &inbound) {
        Ok(Verified::Event(event)) => json!({
            "valid": true, "error": null, "step": null,
            "payment_ref": event.payment_ref, "event": event,
        }),
        Ok(Verified::Ignored(what)) => json!({
            "valid": true, "error": null, "step": null,
            "payment_ref": null, "event": null, "ignored": what,
        }),
        // Several items, each signed on its own (Adyen): a verdict each.
        Ok(Verified::Items(n)) => {
            let items: Vec<Value> = (0..n)
                .map(|i| match verifier.verify_item(&args.source, &inbound, i) {
                    Ok(Verified::Event(event)) => json!({
                        "item": i, "valid": true, "error": null,
                        "payment_ref": event.payment_ref, "event": event,
                    }),
                    Ok(other) => json!({ "item": i, "valid": true, "error": null,
                                         "event": null, "ignored": format!("{other:?}") }),
                    Err(e) => json!({ "item": i, "valid": false, "error": e.name(),
                                      "message": e.to_string(), "step": e.step() }),
                })
                .collect();
            let valid = items.iter().all(|i| i["valid"] == true);
            let first_error = items.iter().find(|i| i["valid"] != true);
            json!({
                "valid": valid,
                "error": first_error.map(|i| i["error"].clone()),
                "step": first_error.map(|i| i["step"].clone()),
                "payment_ref": null, "event": null, "items": items,
            })
        }
        Err(e) => json!({
            "valid": false, "error": e.name(), "message": e.to_string(), "step": e.step(),
            "payment_ref": null, "event": null,
        }),
    };
    verdict["received_at"] = Value::String(at.format(&Rfc3339)?);
    if args.explain {
        verdict["explain"] = verifier.explain(&inbound);
    }
    crate::print_stdout(&serde_json::to_string_pretty(&verdict)?)?;
    Ok(if verdict["valid"] == Value::Bool(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
