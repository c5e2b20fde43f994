//! `paynotify-worker`: the workers alone, for running them apart from ingest
//! on the same backend, with their own admin listener (`worker.admin_listen`:
//! `/healthz`, `/readyz`, `/metrics`).

use std::sync::Arc;

use anyhow::Context;
use paynotify::process;
use paynotify_shared::admin::Admin;
use paynotify_shared::config::Config;
use paynotify_shared::metered;
use paynotify_shared::telemetry::init_logging;
use paynotify_worker::{Hooks, Stats, WorkerContext};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging("info");
    let config = Config::load(&process::config_path("paynotify-worker")?)?;
    if let Some(api) = config.api.listen {
        tracing::warn!(%api, "api.listen is set, but the read API runs in `paynotify serve` and `paynotify-api`: paynotify-worker does not start it");
    }
    let (backends, metrics) = metered::build(&config.backend).await?;
    let admin_listener = tokio::net::TcpListener::bind(&config.worker.admin_listen)
        .await
        .with_context(|| format!("binding {}", config.worker.admin_listen))?;
    let shutdown = CancellationToken::new();
    let ctx = WorkerContext::start(
        &config,
        &backends,
        Arc::new(Stats::default()),
        metrics.clone(),
        Hooks::default(),
        &shutdown,
    )
    .await?;
    process::cancel_on_signal(shutdown.clone());
    tracing::info!(concurrency = config.worker.concurrency,
                   admin = %admin_listener.local_addr()?, "worker running");
    let admin = process::serve_admin(
        admin_listener,
        Admin {
            metrics: metrics.clone(),
            backends: backends.clone(),
            parked_alert_secs: config.worker.parked_alert_secs,
            sample_ledger: true,
        },
        &shutdown,
    );
    let watch = paynotify_shared::stores::watch(&backends, shutdown.clone());
    let deliverer = paynotify_deliver::start(&config, &backends, &metrics, &shutdown).await?;
    paynotify_worker::run(ctx, shutdown).await;
    if let Some(d) = deliverer {
        d.await?;
    }
    admin.await??;
    if let Some(why) = watch.await? {
        anyhow::bail!("stopped: {why}");
    }
    Ok(())
}
