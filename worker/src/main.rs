//! `paynotify-worker`: the workers alone, for running them apart from ingest
//! on the same backend.

use std::sync::Arc;

use paynotify_shared::backend;
use paynotify_shared::config::Config;
use paynotify_shared::telemetry::{init_logging, shutdown_signal};
use paynotify_worker::{Hooks, Stats, WorkerContext};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging("info");
    let mut args = std::env::args().skip(1);
    let path = match (args.next().as_deref(), args.next()) {
        (Some("--config"), Some(path)) => std::path::PathBuf::from(path),
        _ => anyhow::bail!("usage: paynotify-worker --config FILE"),
    };
    let config = Config::load(&path)?;
    let backends = backend::build(&config.backend).await?;
    let shutdown = CancellationToken::new();
    let ctx = WorkerContext::start(
        &config,
        &backends,
        Arc::new(Stats::default()),
        Hooks::default(),
        &shutdown,
    )
    .await?;
    let token = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
    });
    tracing::info!(concurrency = config.worker.concurrency, "worker running");
    let watch = backends.watch(shutdown.clone());
    paynotify_worker::run(ctx, shutdown).await;
    if let Some(why) = watch.await? {
        anyhow::bail!("stopped: {why}");
    }
    Ok(())
}
