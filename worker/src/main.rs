//! `paynotify-worker`: the workers alone, for running them apart from ingest
//! on the same backend.

use std::sync::Arc;

use paynotify_shared::backend;
use paynotify_shared::config::Config;
use paynotify_shared::scheme::{uses_secrets_manager, SourceVerifier, VerifierSet};
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
    let verifiers = Arc::new(VerifierSet::new(
        SourceVerifier::all(&config, backends.secrets.as_ref()).await?,
    ));
    let shutdown = CancellationToken::new();
    if uses_secrets_manager(&config) {
        tokio::spawn(paynotify_worker::refresh_verifiers(
            verifiers.clone(),
            config.clone(),
            backends.secrets.clone(),
            std::time::Duration::from_secs(config.backend.aws.secrets_refresh_secs.max(1)),
            shutdown.clone(),
        ));
    }
    let ctx = WorkerContext {
        queue: backends.queue,
        ledger: backends.ledger,
        archive: backends.archive,
        verifiers,
        config: config.worker.clone(),
        max_receives: config.backend.max_receives,
        stats: Arc::new(Stats::default()),
        hooks: Hooks::default(),
    };
    let token = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
    });
    tracing::info!(concurrency = config.worker.concurrency, "worker running");
    paynotify_worker::run(ctx, shutdown).await;
    Ok(())
}
