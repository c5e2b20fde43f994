//! The accept loop of a listener, built for clients that do not behave:
//! HTTP/1 with a header-read timeout that also bounds how long a keep-alive
//! connection may sit idle, a cap on open connections, and a shutdown that
//! closes idle connections at once, lets requests in flight finish, and
//! abandons whatever is left after a drain bound.
//!
//! What a client sees: a request head not complete within
//! `header_read_timeout_ms` (or no next request on a keep-alive connection
//! within it) gets its connection closed without an answer; a body not
//! complete within `read_timeout_ms` gets 408; a connection over
//! `max_connections` is closed as soon as it is accepted; a request head
//! over [`READ_BUFFER_BYTES`] gets 431. A PSP retries in every case.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::Service;
use tracing::warn;

/// The most a connection buffers of what it reads (hyper's default is
/// about 400 KiB): a request head must fit (431 otherwise; a PSP's is a few
/// hundred bytes), and a body is read in pieces of at most this size. With
/// thousands of connections open, the buffers are most of what they cost.
pub const READ_BUFFER_BYTES: usize = 16 << 10;

/// How a listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub drain: Duration,
}

/// Serves `router` on `listener` until `shutdown`, then drains (see the
/// module documentation). Every request carries `ConnectInfo<SocketAddr>`.
///
/// # Errors
/// None today: accept errors (out of file descriptors) are logged and
/// retried after a pause.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (closing, close) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: pause instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Over the cap: closed at once rather than queued behind clients
            // that hold their connections.
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(remote));
            let mut router = router.clone();
            async move { router.call(request).await }
        });
        let mut close = close.clone();
        connections.spawn(async move {
            let _slot = slot;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .max_buf_size(READ_BUFFER_BYTES)
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = close.changed() => {
                    // Idle connections close now; a request in flight is
                    // answered first.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    let _ = closing.send(true);
    let drained = tokio::time::timeout(limits.drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            open = connections.len(),
            "drain bound reached; closing the connections still open"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    Ok(())
}
