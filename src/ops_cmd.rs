//! `paynotify serve`, `txn get` and `dlq list`: running the pipeline and
//! looking into its ledger and dead-letter queue.

use std::path::PathBuf;
use std::process::ExitCode;

use paynotify::app::{init_logging, shutdown_signal, App, AppOptions};
use paynotify_shared::backend;
use paynotify_shared::config::Config;
use paynotify_shared::envelope::Envelope;
use paynotify_shared::PaymentKey;
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Configuration file (TOML).
    #[arg(long)]
    pub config: PathBuf,
}

/// Runs ingest and workers until Ctrl-C or SIGTERM, then drains and exits 0.
///
/// # Errors
/// Configuration, backend or listener errors.
pub async fn serve(args: ConfigArg) -> anyhow::Result<ExitCode> {
    init_logging("info");
    let config = Config::load(&args.config)?;
    let app = App::start(&config, AppOptions::all()).await?;
    let show = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(ingest = %show(app.addr), admin = %show(app.admin_addr),
                   data_dir = %config.backend.data_dir.display(), "serving");
    let token = app.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: no new requests, finishing in-flight work");
        token.cancel();
    });
    app.wait().await?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct TxnGet {
    #[command(flatten)]
    config: ConfigArg,
    source: String,
    merchant: String,
    /// The PSP's id of the original payment (UnionPay `queryId`).
    payment_ref: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Prints a payment's state and history; exit 1 when it is not in the ledger.
///
/// # Errors
/// Configuration or backend errors.
pub async fn txn_get(args: TxnGet) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    let backends = backend::build(&config.backend).await?;
    let mut key = PaymentKey::new(&args.source, &args.merchant, &args.payment_ref);
    let mut entry = backends.ledger.load(&key).await?;
    // A completion's own id leads to its payment.
    let alias = entry.alias_of.clone();
    if let Some(target) = &alias {
        key = target.clone();
        entry = backends.ledger.load(&key).await?;
    }
    let state = entry.state;
    let history = backends.ledger.history(&key).await?;
    let found = state.is_some() || !history.is_empty() || !entry.parked.is_empty();
    if args.json {
        crate::print_stdout(&serde_json::to_string_pretty(&json!({
            "payment_key": key, "state": state, "history": history, "parked": entry.parked,
        }))?)?;
    } else {
        let mut out = format!("payment {key}\n");
        if alias.is_some() {
            out.push_str(&format!(
                "  ({} is a completion of this payment)\n",
                args.payment_ref
            ));
        }
        match &state {
            Some(s) => out.push_str(&format!(
                "  status {}  paid {} {}  refunded {}  version {}\n",
                s.status.as_str(),
                s.paid_minor,
                s.currency,
                s.refunded_minor,
                s.version
            )),
            None => out.push_str("  no state in the ledger\n"),
        }
        for e in &history {
            out.push_str(&format!(
                "  {}  {} {}  {} {}  -> {}  ({})\n",
                e.recorded_at,
                e.kind,
                e.outcome,
                e.amount_minor,
                e.currency,
                e.status_after.as_deref().unwrap_or("unchanged"),
                e.event_key
            ));
        }
        for p in &entry.parked {
            out.push_str(&format!(
                "  parked since {}  {} {}  {} {}  ({}){}\n",
                p.parked_at,
                p.event.kind.as_str(),
                p.event.outcome.as_str(),
                p.event.amount.minor,
                p.event.amount.currency,
                p.event.event_key,
                p.conflict
                    .as_deref()
                    .map(|c| format!("  conflict: {c}"))
                    .unwrap_or_default()
            ));
        }
        crate::print_stdout(out.trim_end())?;
    }
    Ok(if found {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[derive(Debug, clap::Args)]
pub struct DlqList {
    #[command(flatten)]
    config: ConfigArg,
    /// At most this many entries.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Lists dead letters: id, reason, receive count and archive key.
///
/// # Errors
/// Configuration or backend errors.
pub async fn dlq_list(args: DlqList) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    let backends = backend::build(&config.backend).await?;
    let depth = backends.queue.dlq_depth().await?;
    let listed = backends.queue.dlq_list(args.limit).await?;
    if (listed.len() as u64) < depth && listed.len() < args.limit {
        eprintln!(
            "paynotify: listed {} of about {depth} dead letters; the others are in flight \
             (another listing or redrive): run again",
            listed.len()
        );
    }
    let entries: Vec<_> = listed
        .into_iter()
        .map(|d| {
            let archive_key = Envelope::from_json(&d.body).ok().map(|e| e.archive_key());
            json!({
                "id": d.id, "reason": d.reason, "error": d.error, "receive_count": d.receive_count,
                "dead_at": paynotify_shared::envelope::rfc3339_ms::format(d.dead_at),
                "archive_key": archive_key,
            })
        })
        .collect();
    if args.json {
        crate::print_stdout(&serde_json::to_string_pretty(&entries)?)?;
    } else {
        let lines: Vec<String> = entries
            .iter()
            .map(|e| {
                format!(
                    "{}  {:<22} receives={}  {}",
                    e["id"].as_str().unwrap_or(""),
                    e["reason"].as_str().unwrap_or(""),
                    e["receive_count"],
                    e["archive_key"].as_str().unwrap_or("-")
                )
            })
            .collect();
        crate::print_stdout(&format!(
            "{} dead letters\n{}",
            entries.len(),
            lines.join("\n")
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct DlqRedrive {
    #[command(flatten)]
    config: ConfigArg,
    /// Only dead letters with this reason (e.g. `retries_exhausted`).
    #[arg(long)]
    reason: Option<String>,
}

/// Moves dead letters back to the queue; prints how many.
///
/// # Errors
/// Configuration or backend errors.
pub async fn dlq_redrive(args: DlqRedrive) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    let backends = backend::build(&config.backend).await?;
    let moved = backends.queue.redrive(args.reason.as_deref()).await?;
    // What the scan could not reach (in flight elsewhere on SQS), or
    // dead letters of other reasons, are still there: say so.
    let left = backends.queue.dlq_depth().await?;
    crate::print_stdout(&json!({ "redriven": moved, "still_in_dlq": left }).to_string())?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct ArchiveLs {
    #[command(flatten)]
    config: ConfigArg,
    /// Key prefix, e.g. `raw/source=unionpay/date=2026-11-25/`.
    #[arg(long, default_value = "raw/")]
    prefix: String,
    /// Only hours from this time (RFC 3339).
    #[arg(long, value_parser = crate::verify_cmd::parse_time)]
    from: Option<time::OffsetDateTime>,
    /// Only hours up to this time (RFC 3339).
    #[arg(long, value_parser = crate::verify_cmd::parse_time)]
    to: Option<time::OffsetDateTime>,
}

/// Lists archive keys, one per line.
///
/// # Errors
/// Configuration or backend errors.
pub async fn archive_ls(args: ArchiveLs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    let backends = backend::build(&config.backend).await?;
    let keys = backends
        .archive
        .list(&args.prefix, args.from, args.to)
        .await?;
    crate::print_stdout(&keys.join("\n"))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct ArchiveCat {
    #[command(flatten)]
    config: ConfigArg,
    /// The archive key.
    key: String,
}

/// Prints one archived envelope.
///
/// # Errors
/// Configuration or backend errors, or a missing key.
pub async fn archive_cat(args: ArchiveCat) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    let backends = backend::build(&config.backend).await?;
    let bytes = backends.archive.get(&args.key).await?;
    crate::print_stdout(&String::from_utf8_lossy(&bytes))?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct Replay {
    #[command(flatten)]
    config: ConfigArg,
    /// Start of the range (RFC 3339); whole hours are replayed.
    #[arg(long, value_parser = crate::verify_cmd::parse_time)]
    from: time::OffsetDateTime,
    /// End of the range (RFC 3339).
    #[arg(long, value_parser = crate::verify_cmd::parse_time)]
    to: time::OffsetDateTime,
    /// Only this source.
    #[arg(long)]
    source: Option<String>,
}

/// Re-enqueues archived notifications in a time range. Safe at any time:
/// applying is idempotent, so what was applied before becomes a duplicate.
///
/// # Errors
/// Configuration or backend errors.
pub async fn replay(args: Replay) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config)?;
    let backends = backend::build(&config.backend).await?;
    let prefix = match &args.source {
        Some(s) => format!("raw/source={s}/"),
        None => "raw/".to_owned(),
    };
    let keys = backends
        .archive
        .list(&prefix, Some(args.from), Some(args.to))
        .await?;
    let sent = paynotify::replay::replay(&backends, &keys, |_| {}).await?;
    crate::print_stdout(&json!({ "replayed": sent }).to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// Creates the AWS resources `[backend.aws]` names, when missing.
///
/// # Errors
/// Configuration errors or a failed AWS call.
pub async fn aws_init(args: ConfigArg) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let report = paynotify_shared::backend::aws::setup::init(&config.backend)
        .await
        .map_err(anyhow::Error::msg)?;
    crate::print_stdout(&serde_json::to_string_pretty(&report)?)?;
    Ok(ExitCode::SUCCESS)
}
