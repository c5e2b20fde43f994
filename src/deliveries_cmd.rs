//! `paynotify deliveries list|show|resend|endpoints|enable|disable`: the
//! outgoing events to the merchant's endpoints (docs/events.md), for an
//! operator.

use std::process::ExitCode;

use anyhow::Context;
use paynotify_shared::config::Config;
use paynotify_shared::ports::{DeliveryFilter, DeliveryStatus};
use serde_json::json;
use time::OffsetDateTime;

use crate::ops_cmd::ConfigArg;
use paynotify::views::deliveries::{
    endpoints_value, release_all, resend_delivery, store_of, Resent, Store,
};

/// The configuration and the deliveries store it names.
async fn open(config: &ConfigArg) -> anyhow::Result<(Config, Store)> {
    let (config, backends) = config.open().await?;
    let store = store_of(&backends)?;
    Ok((config, store))
}

/// An endpoint named in the configuration.
fn endpoint<'a>(config: &'a Config, name: &str) -> anyhow::Result<&'a str> {
    config
        .deliveries
        .endpoints
        .iter()
        .find(|e| e.name == name)
        .map(|e| e.name.as_str())
        .with_context(|| format!("no deliveries endpoint {name:?} in the configuration"))
}

#[derive(Debug, clap::Args)]
pub struct List {
    #[command(flatten)]
    config: ConfigArg,
    /// Only this endpoint's.
    #[arg(long)]
    endpoint: Option<String>,
    /// Only this payment's (its key, `source#merchant#reference`).
    #[arg(long)]
    payment: Option<String>,
    /// Only `pending`, `delivered` or `dead_lettered` ones.
    #[arg(long, value_parser = parse_status)]
    status: Option<DeliveryStatus>,
    /// Only events recorded at or after this time (RFC 3339).
    #[arg(long, value_parser = crate::verify_cmd::parse_time)]
    since: Option<OffsetDateTime>,
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_status(s: &str) -> Result<DeliveryStatus, String> {
    DeliveryStatus::parse(s).ok_or_else(|| "pending, delivered or dead_lettered".to_owned())
}

/// Lists deliveries, oldest event first.
///
/// # Errors
/// Configuration or store errors.
pub async fn list(args: List) -> anyhow::Result<ExitCode> {
    let (_, store) = open(&args.config).await?;
    let rows = store
        .list(&DeliveryFilter {
            endpoint: args.endpoint,
            payment_key: args.payment,
            event_id: None,
            status: args.status,
            since: args.since,
            limit: args.limit,
        })
        .await?;
    if args.json {
        crate::print_stdout(&serde_json::to_string_pretty(&rows)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::from("EVENT ID                              ENDPOINT      STATUS         ATTEMPTS  TYPE                        PAYMENT");
    for d in &rows {
        out.push_str(&format!(
            "\n{:<37} {:<13} {:<14} {:>8}  {:<27} {}",
            d.record.event_id,
            d.endpoint,
            d.status.as_str(),
            d.attempts,
            d.record.event_type.as_str(),
            d.record.payment_key
        ));
    }
    crate::print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct Show {
    #[command(flatten)]
    config: ConfigArg,
    /// The event's id (`evt_…`).
    event_id: String,
}

/// One event's deliveries, with its body.
///
/// # Errors
/// Configuration or store errors; exit 1 when no endpoint has the event.
pub async fn show(args: Show) -> anyhow::Result<ExitCode> {
    let (_, store) = open(&args.config).await?;
    let rows = store
        .list(&DeliveryFilter {
            event_id: Some(args.event_id.clone()),
            limit: 1000,
            ..DeliveryFilter::default()
        })
        .await?;
    let Some(first) = rows.first() else {
        eprintln!("paynotify: no delivery of {}", args.event_id);
        return Ok(ExitCode::FAILURE);
    };
    let body: serde_json::Value = serde_json::from_str(&first.record.body)?;
    let out = json!({ "event": body, "deliveries": rows });
    crate::print_stdout(&serde_json::to_string_pretty(&out)?)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct Resend {
    #[command(flatten)]
    config: ConfigArg,
    /// The endpoint to send it to again.
    #[arg(long)]
    endpoint: String,
    /// The event's id (`evt_…`).
    event_id: String,
}

/// Makes a delivery pending again, due now, with a fresh retry budget (a
/// dead-lettered one releases its payment's later events).
///
/// # Errors
/// Configuration or store errors; exit 1 when there is no such delivery.
pub async fn resend(args: Resend) -> anyhow::Result<ExitCode> {
    let (config, backends) = args.config.open().await?;
    let name = endpoint(&config, &args.endpoint)?;
    match resend_delivery(&backends, name, &args.event_id).await? {
        Resent::Again => {
            crate::print_stdout(&format!("{} will be sent to {name} again", args.event_id))?;
        }
        Resent::Released { payment_key } => crate::print_stdout(&format!(
            "{} and the later held events of {payment_key} will be sent to {name} again, in order",
            args.event_id
        ))?,
        Resent::NoSuchDelivery(why) => {
            eprintln!("paynotify: {why}");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every configured endpoint's status, as JSON lines.
///
/// # Errors
/// Configuration or store errors.
pub async fn endpoints(args: ConfigArg) -> anyhow::Result<ExitCode> {
    let (config, backends) = args.open().await?;
    let out = endpoints_value(&config, &backends)
        .await?
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<Vec<_>, _>>()?;
    crate::print_stdout(&out.join("\n"))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct Toggle {
    #[command(flatten)]
    config: ConfigArg,
    /// The endpoint.
    endpoint: String,
}

/// Sends to a disabled endpoint again (its waiting events go first; on AWS
/// its held events are released).
///
/// # Errors
/// Configuration or store errors.
pub async fn enable(args: Toggle) -> anyhow::Result<ExitCode> {
    let (config, store) = open(&args.config).await?;
    let name = endpoint(&config, &args.endpoint)?;
    store.set_disabled(name, None).await?;
    if let Store::Line(line) = &store {
        // Held while it was disabled: released, each payment's in order.
        let n = release_all(line.as_ref(), name, None).await?;
        crate::print_stdout(&format!("{name}: {n} payments' held events released"))?;
    }
    crate::print_stdout(&format!("{name} enabled"))?;
    Ok(ExitCode::SUCCESS)
}

/// Stops sending to an endpoint; its events wait.
///
/// # Errors
/// Configuration or store errors.
pub async fn disable(args: Toggle) -> anyhow::Result<ExitCode> {
    let (config, store) = open(&args.config).await?;
    let name = endpoint(&config, &args.endpoint)?;
    store
        .set_disabled(name, Some("disabled by an operator"))
        .await?;
    crate::print_stdout(&format!("{name} disabled"))?;
    Ok(ExitCode::SUCCESS)
}
