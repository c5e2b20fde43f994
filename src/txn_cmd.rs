//! `paynotify txn get|history`: one payment in the ledger, with amounts as
//! decimals in their currency (`10.00 CNY`) and times in RFC 3339.

use std::process::ExitCode;

use paynotify_shared::money::display_minor;
use paynotify_shared::ports::{EventRecord, ParkedEvent};
use paynotify_shared::{PaymentKey, PaymentState};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;

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

/// What the ledger holds for one payment.
struct Found {
    key: PaymentKey,
    /// The reference asked for is a completion of `key`.
    via_alias: bool,
    state: Option<PaymentState>,
    history: Vec<EventRecord>,
    parked: Vec<ParkedEvent>,
}

async fn find(args: &Args) -> anyhow::Result<Found> {
    let (_, backends) = args.config.open().await?;
    let mut key = PaymentKey::new(&args.source, &args.merchant, &args.payment_ref);
    let mut entry = backends.ledger.load(&key).await?;
    let via_alias = entry.alias_of.is_some();
    if let Some(target) = entry.alias_of.clone() {
        key = target;
        entry = backends.ledger.load(&key).await?;
    }
    let history = backends.ledger.history(&key).await?;
    Ok(Found {
        key,
        via_alias,
        state: entry.state,
        history,
        parked: entry.parked,
    })
}

fn time(t: time::OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn state_json(s: &PaymentState) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    let c = s.currency;
    v["paid"] = c.decimal(s.paid_minor).into();
    v["refunded"] = c.decimal(s.refunded_minor).into();
    v["authorized"] = c.decimal(s.authorized_minor).into();
    v
}

fn event_json(e: &EventRecord) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or_default();
    v["amount"] = paynotify_shared::Currency::from_alpha(&e.currency)
        .map(|c| Value::from(c.decimal(e.amount_minor)))
        .unwrap_or(Value::Null);
    v
}

fn parked_json(p: &ParkedEvent) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or_default();
    v["amount"] = p.event.amount.currency.decimal(p.event.amount.minor).into();
    v
}

fn exit(found: &Found) -> ExitCode {
    if found.state.is_some() || !found.history.is_empty() || !found.parked.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The payment's state line and its completion note.
fn heading(args: &Args, found: &Found) -> String {
    let mut out = format!("payment {}\n", found.key);
    if found.via_alias {
        out.push_str(&format!(
            "  ({} is a completion of this payment)\n",
            args.payment_ref
        ));
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
        crate::print_stdout(&serde_json::to_string_pretty(&json!({
            "payment_key": found.key,
            "state": found.state.as_ref().map(state_json),
            "history": found.history.iter().map(event_json).collect::<Vec<_>>(),
            "parked": found.parked.iter().map(parked_json).collect::<Vec<_>>(),
        }))?)?;
    } else {
        let mut out = heading(&args, &found);
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
        crate::print_stdout(out.trim_end())?;
    }
    Ok(exit(&found))
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
    let mut out = heading(&args, &found);
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
