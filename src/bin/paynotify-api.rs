//! `paynotify-api`: the read API and the operator's console alone
//! (`api.listen`; docs/api.md, docs/console.md), on the same backend as
//! ingest and the workers, with its own admin listener (`api.admin_listen`:
//! `/healthz`, `/readyz`, `/metrics`). The containers stack runs it behind
//! the load balancer's OIDC sign-in (`api.oidc`).

use std::time::Duration;

use anyhow::Context;
use paynotify_shared::admin::{self, Admin};
use paynotify_shared::config::Config;
use paynotify_shared::metered;
use paynotify_shared::serve::{serve, Limits};
use paynotify_shared::telemetry::{init_logging, shutdown_signal};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging("info");
    let mut args = std::env::args().skip(1);
    let path = match (args.next().as_deref(), args.next()) {
        (Some("--config"), Some(path)) => std::path::PathBuf::from(path),
        _ => anyhow::bail!("usage: paynotify-api --config FILE"),
    };
    let config = Config::load(&path)?;
    if config.api.listen.is_none() {
        anyhow::bail!("api.listen is not set: paynotify-api has nothing to serve");
    }
    let (backends, metrics) = metered::build(&config.backend).await?;
    let admin_listener = tokio::net::TcpListener::bind(&config.api.admin_listen)
        .await
        .with_context(|| format!("binding {}", config.api.admin_listen))?;
    let shutdown = CancellationToken::new();
    let api = paynotify::api::start(&config, &backends, &shutdown)
        .await?
        .context("api.listen is set, yet the API did not start")?;
    let token = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
    });
    tracing::info!(api = %api.addr, admin = %admin_listener.local_addr()?, "read API running");
    let admin = tokio::spawn(serve(
        admin_listener,
        admin::router(Admin {
            metrics,
            backends: backends.clone(),
            parked_alert_secs: config.worker.parked_alert_secs,
            // The ledger's parked events are the workers' metrics.
            sample_ledger: false,
        }),
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 64,
            drain: Duration::from_secs(1),
        },
        shutdown.clone(),
    ));
    let watch = paynotify_shared::stores::watch(&backends, shutdown.clone());
    api.task.await??;
    admin.await??;
    if let Some(why) = watch.await? {
        anyhow::bail!("stopped: {why}");
    }
    Ok(())
}
