//! `paynotify txn get|history|find`: one payment in the ledger (or the
//! payments of a merchant's order), with amounts as decimals in their
//! currency (`10.00 CNY`) and times in RFC 3339.

use std::process::ExitCode;

use paynotify::views::payment::{
    event_json, find_by_order, find_payment, order_lookup_refused, parked_json, time, Found,
};
use paynotify_shared::money::display_minor;
use paynotify_shared::ports::ParkedEvent;
use serde_json::{json, Value};

use crate::ops_cmd::ConfigArg;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
    source: String,
    merchant: String,
    /// The PSP's id of the payment (UnionPay `queryId`); a pre-authorization
    /// completion's own id leads to its payment.
    payment_ref: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct Find {
    #[command(flatten)]
    config: ConfigArg,
    /// The merchant's own order id, as the payment's first notification
    /// named it (UnionPay orderId, Adyen merchantReference, Stripe
    /// metadata.order_id).
    order_id: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

async fn find(args: &Args) -> anyhow::Result<Found> {
    let (_, backends) = args.config.open().await?;
    find_payment(&backends, &args.source, &args.merchant, &args.payment_ref).await
}

fn exit(found: &Found) -> ExitCode {
    if found.exists() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The payment's state line, its order and its completion note.
fn heading(asked: &str, found: &Found) -> String {
    let mut out = format!("payment {}\n", found.key);
    if let Some(order) = found.order_id() {
        out.push_str(&format!("  order {order}\n"));
    }
    if found.via_alias {
        out.push_str(&format!("  ({asked} is a completion of this payment)\n"));
    }
    match &found.state {
        Some(s) => out.push_str(&format!(
            "  status {}  paid {}  refunded {}{}  version {}\n",
            s.status.as_str(),
            display_minor(s.paid_minor, s.currency.as_str()),
            display_minor(s.refunded_minor, s.currency.as_str()),
            if s.authorized_minor > 0 {
                format!(
                    "  held {}",
                    display_minor(s.authorized_minor, s.currency.as_str())
                )
            } else {
                String::new()
            },
            s.version
        )),
        None => out.push_str("  no state in the ledger\n"),
    }
    out
}

/// Prints a payment's state and events; exit 1 when it is not in the ledger.
///
/// # Errors
/// Configuration or backend errors.
pub async fn get(args: Args) -> anyhow::Result<ExitCode> {
    let found = find(&args).await?;
    if args.json {
        crate::print_stdout(&serde_json::to_string_pretty(&found.to_json())?)?;
    } else {
        crate::print_stdout(summary(&args.payment_ref, &found).trim_end())?;
    }
    Ok(exit(&found))
}

/// A payment's state, events and parked events, as `txn get` prints them.
fn summary(asked: &str, found: &Found) -> String {
    let mut out = heading(asked, found);
    for e in &found.history {
        out.push_str(&format!(
            "  {}  {} {}  {}  -> {}  ({})\n",
            time(e.recorded_at),
            e.kind,
            e.outcome,
            display_minor(e.amount_minor, &e.currency),
            e.status_after.as_deref().unwrap_or("unchanged"),
            e.event_key
        ));
    }
    out.push_str(&parked_lines(&found.parked));
    out
}

/// Prints the payments of a merchant's order, each as `txn get` does;
/// exit 1 when no payment names it.
///
/// # Errors
/// Configuration or backend errors.
pub async fn find_order(args: Find) -> anyhow::Result<ExitCode> {
    let (config, backends) = args.config.open().await?;
    if let Some(why) = order_lookup_refused(&config.backend) {
        anyhow::bail!(why);
    }
    let found = find_by_order(&backends, &args.order_id).await?;
    if args.json {
        crate::print_stdout(&serde_json::to_string_pretty(&json!({
            "order_id": args.order_id,
            "payments": found.iter().map(Found::to_json).collect::<Vec<_>>(),
        }))?)?;
    } else if found.is_empty() {
        crate::print_stdout(&format!(
            "no payment names order {:?} (an order is known from its payment's first notification)",
            args.order_id
        ))?;
    } else {
        let all: Vec<String> = found
            .iter()
            .map(|f| summary(&args.order_id, f).trim_end().to_owned())
            .collect();
        crate::print_stdout(&all.join("\n\n"))?;
    }
    Ok(if found.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn parked_lines(parked: &[ParkedEvent]) -> String {
    parked
        .iter()
        .map(|p| {
            format!(
                "  parked since {}  {} {}  {}  ({}){}\n",
                time(p.parked_at),
                p.event.kind.as_str(),
                p.event.outcome.as_str(),
                p.event.amount,
                p.event.event_key,
                p.conflict
                    .as_deref()
                    .map(|c| format!("  conflict: {c}"))
                    .unwrap_or_default()
            )
        })
        .collect()
}

/// Prints a payment's whole story as a table: every recorded event in
/// order, with the PSP's time, result code, amount, the status it led to
/// and the notification it came from; then what is parked. Exit 1 when
/// the payment is not in the ledger.
///
/// # Errors
/// Configuration or backend errors.
pub async fn history(args: Args) -> anyhow::Result<ExitCode> {
    let found = find(&args).await?;
    if args.json {
        let rows: Vec<Value> = found
            .history
            .iter()
            .map(|e| {
                let mut row = event_json(e);
                if let Some(ev) = &e.event {
                    row["psp_txn_id"] = json!(ev.psp_txn_id);
                    row["psp_time"] = json!(ev.psp_time.map(time));
                    row["result_code"] = json!(ev.result_code);
                }
                row
            })
            .collect();
        crate::print_stdout(&serde_json::to_string_pretty(&json!({
            "payment_key": found.key,
            "status": found.state.as_ref().map(|s| s.status.as_str()),
            "events": rows,
            "parked": found.parked.iter().map(parked_json).collect::<Vec<_>>(),
        }))?)?;
        return Ok(exit(&found));
    }
    let mut out = heading(&args.payment_ref, &found);
    let header = [
        "recorded at",
        "psp time",
        "kind",
        "outcome",
        "code",
        "amount",
        "status after",
        "psp txn id",
        "notification",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for e in &found.history {
        let ev = e.event.as_ref();
        rows.push(vec![
            time(e.recorded_at),
            ev.and_then(|ev| ev.psp_time)
                .map(time)
                .unwrap_or_else(|| "-".into()),
            e.kind.clone(),
            e.outcome.clone(),
            ev.and_then(|ev| ev.result_code.clone())
                .unwrap_or_else(|| "-".into()),
            display_minor(e.amount_minor, &e.currency),
            e.status_after.clone().unwrap_or_else(|| "unchanged".into()),
            ev.and_then(|ev| ev.psp_txn_id.clone())
                .unwrap_or_else(|| "-".into()),
            e.notification_id.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str("  ");
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&parked_lines(&found.parked));
    crate::print_stdout(out.trim_end())?;
    Ok(exit(&found))
}
