//! `paynotify dlq list|show|redrive|purge`: the dead-letter queue, for an
//! operator. Nothing here loses a notification: every dead letter's exact
//! bytes stay in the archive, whatever is purged.

use std::process::ExitCode;

use paynotify::views::dead_letters::{
    by_reason, read, redrive_one, redriven, show_value, summary, MAX_SCAN,
};
use paynotify_shared::backend::Backends;
use serde_json::{json, Value};

use crate::ops_cmd::ConfigArg;

#[derive(Debug, clap::Args)]
pub struct List {
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
pub async fn list(args: List) -> anyhow::Result<ExitCode> {
    let (_, backends) = args.config.open().await?;
    let entries: Vec<Value> = read(&backends, args.limit)
        .await?
        .iter()
        .map(summary)
        .collect();
    if args.json {
        crate::print_stdout(&serde_json::to_string_pretty(&entries)?)?;
    } else {
        let mut out = format!("{} dead letters\n", entries.len());
        for e in &entries {
            out.push_str(&format!(
                "{}  {:<22} receives={}  {}\n",
                e["id"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or(""),
                e["receive_count"],
                e["archive_key"].as_str().unwrap_or("-")
            ));
        }
        crate::print_stdout(out.trim_end())?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub struct Show {
    #[command(flatten)]
    config: ConfigArg,
    /// The dead letter's id, or its notification id.
    id: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Shows one dead letter: why it died, the request it carries, and, when
/// its notification does not verify, the step that fails and every step of
/// verifying it (`verify --explain`). Card numbers are masked. Exit 1 when
/// there is no such dead letter.
///
/// # Errors
/// Configuration or backend errors.
pub async fn show(args: Show) -> anyhow::Result<ExitCode> {
    let (config, backends) = args.config.open().await?;
    let Some(out) = show_value(&config, &backends, &args.id).await? else {
        eprintln!("paynotify: no dead letter {}", args.id);
        return Ok(ExitCode::from(1));
    };
    if args.json {
        crate::print_stdout(&serde_json::to_string_pretty(&out)?)?;
    } else {
        crate::print_stdout(&render(&out))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The text form of `dlq show`.
fn render(v: &Value) -> String {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let mut out = format!(
        "dead letter   {}\nnotification  {}\nreason        {}\nerror         {}\n\
         receives      {}\ndead since    {}\narchive key   {}\n",
        s(&v["id"]),
        s(&v["notification_id"]),
        s(&v["reason"]),
        s(&v["error"]),
        s(&v["receive_count"]),
        s(&v["dead_at"]),
        s(&v["archive_key"]),
    );
    let e = &v["envelope"];
    if !e.is_null() {
        out.push_str(&format!(
            "received      {} from {} on {} {} ({} bytes, {})\n",
            s(&e["received_at"]),
            s(&e["remote_addr"]),
            s(&e["method"]),
            s(&e["path"]),
            s(&e["body_bytes"]),
            s(&e["content_type"]),
        ));
    }
    let check = &v["verification"];
    match check["valid"].as_bool() {
        Some(true) => out.push_str("verifies now  yes: retry it with `dlq redrive`\n"),
        Some(false) => {
            out.push_str(&format!(
                "verifies now  no: {} at step {}: {}\n",
                s(&check["error"]),
                s(&check["step"]),
                s(&check["message"])
            ));
            if let Ok(explain) = serde_json::to_string_pretty(&check["explain"]) {
                out.push_str("explain       ");
                out.push_str(&explain.replace('\n', "\n              "));
                out.push('\n');
            }
        }
        None => {}
    }
    out.trim_end().to_owned()
}

#[derive(Debug, clap::Args)]
pub struct Redrive {
    #[command(flatten)]
    config: ConfigArg,
    /// Only dead letters with this reason (e.g. `retries_exhausted`).
    #[arg(long, conflicts_with = "id")]
    reason: Option<String>,
    /// Only this dead letter (its id, or its notification's, as `dlq list`
    /// gives them).
    #[arg(long)]
    id: Option<String>,
    /// Say what would move, by reason, and move nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Prints how many dead letters `reason` selects (all when `None`), by
/// reason, under `key`; changes nothing. Returns the total.
async fn dry_run(backends: &Backends, reason: Option<&str>, key: &str) -> anyhow::Result<u64> {
    let counts = by_reason(&read(backends, MAX_SCAN).await?, reason);
    let total: u64 = counts.values().sum();
    crate::print_stdout(&json!({ "dry_run": true, key: total, "by_reason": counts }).to_string())?;
    Ok(total)
}

/// Moves dead letters back to the queue (or, with `--dry-run`, counts
/// them); prints how many and how many are still dead-lettered.
///
/// # Errors
/// Configuration or backend errors.
pub async fn redrive(args: Redrive) -> anyhow::Result<ExitCode> {
    let (_, backends) = args.config.open().await?;
    if let Some(id) = &args.id {
        let Some(done) = redrive_one(&backends, id, args.dry_run).await? else {
            crate::print_stdout(&format!("no dead letter {id:?}"))?;
            return Ok(ExitCode::from(1));
        };
        crate::print_stdout(&done.to_string())?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.dry_run {
        dry_run(&backends, args.reason.as_deref(), "would_redrive").await?;
        return Ok(ExitCode::SUCCESS);
    }
    let bar = crate::progress::bar(Some(backends.dead_letters.dlq_depth().await?), "redriving");
    let progress = crate::progress::position(&bar);
    let moved = backends
        .dead_letters
        .redrive_with(args.reason.as_deref(), &progress)
        .await?;
    bar.finish_and_clear();
    // What the scan could not reach (in flight elsewhere on SQS), or
    // dead letters of other reasons, are still there: say so.
    crate::print_stdout(&redriven(&backends, moved as u64).await?.to_string())?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["reason", "all"])))]
pub struct Purge {
    #[command(flatten)]
    config: ConfigArg,
    /// Delete the dead letters with this reason.
    #[arg(long)]
    reason: Option<String>,
    /// Delete every dead letter.
    #[arg(long)]
    all: bool,
    /// Really delete; without it, say what would be deleted.
    #[arg(long)]
    yes: bool,
}

/// Deletes dead letters (of one reason, or all) from the dead-letter queue,
/// recording each under `audit/dlq-purged/` in the archive; their
/// notifications stay in the archive and `replay` can bring them back.
/// Without `--yes`, prints what it would delete and exits 1.
///
/// # Errors
/// Configuration or backend errors.
pub async fn purge(args: Purge) -> anyhow::Result<ExitCode> {
    let (_, backends) = args.config.open().await?;
    let reason = if args.all {
        None
    } else {
        args.reason.as_deref()
    };
    if !args.yes {
        let total = dry_run(&backends, reason, "would_purge").await?;
        eprintln!("paynotify: nothing purged; pass --yes to delete {total} dead letters");
        return Ok(ExitCode::from(1));
    }
    let bar = crate::progress::bar(Some(backends.dead_letters.dlq_depth().await?), "purging");
    let progress = crate::progress::position(&bar);
    let purged = paynotify::purge::purge(&backends, reason, &progress).await?;
    bar.finish_and_clear();
    let left = backends.dead_letters.dlq_depth().await?;
    crate::print_stdout(
        &json!({
            "purged": purged.len(),
            "by_reason": by_reason(&purged, None),
            "still_in_dlq": left,
            "recorded_under": paynotify::purge::PREFIX,
        })
        .to_string(),
    )?;
    Ok(ExitCode::SUCCESS)
}
