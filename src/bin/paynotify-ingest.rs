//! `paynotify-ingest`: the ingest alone, for running it apart from the workers
//! on the same backend.

use anyhow::Context;
use paynotify::process;
use paynotify_ingest::IngestState;
use paynotify_shared::config::Config;
use paynotify_shared::metered;
use paynotify_shared::telemetry::init_logging;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging("info");
    let config = Config::load(&process::config_path("paynotify-ingest")?)?;
    if let Some(api) = config.api.listen {
        tracing::warn!(%api, "api.listen is set, but the read API runs in `paynotify serve` and `paynotify-api`: paynotify-ingest does not start it");
    }
    let (backends, metrics) = metered::build(&config.backend).await?;
    let listener = tokio::net::TcpListener::bind(&config.ingest.listen)
        .await
        .with_context(|| format!("binding {}", config.ingest.listen))?;
    let admin = tokio::net::TcpListener::bind(&config.ingest.admin_listen)
        .await
        .with_context(|| format!("binding {}", config.ingest.admin_listen))?;
    let state = IngestState::new(&config, &backends, metrics, false);
    let shutdown = CancellationToken::new();
    process::cancel_on_signal(shutdown.clone());
    tracing::info!(listen = %listener.local_addr()?, admin = %admin.local_addr()?, "ingest serving");
    let watch = paynotify_shared::stores::watch(&backends, shutdown.clone());
    paynotify_ingest::run(listener, admin, state, &config.ingest, shutdown).await?;
    if let Some(why) = watch.await? {
        anyhow::bail!("stopped: {why}");
    }
    Ok(())
}
