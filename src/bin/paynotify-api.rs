//! `paynotify-api`: the read API and the operator's console alone
//! (`api.listen`; docs/api.md, docs/console.md), on the same backend as
//! ingest and the workers, with its own admin listener (`api.admin_listen`:
//! `/healthz`, `/readyz`, `/metrics`). The containers stack runs it behind
//! the load balancer's OIDC sign-in (`api.oidc`).

use anyhow::Context;
use paynotify::process;
use paynotify_shared::admin::Admin;
use paynotify_shared::config::Config;
use paynotify_shared::metered;
use paynotify_shared::telemetry::init_logging;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging("info");
    let config = Config::load(&process::config_path("paynotify-api")?)?;
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
    process::cancel_on_signal(shutdown.clone());
    tracing::info!(api = %api.addr, admin = %admin_listener.local_addr()?, "read API running");
    let admin = process::serve_admin(
        admin_listener,
        Admin {
            metrics,
            backends: backends.clone(),
            parked_alert_secs: config.worker.parked_alert_secs,
            // The ledger's parked events are the workers' metrics.
            sample_ledger: false,
        },
        &shutdown,
    );
    let watch = paynotify_shared::stores::watch(&backends, shutdown.clone());
    api.task.await??;
    admin.await??;
    if let Some(why) = watch.await? {
        anyhow::bail!("stopped: {why}");
    }
    Ok(())
}
