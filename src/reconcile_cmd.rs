//! `paynotify reconcile`: prints what [`paynotify::reconcile`] found and
//! exits 1 when anything does not add up.

use std::process::ExitCode;

use paynotify::reconcile::reconcile;
use paynotify_shared::backend;
use paynotify_shared::config::Config;

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
    let config = Config::load(&args.config.config)?;
    let backends = backend::build(&config.backend).await?;
    let report = reconcile(&config, &backends, args.from, args.to, |_, _| {}).await?;
    if args.json {
        crate::print_stdout(&serde_json::to_string_pretty(&report)?)?;
    } else {
        let mut out = format!(
            "archived {}  in ledger {}  parked {}  dead-lettered {}  payments checked {}  queue depth {}  \
             partial writes {}\n",
            report.archived,
            report.in_ledger,
            report.parked,
            report.dead_lettered,
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
