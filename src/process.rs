//! What the stack's separate processes (`paynotify-ingest`,
//! `paynotify-worker`, `paynotify-api`) do the same way: their one
//! argument, their admin listener, and stopping on a signal.

use std::time::Duration;

use paynotify_shared::admin::{self, Admin};
use paynotify_shared::serve::{serve, Limits};
use paynotify_shared::telemetry::shutdown_signal;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The configuration file of `binary`: `--config FILE` is its only
/// argument.
///
/// # Errors
/// Any other arguments, with the usage.
pub fn config_path(binary: &str) -> anyhow::Result<std::path::PathBuf> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (Some("--config"), Some(path)) => Ok(path.into()),
        _ => anyhow::bail!("usage: {binary} --config FILE"),
    }
}

/// Cancels `token` on Ctrl-C or SIGTERM.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
    });
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until
/// `shutdown`, with the accept loop's bounds (a 10 s header read, 64
/// connections, a 1 s drain).
pub fn serve_admin(
    listener: TcpListener,
    admin: Admin,
    shutdown: &CancellationToken,
) -> JoinHandle<std::io::Result<()>> {
    tokio::spawn(serve(
        listener,
        admin::router(admin),
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 64,
            drain: Duration::from_secs(1),
        },
        shutdown.clone(),
    ))
}
