//! `paynotify unionpay …`: ask UnionPay about a transaction, watch for one
//! the merchant started, list the watches, and fetch and reconcile the
//! daily settlement file.

use std::path::PathBuf;
use std::process::ExitCode;

use paynotify::settlement;
use paynotify_shared::config::Config;
use paynotify_shared::ports::WATCH_SCAN_LIMIT;
use paynotify_shared::scheme::unionpay::QueryTarget;
use paynotify_worker::query::{self, Querier};
use time::macros::format_description;
use time::{Date, OffsetDateTime, PrimitiveDateTime};

use crate::ops_cmd::ConfigArg;

/// The transaction a command is about.
#[derive(Debug, clap::Args)]
pub struct Target {
    #[command(flatten)]
    config: ConfigArg,
    /// The UnionPay source.
    #[arg(long)]
    source: String,
    /// The merchant (`merId`); the source's first by default.
    #[arg(long)]
    merchant: Option<String>,
    /// The order's `orderId` (with --txn-time).
    #[arg(long, requires = "txn_time", conflicts_with = "query_id")]
    order_id: Option<String>,
    /// The order's `txnTime`, `YYYYMMDDhhmmss` in Beijing time.
    #[arg(long, requires = "order_id")]
    txn_time: Option<String>,
    /// UnionPay's `queryId` of the transaction.
    #[arg(long)]
    query_id: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl Target {
    fn target(&self) -> anyhow::Result<QueryTarget> {
        let t = match (&self.order_id, &self.txn_time, &self.query_id) {
            (Some(o), Some(t), None) => QueryTarget::Order {
                order_id: o.clone(),
                txn_time: t.clone(),
            },
            (None, None, Some(q)) => QueryTarget::QueryId {
                query_id: q.clone(),
            },
            _ => anyhow::bail!("give --order-id with --txn-time, or --query-id"),
        };
        t.check()?;
        Ok(t)
    }

    fn merchant(&self, config: &Config) -> anyhow::Result<String> {
        merchant_of(config, &self.source, self.merchant.as_deref())
    }
}

fn merchant_of(config: &Config, source: &str, given: Option<&str>) -> anyhow::Result<String> {
    let s = config.source(source)?;
    match given {
        Some(m) if s.merchants.iter().any(|x| x == m) => Ok(m.to_owned()),
        Some(m) => anyhow::bail!("merchant {m:?} is not configured for source {source:?}"),
        None => Ok(s.merchants[0].clone()),
    }
}

/// Asks UnionPay now; exit 0 with an answer, 1 when there was none (a
/// refused or forged answer, or a failure; the exchange is archived) or
/// when the ledger refused the answer it gave (the reason on stderr).
///
/// # Errors
/// Configuration or backend errors.
pub async fn query(args: Target) -> anyhow::Result<ExitCode> {
    let (config, backends) = args.config.open().await?;
    let target = args.target()?;
    let merchant = args.merchant(&config)?;
    let querier = Querier::build(&config, &backends).await?;
    match querier.query(&args.source, &merchant, &target).await {
        Ok(report) => {
            if args.json {
                crate::print_stdout(&serde_json::to_string_pretty(&report)?)?;
            } else {
                crate::print_stdout(&format!(
                    "{}  {}  answer {} {} {}\napplied: {}\narchived: {}\n          {}",
                    args.source,
                    target.describe(),
                    report.answer,
                    report.code.as_deref().unwrap_or(""),
                    report.message.as_deref().unwrap_or(""),
                    report
                        .applied
                        .as_deref()
                        .unwrap_or("nothing (no final answer yet)"),
                    report.request_key,
                    report.response_key,
                ))?;
            }
            if let Some(why) = &report.refused {
                eprintln!("paynotify: UnionPay answered, and the ledger refused it: {why}");
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("paynotify: no answer to act on: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Asks about an order the merchant started, on the source's schedule,
/// until UnionPay gives a final answer.
///
/// # Errors
/// Configuration or backend errors.
pub async fn watch(args: Target) -> anyhow::Result<ExitCode> {
    let (config, backends) = args.config.open().await?;
    let target = args.target()?;
    let merchant = args.merchant(&config)?;
    let querier = Querier::build(&config, &backends).await?;
    let gw = querier
        .gateways
        .get(&args.source)
        .ok_or_else(|| anyhow::anyhow!("source {:?} has no gateway table", args.source))?;
    let since = match &target {
        QueryTarget::Order { txn_time, .. } => PrimitiveDateTime::parse(
            txn_time,
            format_description!("[year][month][day][hour][minute][second]"),
        )?
        .assume_offset(time::macros::offset!(+8)),
        QueryTarget::QueryId { .. } => OffsetDateTime::now_utc(),
    };
    let created = query::watch(
        backends.watches.as_ref(),
        gw,
        &merchant,
        target.clone(),
        "expected",
        since,
    )
    .await?;
    crate::print_stdout(&format!(
        "{} {}: {}",
        args.source,
        target.describe(),
        if created {
            "watched"
        } else {
            "already watched"
        }
    ))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct Watches {
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Lists the unfinished watches, soonest due first.
///
/// # Errors
/// Configuration or backend errors.
pub async fn watches(args: Watches) -> anyhow::Result<ExitCode> {
    let (_, backends) = args.config.open().await?;
    let far = OffsetDateTime::now_utc() + time::Duration::days(365 * 100);
    let list = backends.watches.due_watches(far, WATCH_SCAN_LIMIT).await?;
    if args.json {
        crate::print_stdout(&serde_json::to_string_pretty(&list)?)?;
    } else {
        let lines: Vec<String> = list
            .iter()
            .map(|w| {
                format!(
                    "{}  {}  asked {}  due {}  last {}",
                    w.id,
                    w.reason,
                    w.attempts,
                    w.due_at.map(|t| t.to_string()).unwrap_or_default(),
                    w.last_answer.as_deref().unwrap_or("-")
                )
            })
            .collect();
        crate::print_stdout(&lines.join("\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct Settlement {
    #[command(flatten)]
    config: ConfigArg,
    /// The UnionPay source.
    #[arg(long)]
    source: String,
    /// The merchant (`merId`); the source's first by default.
    #[arg(long)]
    merchant: Option<String>,
    /// The settlement day, YYYY-MM-DD.
    #[arg(long, value_parser = parse_date)]
    date: Date,
    /// (reconcile) A file to read instead of the archived one: the ZIP
    /// UnionPay sends or a ZM file.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_date(s: &str) -> Result<Date, String> {
    Date::parse(s, format_description!("[year]-[month]-[day]")).map_err(|e| e.to_string())
}

/// Downloads and archives a day's settlement file.
///
/// # Errors
/// Configuration, backend, gateway or file errors.
pub async fn fetch(args: Settlement) -> anyhow::Result<ExitCode> {
    let (config, backends) = args.config.open().await?;
    let merchant = merchant_of(&config, &args.source, args.merchant.as_deref())?;
    let querier = Querier::build(&config, &backends).await?;
    let fetched = settlement::fetch(&querier, &args.source, &merchant, args.date).await?;
    if args.json {
        crate::print_stdout(&serde_json::to_string_pretty(&fetched)?)?;
    } else {
        crate::print_stdout(&format!(
            "{} ({} records) archived as {}",
            fetched.file_name, fetched.records, fetched.archive_key
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Reconciles a day's file with the ledger; exit 1 on any mismatch.
///
/// # Errors
/// Configuration, backend or file errors.
pub async fn reconcile(args: Settlement) -> anyhow::Result<ExitCode> {
    let (config, backends) = args.config.open().await?;
    let merchant = merchant_of(&config, &args.source, args.merchant.as_deref())?;
    let file = match &args.file {
        Some(path) => settlement::read_file(&std::fs::read(path)?)?,
        None => {
            settlement::archived_file(backends.archive.as_ref(), &args.source, args.date).await?
        }
    };
    let report = settlement::reconcile(
        backends.ledger.as_ref(),
        &args.source,
        &merchant,
        args.date,
        &file,
    )
    .await?;
    if args.json {
        crate::print_stdout(&serde_json::to_string_pretty(&report)?)?;
    } else {
        let mut out = format!(
            "{} {} {}: {} in the file, {} in the ledger, {} matched\n",
            report.source,
            report.merchant,
            report.date,
            report.file_records,
            report.ledger_events,
            report.matched
        );
        for m in &report.mismatches {
            out.push_str(&format!("{:<22} {}  {}\n", m.class, m.query_id, m.detail));
        }
        for c in &report.corrections {
            let r = &c.record;
            out.push_str(&format!(
                "{:<22} {}  ZME line {}: {} of {} fen (fee {}, settled {}), correcting trace {} at {}\n",
                "correction",
                c.query_id.as_deref().unwrap_or("?"),
                r.line,
                r.trade_code,
                r.amount_minor,
                r.merchant_fee,
                r.settle_amount,
                r.orig_trace_no,
                r.orig_trace_time
            ));
        }
        out.push_str(if report.is_clean() {
            "settlement: clean"
        } else {
            "settlement: mismatches or corrections found"
        });
        crate::print_stdout(&out)?;
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
