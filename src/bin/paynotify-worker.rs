//! `paynotify-worker`: the workers alone, for running them apart from ingest
//! on the same backend, with their own admin listener (`worker.admin_listen`:
//! `/healthz`, `/readyz`, `/metrics`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use paynotify_shared::admin::{self, Admin};
use paynotify_shared::config::Config;
use paynotify_shared::metered;
use paynotify_shared::serve::{serve, Limits};
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
    let token = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
    });
    tracing::info!(concurrency = config.worker.concurrency,
                   admin = %admin_listener.local_addr()?, "worker running");
    let admin = tokio::spawn(serve(
        admin_listener,
        admin::router(Admin {
            metrics: metrics.clone(),
            backends: backends.clone(),
            parked_alert_secs: config.worker.parked_alert_secs,
            sample_ledger: true,
        }),
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 64,
            drain: Duration::from_secs(1),
        },
        shutdown.clone(),
    ));
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
