//! `paynotify reconcile`: prints what [`paynotify::reconcile`] found and
//! exits 1 when anything does not add up; `paynotify parked list`: what
//! waits in the ledger for its payment.

use std::process::ExitCode;

use paynotify::reconcile::reconcile;
use paynotify_shared::ports::ParkedCounts;

use crate::ops_cmd::ConfigArg;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArg,
    /// Start of the range (RFC 3339); whole hours are reconciled.
    #[arg(long, value_parser = crate::verify_cmd::parse_time)]
    from: Option<time::OffsetDateTime>,
    /// End of the range (RFC 3339).
    #[arg(long, value_parser = crate::verify_cmd::parse_time)]
    to: Option<time::OffsetDateTime>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Reconciles and prints the report; exit 0 clean, 1 with discrepancies.
///
/// # Errors
/// Configuration or backend errors.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (config, backends) = args.config.open().await?;
    let bar = crate::progress::bar(None, "reconciling");
    let report = reconcile(&config, &backends, args.from, args.to, |i, total| {
        bar.set_length(total);
        bar.set_position(i);
    })
    .await?;
    bar.finish_and_clear();
    // Kept for the read API (the latest report); a run whose report cannot
    // be kept still reports, and says so.
    if let Err(e) = paynotify::reconcile::record::record(&backends, &report).await {
        eprintln!("paynotify: the report could not be kept in the archive: {e:#}");
    }
    if args.json {
        crate::print_stdout(&serde_json::to_string_pretty(&report)?)?;
    } else {
        let mut out = format!(
            "archived {}  in ledger {}  parked {}  dead-lettered {}  purged {}  resolved {}  \
             payments checked {}  queue depth {}  partial writes {}\n",
            report.archived,
            report.in_ledger,
            report.parked,
            report.dead_lettered,
            report.purged,
            report.resolved,
            report.payments_checked,
            report.queue_depth,
            report.partial_writes
        );
        for d in &report.discrepancies {
            out.push_str(&format!("{:<28} {}  {}\n", d.kind, d.subject, d.detail));
        }
        out.push_str(if report.is_clean() {
            "reconcile: clean"
        } else {
            "reconcile: discrepancies found"
        });
        crate::print_stdout(&out)?;
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[derive(Debug, clap::Args)]
pub struct ParkedList {
    #[command(flatten)]
    config: ConfigArg,
    /// At most this many.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Lists parked events; exit 1 when one is older than
/// `worker.parked_alert_secs` or contradicts its payment.
///
/// # Errors
/// Configuration or backend errors.
pub async fn parked_list(args: ParkedList) -> anyhow::Result<ExitCode> {
    let (config, backends) = args.config.open().await?;
    let now = time::OffsetDateTime::now_utc();
    let parked = backends.ledger.parked_before(now, args.limit).await?;
    let counts = ParkedCounts::of(&parked, now, config.worker.parked_alert_secs);
    let alarming = counts.overdue + counts.conflicted > 0;
    if args.json {
        crate::print_stdout(&serde_json::to_string_pretty(&parked)?)?;
    } else {
        let lines: Vec<String> = parked
            .iter()
            .map(|p| {
                let e = &p.parked.event;
                format!(
                    "{}  waited {}  {} {} {}  notification {}{}",
                    p.payment_key,
                    now - p.parked.parked_at,
                    e.kind.as_str(),
                    e.outcome.as_str(),
                    e.amount,
                    p.parked.notification_id,
                    p.parked
                        .conflict
                        .as_deref()
                        .map(|c| format!("  conflict: {c}"))
                        .unwrap_or_default()
                )
            })
            .collect();
        crate::print_stdout(&lines.join("\n"))?;
    }
    Ok(if alarming {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Debug, clap::Args)]
pub struct ParkedResolve {
    #[command(flatten)]
    config: ConfigArg,
    /// The payment it is parked under (`source#merchant#reference`, as
    /// `parked list` shows it).
    payment_key: String,
    /// The parked event's key (`event.event_key` in `parked list --json`).
    event_key: String,
    /// Why: kept in the record.
    #[arg(long)]
    note: String,
}

/// Sets a parked event aside as a dead letter; prints what was done. Exit
/// 1 when it is not parked there.
///
/// # Errors
/// Configuration or store errors, or a notification not in the archive.
pub async fn parked_dead_letter(args: ParkedResolve) -> anyhow::Result<ExitCode> {
    let (_, backends) = args.config.open().await?;
    let done = match paynotify::parked::dead_letter(
        &backends,
        &args.payment_key,
        &args.event_key,
        &args.note,
        "cli",
    )
    .await?
    {
        paynotify::parked::SetAside::Done(record) => Some(record),
        paynotify::parked::SetAside::NotParked => None,
        paynotify::parked::SetAside::NotReceived(id) => anyhow::bail!(
            "notification {id} is not among the archive's received notifications (an event of a \
             status query or a settlement file has none to redrive): resolve it instead"
        ),
    };
    print_or_not_parked(done, &args)
}

fn print_or_not_parked(
    done: Option<serde_json::Value>,
    args: &ParkedResolve,
) -> anyhow::Result<ExitCode> {
    match done {
        Some(record) => {
            crate::print_stdout(&serde_json::to_string_pretty(&record)?)?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!(
                "paynotify: {} is not parked under {} (applied meanwhile, or resolved before)",
                args.event_key, args.payment_key
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// Takes a parked event out of the ledger and records it; prints the
/// record. Exit 1 when it is not parked there.
///
/// # Errors
/// Configuration, ledger or archive errors.
pub async fn parked_resolve(args: ParkedResolve) -> anyhow::Result<ExitCode> {
    let (_, backends) = args.config.open().await?;
    let done = paynotify::parked::resolve(
        &backends,
        &args.payment_key,
        &args.event_key,
        &args.note,
        "cli",
    )
    .await?;
    print_or_not_parked(done, &args)
}
