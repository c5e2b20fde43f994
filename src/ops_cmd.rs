//! `paynotify serve`, `replay`, `archive ls|cat` and `aws init`: running the
//! pipeline, sending archived notifications again, reading the archive.

use std::path::PathBuf;
use std::process::ExitCode;

use paynotify::app::{init_logging, shutdown_signal, App, AppOptions};
use paynotify_shared::backend;
use paynotify_shared::config::Config;
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Configuration file (TOML); without it, the file PAYNOTIFY_CONFIG
    /// names, else ./paynotify.toml.
    #[arg(long, env = CONFIG_ENV, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
}

/// The variable naming the configuration file when `--config` is not given.
pub const CONFIG_ENV: &str = "PAYNOTIFY_CONFIG";
/// The configuration file looked for in the working directory last.
pub const DEFAULT_CONFIG: &str = "paynotify.toml";

/// Loads the configuration at `path`, saying where a missing one was
/// looked for.
///
/// # Errors
/// No file there, or configuration errors.
pub fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    if !path.is_file() {
        anyhow::bail!(
            "no configuration file at {}: give --config FILE, or set {CONFIG_ENV}, \
             or run where {DEFAULT_CONFIG} is",
            path.display()
        );
    }
    Ok(Config::load(path)?)
}

impl ConfigArg {
    /// Loads the configuration.
    ///
    /// # Errors
    /// As [`load_config`].
    pub fn load(&self) -> anyhow::Result<Config> {
        load_config(&self.config)
    }

    /// Loads the configuration and opens its backends.
    ///
    /// # Errors
    /// Configuration or backend errors.
    pub async fn open(&self) -> anyhow::Result<(Config, paynotify_shared::backend::Backends)> {
        let config = self.load()?;
        let backends = backend::build(&config.backend).await?;
        Ok((config, backends))
    }
}

/// Runs ingest and workers until Ctrl-C or SIGTERM, then drains and exits 0.
///
/// # Errors
/// Configuration, backend or listener errors.
pub async fn serve(args: ConfigArg) -> anyhow::Result<ExitCode> {
    init_logging("info");
    let config = args.load()?;
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
    let (_, backends) = args.config.open().await?;
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
    /// An archive key (a segment prints one envelope per line), or one
    /// notification's location in a segment, `KEY#OFFSET+LENGTH` (as
    /// `dlq show` and the logs' `archive_key` give it).
    location: String,
}

/// Prints an archived object, or one envelope of a segment.
///
/// # Errors
/// Configuration or backend errors, or a missing key.
pub async fn archive_cat(args: ArchiveCat) -> anyhow::Result<ExitCode> {
    let Some(location) = paynotify_shared::segment::Location::parse(&args.location) else {
        anyhow::bail!(
            "{:?} is not an archive key or KEY#OFFSET+LENGTH",
            args.location
        );
    };
    let (_, backends) = args.config.open().await?;
    let bytes = paynotify_shared::segment::read(backends.archive.as_ref(), &location).await?;
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
    let (_, backends) = args.config.open().await?;
    let prefix = match &args.source {
        Some(s) => format!("raw/source={s}/"),
        None => "raw/".to_owned(),
    };
    let keys = backends
        .archive
        .list(&prefix, Some(args.from), Some(args.to))
        .await?;
    let bar = crate::progress::bar(Some(keys.len() as u64), "replaying");
    let done = paynotify::replay::replay(&backends, &keys, crate::progress::position(&bar)).await?;
    bar.finish_and_clear();
    crate::print_stdout(&json!({ "replayed": done.sent, "torn_segments": done.torn }).to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// Creates the AWS resources `[backend.aws]` names, when missing.
///
/// # Errors
/// Configuration errors or a failed AWS call.
pub async fn aws_init(args: ConfigArg) -> anyhow::Result<ExitCode> {
    let config = args.load()?;
    let report = paynotify_shared::backend::aws::setup::init(&config.backend)
        .await
        .map_err(anyhow::Error::msg)?;
    crate::print_stdout(&serde_json::to_string_pretty(&report)?)?;
    Ok(ExitCode::SUCCESS)
}
